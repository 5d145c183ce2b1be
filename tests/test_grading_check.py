"""Tests for ``check()``: results, hints, stubs, time limits, grading mode and the case API."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from lab_support.grading import (
    GRADING_ENV,
    Case,
    CheckFailed,
    CheckNotAttempted,
    CheckTimedOut,
    case,
    cases_for,
    check,
    close_to,
    register,
)
from lab_support.grading.registry import unregister

EXERCISE = "test_ttft"


def ttft(request_start, token_times):
    if not token_times:
        raise ValueError("no tokens")
    return token_times[0] - request_start


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.delenv(GRADING_ENV, raising=False)
    register(
        EXERCISE,
        Case(
            "first token after 0.25 s",
            args=(10.0, [10.25, 10.5]),
            expected=0.25,
            compare=close_to(),
            timeout_s=0.5,
            hint="subtract the request start",
        ),
        Case("no tokens raises ValueError", args=(10.0, []), raises=ValueError, timeout_s=0.5),
    )
    yield
    for exercise_id in (EXERCISE, "test_value", "test_server", "test_decorated", "test_blocking"):
        unregister(exercise_id)


def statuses(result):
    return [c.status for c in result.cases]


def test_correct_answer_passes(capsys):
    result = check(EXERCISE, ttft)

    assert result.passed == 2
    assert result.total == 2
    assert result.ok
    assert statuses(result) == ["passed", "passed"]
    out = capsys.readouterr().out
    assert "test_ttft: 2 of 2 cases passed" in out
    assert repr(result) == "CheckResult(exercise='test_ttft', passed=2, total=2)"


def test_wrong_value_fails_with_hint(capsys):
    result = check(EXERCISE, lambda start, times: times[-1] - start)

    first = result.cases[0]
    assert result.passed == 0
    assert first.status == "failed"
    assert "expected 0.25, got 0.5" in first.message
    assert "Hint: subtract the request start" in first.message
    assert "[FAILED] first token after 0.25 s: expected 0.25, got 0.5" in capsys.readouterr().out


def test_missing_exception_fails():
    result = check(EXERCISE, lambda start, times: 0.0 if not times else times[0] - start)

    second = result.cases[1]
    assert second.status == "failed"
    assert second.message == "expected ValueError to be raised, but it returned 0.0"


def test_unexpected_exception_reported():
    def broken(start, times):
        return {}["missing"]

    result = check(EXERCISE, broken)

    assert result.cases[0].status == "error"
    assert "raised KeyError: 'missing', but expected 0.25" in result.cases[0].message
    assert result.cases[1].status == "error"
    assert "but expected ValueError" in result.cases[1].message


def test_stub_reported_not_attempted(capsys):
    def stub(start, times):
        raise NotImplementedError("Replace this line with your answer to exercise 'ttft'.")

    result = check(EXERCISE, stub)

    assert statuses(result) == ["not attempted", "not attempted"]
    assert result.passed == 0
    assert "[NOT ATTEMPTED]" in capsys.readouterr().out


def test_uncomparable_value_fails():
    class Ambiguous:
        def __eq__(self, other):
            return self

        def __bool__(self):
            raise ValueError("truth value is ambiguous")

    register("test_value", Case("compares", call=False, expected=1))

    result = check("test_value", Ambiguous())

    assert result.cases[0].status == "failed"
    assert "and comparing them raised ValueError: truth value is ambiguous" in result.cases[0].message


def test_system_exit_does_not_propagate():
    def exits(start, times):
        raise SystemExit(3)

    result = check(EXERCISE, exits)

    assert statuses(result) == ["error", "error"]
    assert "SystemExit: 3" in result.cases[0].message


def test_non_callable_answer_explained():
    result = check(EXERCISE, 0.25)

    assert result.cases[0].status == "failed"
    assert "the answer is not callable, got float 0.25" in result.cases[0].message
    assert "without parentheses" in result.cases[0].message


def test_infinite_loop_times_out_and_stops():
    def loops(start, times):
        while True:
            pass

    began = time.monotonic()
    result = check(EXERCISE, loops)
    elapsed = time.monotonic() - began

    assert statuses(result) == ["timed out", "timed out"]
    assert result.cases[0].message == "timed out after 0.5 s and was stopped"
    assert elapsed < 5
    assert not [t for t in threading.enumerate() if t.name.startswith(f"check {EXERCISE}")]


def test_loop_swallowing_exceptions_still_stopped():
    # The flag ends the loop after the test, in case the stop requests lose:
    # a thread left spinning would slow every later test in the session.
    finished = threading.Event()

    def stubborn(start, times):
        while not finished.is_set():
            try:
                while not finished.is_set():
                    pass
            except BaseException:
                pass

    try:
        result = check(EXERCISE, stubborn, timeout_s=0.3)
    finally:
        finished.set()

    assert result.cases[0].status == "timed out"
    # Learner code that catches every exception can outlast the stop requests.
    assert "was stopped" in result.cases[0].message or "could not be stopped" in result.cases[0].message


def test_blocked_call_reported_unstoppable():
    register(
        "test_blocking",
        Case("sleeps", run=lambda answer: answer(), timeout_s=0.3),
        Case("never reached", run=lambda answer: answer(), timeout_s=0.3),
    )

    began = time.monotonic()
    result = check("test_blocking", lambda: time.sleep(3))
    elapsed = time.monotonic() - began

    assert result.cases[0].status == "timed out"
    assert "could not be stopped" in result.cases[0].message
    assert "restart the kernel" in result.cases[0].message
    assert result.cases[1].status == "skipped"
    assert "'sleeps' is still running in the background" in result.cases[1].message
    assert elapsed < 2.5


@pytest.fixture
def silent_server():
    """A loopback TCP server that accepts connections and never sends a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    stop = threading.Event()

    def accept_forever():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            accepted.append(connection)

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_silent_server_times_out(silent_server):
    @case("test_server", timeout_s=0.5)
    def fetches_the_root(answer):
        """the client returns the response body"""
        assert answer(silent_server) == b"ok"

    def fetch(url):
        with urllib.request.urlopen(url) as response:
            return response.read()

    began = time.monotonic()
    result = check("test_server", fetch)
    elapsed = time.monotonic() - began

    assert result.cases[0].name == "the client returns the response body"
    assert result.cases[0].status == "timed out"
    assert elapsed < 3


def test_grading_mode_raises_on_failure(monkeypatch):
    monkeypatch.setenv(GRADING_ENV, "1")

    with pytest.raises(CheckFailed) as raised:
        check(EXERCISE, lambda start, times: times[-1] - start)

    assert isinstance(raised.value, AssertionError)
    assert type(raised.value) is CheckFailed
    assert "expected 0.25, got 0.5" in str(raised.value)


def test_grading_mode_passes_quietly(monkeypatch):
    monkeypatch.setenv(GRADING_ENV, "1")

    assert check(EXERCISE, ttft).ok


def test_grading_mode_stub_not_attempted(monkeypatch):
    monkeypatch.setenv(GRADING_ENV, "1")

    def stub(start, times):
        raise NotImplementedError

    with pytest.raises(CheckNotAttempted):
        check(EXERCISE, stub)


def test_grading_mode_timeout(monkeypatch):
    monkeypatch.setenv(GRADING_ENV, "1")

    def loops(start, times):
        while True:
            pass

    with pytest.raises(CheckTimedOut):
        check(EXERCISE, loops, timeout_s=0.2)


def test_invalid_timeout_override_rejected():
    with pytest.raises(ValueError, match="timeout_s must be a positive number of seconds, got 0"):
        check(EXERCISE, ttft, timeout_s=0)


def test_unknown_exercise_named():
    with pytest.raises(LookupError, match="no visible cases are registered for exercise 'nope'"):
        check("nope", ttft)


def test_value_case_compares_answer():
    register("test_value", Case("2048 tokens", call=False, expected=2048, hint="multiply"))

    assert check("test_value", 2048).ok
    failed = check("test_value", 1024)
    assert failed.cases[0].message == "expected 2048, got 1024. Hint: multiply"


def test_arguments_copied_per_case():
    seen = []

    def mutates(start, times):
        seen.append(list(times))
        if not times:
            raise ValueError("no tokens")
        value = times[0] - start
        times.clear()
        return value

    check(EXERCISE, mutates)
    check(EXERCISE, mutates)

    assert seen == [[10.25, 10.5], [], [10.25, 10.5], []]


def test_assert_without_message_shows_source(tmp_path, monkeypatch):
    # A lab module outside tests/, so pytest does not rewrite its assert statements.
    (tmp_path / "lab_cases_module.py").write_text(
        "from lab_support.grading import case\n"
        "\n"
        "@case('test_decorated')\n"
        "def first_token_only(answer):\n"
        "    assert answer(0.0, [1.0, 9.0]) == 2.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("lab_cases_module")

    result = check("test_decorated", ttft)

    assert result.cases[0].name == "first_token_only"
    assert result.cases[0].status == "failed"
    assert result.cases[0].message == "assertion failed: assert answer(0.0, [1.0, 9.0]) == 2.0"


def test_reregistering_replaces_case():
    register(EXERCISE, Case("no tokens raises ValueError", args=(0.0, []), raises=KeyError))

    names = [c.name for c in cases_for(EXERCISE)]
    assert names == ["first token after 0.25 s", "no tokens raises ValueError"]
    assert cases_for(EXERCISE)[1].raises is KeyError


def test_html_escapes_names():
    register("test_value", Case("<b>bold</b>", call=False, expected=1))

    html = check("test_value", 2).html()

    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<b>bold</b>" not in html
    assert "0 of 1 cases passed" in html


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"name": "x"}, ValueError, "checks nothing"),
        ({"name": "x", "args": [1], "expected": 1}, TypeError, "args must be a tuple"),
        ({"name": "x", "expected": 1, "raises": ValueError}, ValueError, "not both"),
        ({"name": "x", "call": False}, ValueError, "call=False needs expected="),
        ({"name": "x", "run": print, "args": (1,)}, ValueError, "args and kwargs apply only"),
        ({"name": "x", "expected": 1, "timeout_s": 0}, ValueError, "timeout_s must be positive"),
        ({"name": "", "expected": 1}, ValueError, "non-empty string"),
    ],
)
def test_invalid_case_rejected(arguments, error, message):
    with pytest.raises(error, match=message):
        Case(**arguments)


def test_register_rejects_duplicate_names():
    with pytest.raises(ValueError, match=r"case names \['a'\] are given twice"):
        register("test_value", Case("a", call=False, expected=1), Case("a", call=False, expected=2))


def test_register_rejects_bad_exercise_id():
    with pytest.raises(ValueError, match="exercise id 'has space' is invalid"):
        register("has space", Case("a", call=False, expected=1))
