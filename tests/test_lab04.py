"""Tests of lab 04's checks: the solution passes every case, and common wrong answers fail with a hint.

The solution answers are executed from the answer cells of
``solutions/04_timeouts_retries.ipynb``. The wrong answers are small variants
written here, each with one of the mistakes the lab warns about.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from pathlib import Path

import httpx
import nbformat
import openai
import pytest

from lab_support import retry
from lab_support.exercises import lab04
from lab_support.grading import GRADING_ENV, cases_for, check
from lab_support.provider import start_provider

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "04_timeouts_retries.ipynb"
LAB = ROOT / "labs" / "04_timeouts_retries.ipynb"
IMPORTS_CELL_ID = "lab04-02"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def provider(backend):
    with start_provider(upstream=backend) as running:
        lab04.use_provider(running)
        # The model's first request loads it into memory, which can outlast the drip case's read timeout.
        with lab04.trial() as warm_up:
            lab04.chat_once(warm_up.http)
        yield running


@pytest.fixture(scope="module")
def answers(provider):
    """The names defined by the notebook's imports cell and every answer cell, executed in one namespace."""
    nb = nbformat.read(SOLUTION, as_version=4)
    cells = {cell.id: cell for cell in nb.cells}
    namespace: dict = {"__name__": "lab04_solution"}

    # The imports cell reconfigures the root logger for the notebook; pytest's own capture must stay.
    original_basic_config = logging.basicConfig
    logging.basicConfig = lambda **kwargs: None
    try:
        exec(compile(cells[IMPORTS_CELL_ID].source, "imports cell", "exec"), namespace)
    finally:
        logging.basicConfig = original_basic_config

    for cell in nb.cells:
        if cell.metadata.get("serving_lab", {}).get("role") == "solution":
            exec(compile(cell.source, f"cell {cell.id}", "exec"), namespace)
    return namespace


@pytest.fixture(autouse=True)
def not_grading(monkeypatch):
    monkeypatch.delenv(GRADING_ENV, raising=False)


def failed_cases(result) -> dict[str, str]:
    return {case.name: case.message for case in result.cases if case.status != "passed"}


def assert_fails_with_hint(result, case_name: str, hint_words: str) -> None:
    failures = failed_cases(result)
    assert case_name in failures, f"expected case {case_name!r} to fail, got:\n{result.text()}"
    assert hint_words in failures[case_name], f"the message of {case_name!r} lacks {hint_words!r}: {failures[case_name]}"


# The notebook and the registered cases agree.


def test_notebook_declares_every_registered_exercise():
    nb = nbformat.read(SOLUTION, as_version=4)
    declared = set(nb.metadata["serving_lab"]["exercises"])
    registered = {exercise for exercise in declared if cases_for(exercise)}
    assert declared == registered
    assert all(exercise.startswith("04.") for exercise in declared)


def test_notebook_points_total():
    nb = nbformat.read(SOLUTION, as_version=4)
    points = {exercise: spec["points"] for exercise, spec in nb.metadata["serving_lab"]["exercises"].items()}
    assert sum(points.values()) == 16
    assert points["04.retry"] == 4


def test_lab_has_no_solution_code():
    lab = nbformat.read(LAB, as_version=4)
    sources = "\n".join(cell.source for cell in lab.cells)
    assert "BEGIN SOLUTION" not in sources
    assert "BEGIN HIDDEN TESTS" not in sources
    assert "Idempotency-Key\": idempotency_key" not in sources
    assert sources.count("raise NotImplementedError") == 8


# The solution passes every visible case.

EXERCISE_FUNCTIONS = {
    "04.deadline": "collect_with_deadline",
    "04.retryable": "is_retryable",
    "04.retry_after": "parse_retry_after",
    "04.backoff": "backoff_delay",
    "04.retry": "call_with_retries",
    "04.stream": "stream_with_retry",
    "04.charge": "charge_card",
    "04.sdk_client": "make_sdk_client",
}


@pytest.mark.parametrize(("exercise", "function_name"), EXERCISE_FUNCTIONS.items())
def test_solution_passes(answers, exercise, function_name):
    result = check(exercise, answers[function_name])
    assert result.ok, result.text()


@pytest.mark.parametrize("exercise", EXERCISE_FUNCTIONS)
def test_stub_is_not_attempted(provider, exercise):
    def stub(*args, **kwargs):
        raise NotImplementedError("replace this line with your answer")

    result = check(exercise, stub)
    assert {case.status for case in result.cases} == {"not attempted"}, result.text()


# Common wrong answers fail with a hint.


def make_loop(answers, *, is_retryable=None, parse_retry_after=None, backoff_delay=None, window=True, deadline=True):
    """Return a learner-style call_with_retries with one policy piece swapped or left out."""
    is_retryable = is_retryable or answers["is_retryable"]
    parse_retry_after = parse_retry_after or answers["parse_retry_after"]
    backoff_delay = backoff_delay or answers["backoff_delay"]
    logger = logging.getLogger(lab04.LOGGER_NAME)

    def call_with_retries(send, *, clock=time.monotonic, sleep=time.sleep, random=None, now=time.time):
        start = clock()
        for attempt in range(1, lab04.MAX_ATTEMPTS + 1):
            try:
                return send()
            except Exception as error:
                if not is_retryable(error) or attempt == lab04.MAX_ATTEMPTS:
                    raise
                retry_after = None
                if isinstance(error, httpx.HTTPStatusError):
                    retry_after = parse_retry_after(error.response.headers.get("retry-after"), now())
                if window and retry_after is not None and retry_after > lab04.MAX_RETRY_AFTER_S:
                    raise
                delay = retry_after if retry_after is not None else backoff_delay(attempt, random)
                if deadline and clock() - start + delay > lab04.DEADLINE_S:
                    raise
                logger.warning(lab04.RETRY_LOG_MESSAGE, attempt, lab04.MAX_ATTEMPTS, retry.describe_error(error), delay)
            sleep(delay)

    return call_with_retries


def retries_every_status(error):
    return isinstance(error, (httpx.HTTPStatusError, httpx.TransportError))


def test_retrying_400_fails_retryable(answers):
    result = check("04.retryable", retries_every_status)
    assert_fails_with_hint(result, "400, 401 and 404 are not retryable", "retrying 400")


def test_retrying_400_fails_retry_loop(answers):
    result = check("04.retry", make_loop(answers, is_retryable=retries_every_status))
    assert_fails_with_hint(result, "400, 401 and 404 are raised at once", "raise the error unchanged")


def test_backoff_without_cap_fails(answers):
    def uncapped(attempt, random=None):
        return random() * lab04.INITIAL_DELAY_S * 2 ** (attempt - 1)

    result = check("04.backoff", uncapped)
    assert_fails_with_hint(result, "no delay exceeds MAX_DELAY_S", "sleeping without a cap")


def test_backoff_without_jitter_fails(answers):
    def no_jitter(attempt, random=None):
        return min(lab04.MAX_DELAY_S, lab04.INITIAL_DELAY_S * 2 ** (attempt - 1))

    result = check("04.backoff", no_jitter)
    assert_fails_with_hint(result, "full jitter scales the cap by random()", "full jitter")


def seconds_only(value, now):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def test_ignoring_http_date_fails_parse(answers):
    result = check("04.retry_after", seconds_only)
    assert_fails_with_hint(result, "an HTTP date 5 s ahead is 5 seconds", "HTTP date")


def test_ignoring_http_date_fails_retry_loop(answers):
    result = check("04.retry", make_loop(answers, parse_retry_after=seconds_only))
    assert_fails_with_hint(result, "honours an HTTP-date Retry-After", "ignoring an HTTP-date Retry-After")


def test_truthy_zero_retry_after_fails(answers):
    def zero_is_missing(value, now):
        parsed = answers["parse_retry_after"](value, now)
        return parsed or None

    result = check("04.retry_after", zero_is_missing)
    assert_fails_with_hint(result, "'0' means retry at once", "compare with None")


def test_sleeping_without_retry_after_cap_fails(answers):
    result = check("04.retry", make_loop(answers, window=False))
    assert_fails_with_hint(result, "gives up when Retry-After exceeds MAX_RETRY_AFTER_S", "sleeping without a cap")


def test_loop_without_deadline_fails(answers):
    result = check("04.retry", make_loop(answers, deadline=False))
    assert_fails_with_hint(result, "respects the deadline", "DEADLINE_S")
    assert len(failed_cases(result)) == 1, result.text()


def test_loop_ignoring_sleep_argument_fails(answers):
    # A loop that waits some other way than through its sleep argument leaves the fake clock's record empty.
    loop = make_loop(answers)

    def own_sleep_loop(send, *, clock=time.monotonic, sleep=time.sleep, random=None, now=time.time):
        return loop(send, clock=clock, sleep=lambda seconds: None, random=random, now=now)

    result = check("04.retry", own_sleep_loop)
    assert_fails_with_hint(result, "recovers after two 503s", "sleep(backoff_delay")


def test_charge_without_key_charges_twice(answers):
    def charge_without_key(http, amount, currency="usd", *, sleep=time.sleep):
        def send():
            response = http.post("/payments/charges", json={"amount": amount, "currency": currency})
            response.raise_for_status()
            return response.json()

        return retry.call_with_retries(send, sleep=sleep)

    result = check("04.charge", charge_without_key)
    assert_fails_with_hint(result, "a lost response does not charge twice", "Idempotency-Key")


def test_charge_with_new_key_per_attempt_fails(answers):
    def key_per_attempt(http, amount, currency="usd", *, sleep=time.sleep):
        def send():
            headers = {"Idempotency-Key": str(uuid.uuid4())}
            response = http.post("/payments/charges", json={"amount": amount, "currency": currency}, headers=headers)
            response.raise_for_status()
            return response.json()

        return retry.call_with_retries(send, sleep=sleep)

    result = check("04.charge", key_per_attempt)
    assert_fails_with_hint(result, "every attempt sends the same key", "create the key once per charge_card call")


def test_charge_with_one_key_for_everything_fails(answers):
    shared_key = str(uuid.uuid4())

    def one_key(http, amount, currency="usd", *, sleep=time.sleep):
        def send():
            headers = {"Idempotency-Key": shared_key}
            response = http.post("/payments/charges", json={"amount": amount, "currency": currency}, headers=headers)
            response.raise_for_status()
            return response.json()

        return retry.call_with_retries(send, sleep=sleep)

    result = check("04.charge", one_key)
    assert_fails_with_hint(result, "two purchases are two charges", "a key shared by every call")


def test_stream_retried_after_text_fails(answers):
    backoff_delay = answers["backoff_delay"]

    def restart_always(open_stream, emit, *, sleep=time.sleep, random=None):
        for attempt in itertools.count(1):
            delivered = []
            try:
                for piece in open_stream():
                    if piece:
                        emit(piece)
                        delivered.append(piece)
                return "".join(delivered)
            except Exception:
                if attempt == lab04.MAX_ATTEMPTS:
                    raise
            sleep(backoff_delay(attempt, random))

    result = check("04.stream", restart_always)
    assert_fails_with_hint(result, "does not retry once text reached the user", "StreamInterrupted")


def test_deadline_without_close_fails(answers):
    def leaves_open(pieces, deadline_s, *, clock=time.monotonic):
        start = clock()
        parts = []
        for piece in pieces:
            elapsed = clock() - start
            if elapsed > deadline_s:
                raise retry.DeadlineExceeded(deadline_s, elapsed)
            parts.append(piece)
        return "".join(parts)

    result = check("04.deadline", leaves_open)
    assert_fails_with_hint(result, "the stream is closed at the deadline", "pieces.close()")


def test_deadline_checked_only_at_end_fails(answers):
    def checks_at_end(pieces, deadline_s, *, clock=time.monotonic):
        start = clock()
        text = "".join(pieces)
        if clock() - start > deadline_s:
            raise retry.DeadlineExceeded(deadline_s, clock() - start)
        return text

    result = check("04.deadline", checks_at_end)
    assert_fails_with_hint(result, "a dripping stream raises DeadlineExceeded", "after each piece")


def test_sdk_client_with_default_retries_fails(answers):
    def default_client(base_url, api_key):
        return openai.OpenAI(base_url=base_url, api_key=api_key)

    result = check("04.sdk_client", default_client)
    assert_fails_with_hint(result, "the SDK does not retry", "max_retries=0")
    assert_fails_with_hint(result, "a 503 costs one request", "three times")
