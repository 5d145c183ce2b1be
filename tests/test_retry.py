"""Unit tests of ``lab_support.retry``: each decision, Retry-After forms, jitter, deadline and logging.

Every test runs on a FakeClock or fixed numbers, so nothing here waits.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random

import httpx
import httpx2
import openai
import pytest

from lab_support import retry
from lab_support.retry import (
    DEFAULT_POLICY,
    GIVE_UP_LOG_MESSAGE,
    RETRY_LOG_MESSAGE,
    DeadlineExceeded,
    Failure,
    FakeClock,
    RetryPolicy,
    StreamInterrupted,
    backoff_delay,
    call_with_retries,
    classify,
    decide,
    is_retryable_status,
    iter_with_deadline,
    parse_retry_after,
    retry_after_from_headers,
    stream_with_retry,
)
from lab_support.sse import IncompleteStreamError, StreamErrorEvent

NOW = 1_800_000_000.0  # a fixed wall-clock time, seconds since the epoch
URL = "http://127.0.0.1:9/v1/chat/completions"


def http_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", URL)
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


def openai_status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    response = httpx2.Response(status, headers=headers or {}, request=httpx2.Request("POST", URL))
    return openai.APIStatusError(f"Error code: {status}", response=response, body=None)


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


class ScriptedSend:
    """A ``send`` that raises the scripted errors in order, then returns ``result``; counts its calls."""

    def __init__(self, errors: list[BaseException], result: object = "ok", *, clock: FakeClock | None = None, attempt_s: float = 0.0):
        self.errors = list(errors)
        self.result = result
        self.calls = 0
        self.clock = clock
        self.attempt_s = attempt_s

    def __call__(self) -> object:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.attempt_s)
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def run(send, policy=DEFAULT_POLICY, *, clock=None, random_value=1.0, **kwargs):
    clock = clock or FakeClock(wall_start=NOW)
    result = call_with_retries(
        send, policy, clock=clock.monotonic, sleep=clock.sleep, random=lambda: random_value, now=clock.time, **kwargs
    )
    return result, clock


# parse_retry_after and retry_after_from_headers


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("0", 0.0), ("1.5", 1.5), (" 3 ", 3.0), ("120", 120.0)],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_in_future():
    assert parse_retry_after(http_date(NOW + 5), now=NOW) == pytest.approx(5.0)


def test_parse_retry_after_http_date_resolves_against_now():
    assert parse_retry_after(http_date(NOW + 5), now=NOW + 2) == pytest.approx(3.0)


def test_parse_retry_after_past_date():
    assert parse_retry_after(http_date(NOW - 60), now=NOW) == 0.0


def test_parse_retry_after_date_with_minus_zero_zone():
    text = email.utils.formatdate(NOW + 7, usegmt=False).rsplit(" ", 1)[0] + " -0000"
    assert parse_retry_after(text, now=NOW) == pytest.approx(7.0)


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "-1", "inf", "nan", "Wed, 32 Oct 2026 07:28:00 GMT"])
def test_parse_retry_after_invalid_is_none(value):
    assert parse_retry_after(value, now=NOW) is None


def test_headers_prefer_retry_after_ms():
    headers = httpx.Headers({"retry-after-ms": "250", "retry-after": "3"})
    assert retry_after_from_headers(headers, now=NOW) == 0.25


def test_headers_fall_back_from_invalid_ms():
    headers = httpx.Headers({"retry-after-ms": "soon", "retry-after": "3"})
    assert retry_after_from_headers(headers, now=NOW) == 3.0


def test_headers_without_retry_after():
    assert retry_after_from_headers(httpx.Headers({}), now=NOW) is None
    assert retry_after_from_headers(None, now=NOW) is None


# is_retryable_status and classify


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status):
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 413, 422])
def test_non_retryable_statuses(status):
    assert not is_retryable_status(status)


def test_classify_httpx_status_error_reads_retry_after():
    failure = classify(http_error(429, {"retry-after": "2"}), now=NOW)
    assert failure == Failure("HTTP 429", retryable=True, status=429, retry_after_s=2.0)


def test_classify_httpx_400_is_not_retryable():
    failure = classify(http_error(400), now=NOW)
    assert failure.status == 400
    assert not failure.retryable


def test_classify_openai_status_error():
    failure = classify(openai_status_error(503, {"retry-after": http_date(NOW + 4)}), now=NOW)
    assert failure.reason == "HTTP 503"
    assert failure.retryable
    assert failure.retry_after_s == pytest.approx(4.0)


def test_classify_openai_401_is_not_retryable():
    assert not classify(openai_status_error(401), now=NOW).retryable


def test_classify_openai_connection_errors():
    request = httpx2.Request("POST", URL)
    assert classify(openai.APIConnectionError(request=request), now=NOW).retryable
    assert classify(openai.APITimeoutError(request=request), now=NOW).retryable


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow"),
        httpx.RemoteProtocolError("peer closed"),
        ConnectionResetError(104, "reset"),
        IncompleteStreamError("Hel"),
        StreamErrorEvent({"message": "boom", "type": "server_error"}),
    ],
)
def test_classify_transient_errors_are_retryable(error):
    failure = classify(error, now=NOW)
    assert failure.retryable
    assert failure.reason == type(error).__name__


@pytest.mark.parametrize(
    "error",
    [
        httpx.UnsupportedProtocol("ftp"),
        ValueError("bug in the caller"),
        DeadlineExceeded(30.0, 31.0),
        StreamErrorEvent({"message": "bad", "type": "invalid_request_error"}),
    ],
)
def test_classify_other_errors_are_not_retryable(error):
    assert not classify(error, now=NOW).retryable


# backoff_delay


def test_backoff_caps_double_up_to_max():
    caps = [backoff_delay(attempt, random=lambda: 1.0) for attempt in range(1, 8)]
    assert caps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_full_jitter_scales_cap():
    assert backoff_delay(3, random=lambda: 0.25) == pytest.approx(0.5)
    assert backoff_delay(3, random=lambda: 0.0) == 0.0


def test_backoff_full_jitter_spreads_over_whole_window():
    rng = random.Random(4)
    delays = [backoff_delay(4, random=rng.random) for _ in range(2000)]
    assert all(0.0 <= delay <= 4.0 for delay in delays)
    assert min(delays) < 0.1
    assert max(delays) > 3.9
    assert 1.8 < sum(delays) / len(delays) < 2.2


def test_backoff_without_jitter_is_the_cap():
    policy = RetryPolicy(jitter=False)
    assert backoff_delay(2, policy, random=lambda: 0.0) == 1.0


def test_backoff_huge_attempt_stays_capped():
    assert backoff_delay(10**6, random=lambda: 1.0) == DEFAULT_POLICY.max_delay_s


@pytest.mark.parametrize("attempt", [0, -1, 1.5, True])
def test_backoff_rejects_invalid_attempt(attempt):
    with pytest.raises(ValueError, match="invalid attempt"):
        backoff_delay(attempt)


# decide


def test_decide_retries_with_backoff():
    decision = decide(Failure("HTTP 503", True, 503), attempt=2, elapsed_s=1.0, random=lambda: 1.0)
    assert decision.retry
    assert decision.delay_s == 1.0
    assert decision.reason == "HTTP 503"


def test_decide_stops_on_non_retryable():
    decision = decide(Failure("HTTP 400", False, 400), attempt=1, elapsed_s=0.0)
    assert not decision.retry
    assert "not retryable" in decision.reason


def test_decide_stops_on_last_attempt():
    decision = decide(Failure("HTTP 503", True, 503), attempt=DEFAULT_POLICY.max_attempts, elapsed_s=0.0)
    assert not decision.retry
    assert "last allowed attempt" in decision.reason


def test_decide_uses_retry_after_instead_of_backoff():
    decision = decide(Failure("HTTP 429", True, 429, retry_after_s=3.0), attempt=1, elapsed_s=0.0, random=lambda: 1.0)
    assert decision.retry
    assert decision.delay_s == 3.0


def test_decide_retry_after_zero_retries_at_once():
    decision = decide(Failure("HTTP 429", True, 429, retry_after_s=0.0), attempt=1, elapsed_s=0.0, random=lambda: 1.0)
    assert decision.retry
    assert decision.delay_s == 0.0


def test_decide_stops_when_retry_after_exceeds_window():
    failure = Failure("HTTP 429", True, 429, retry_after_s=DEFAULT_POLICY.max_retry_after_s + 1)
    decision = decide(failure, attempt=1, elapsed_s=0.0)
    assert not decision.retry
    assert "Retry-After" in decision.reason


def test_decide_stops_when_wait_passes_deadline():
    failure = Failure("HTTP 429", True, 429, retry_after_s=5.0)
    decision = decide(failure, attempt=1, elapsed_s=26.0)
    assert not decision.retry
    assert "deadline" in decision.reason


def test_decide_wait_ending_at_deadline_is_allowed():
    failure = Failure("HTTP 429", True, 429, retry_after_s=5.0)
    assert decide(failure, attempt=1, elapsed_s=25.0).retry


def test_decide_without_deadline():
    policy = RetryPolicy(deadline_s=None)
    failure = Failure("HTTP 429", True, 429, retry_after_s=5.0)
    assert decide(failure, attempt=1, elapsed_s=10_000.0, policy=policy).retry


# call_with_retries


def test_call_returns_first_success_without_sleeping():
    send = ScriptedSend([])
    result, clock = run(send)
    assert result == "ok"
    assert send.calls == 1
    assert clock.sleeps == []


def test_call_retries_5xx_with_exponential_backoff():
    send = ScriptedSend([http_error(503), http_error(502), httpx.ConnectError("refused")])
    result, clock = run(send)
    assert result == "ok"
    assert send.calls == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_call_delays_use_jitter():
    send = ScriptedSend([http_error(503), http_error(503)])
    _, clock = run(send, random_value=0.5)
    assert clock.sleeps == [0.25, 0.5]


@pytest.mark.parametrize("status", [400, 401, 404])
def test_call_does_not_retry_client_errors(status):
    error = http_error(status)
    send = ScriptedSend([error])
    with pytest.raises(httpx.HTTPStatusError) as raised:
        run(send)
    assert raised.value is error
    assert send.calls == 1


def test_call_stops_after_max_attempts():
    errors = [http_error(503) for _ in range(10)]
    send = ScriptedSend(errors)
    clock = FakeClock(wall_start=NOW)
    with pytest.raises(httpx.HTTPStatusError) as raised:
        run(send, clock=clock)
    assert send.calls == DEFAULT_POLICY.max_attempts
    assert len(clock.sleeps) == DEFAULT_POLICY.max_attempts - 1
    assert raised.value is errors[DEFAULT_POLICY.max_attempts - 1]


def test_call_max_attempts_one_means_no_retry():
    send = ScriptedSend([http_error(503)])
    with pytest.raises(httpx.HTTPStatusError):
        run(send, RetryPolicy(max_attempts=1))
    assert send.calls == 1


def test_call_honours_retry_after_seconds():
    send = ScriptedSend([http_error(429, {"retry-after": "2"})])
    _, clock = run(send)
    assert clock.sleeps == [2.0]


def test_call_honours_retry_after_zero():
    send = ScriptedSend([http_error(429, {"retry-after": "0"})])
    _, clock = run(send)
    assert send.calls == 2
    assert clock.sleeps == [0.0]


def test_call_honours_retry_after_http_date():
    send = ScriptedSend([http_error(503, {"retry-after": http_date(NOW + 3)})])
    _, clock = run(send)
    assert clock.sleeps == [pytest.approx(3.0)]


def test_call_invalid_retry_after_falls_back_to_backoff():
    send = ScriptedSend([http_error(429, {"retry-after": "later"})])
    _, clock = run(send)
    assert clock.sleeps == [0.5]


def test_call_gives_up_on_retry_after_beyond_window():
    send = ScriptedSend([http_error(429, {"retry-after": "120"})])
    with pytest.raises(httpx.HTTPStatusError):
        run(send)
    assert send.calls == 1


def test_call_respects_deadline():
    errors = [http_error(429, {"retry-after": "12"}) for _ in range(4)]
    send = ScriptedSend(errors)
    clock = FakeClock(wall_start=NOW)
    with pytest.raises(httpx.HTTPStatusError):
        run(send, clock=clock)
    # Attempts at 0 s, 12 s and 24 s; a third wait would end at 36 s, past the 30 s deadline.
    assert send.calls == 3
    assert clock.sleeps == [12.0, 12.0]


def test_call_deadline_counts_slow_attempts():
    clock = FakeClock(wall_start=NOW)
    send = ScriptedSend([http_error(503) for _ in range(4)], clock=clock, attempt_s=14.0)
    with pytest.raises(httpx.HTTPStatusError):
        run(send, clock=clock)
    # 14 s + 0.5 s + 14 s = 28.5 s; another 1 s wait is fine, but the third attempt ends at 43.5 s.
    assert send.calls == 3
    assert clock.sleeps == [0.5, 1.0]


def test_call_does_not_retry_bugs():
    send = ScriptedSend([KeyError("choices")])
    with pytest.raises(KeyError):
        run(send)
    assert send.calls == 1


def test_call_logs_each_retry(caplog):
    send = ScriptedSend([http_error(503), http_error(429, {"retry-after": "2"})])
    with caplog.at_level(logging.WARNING, logger=retry.__name__):
        run(send)
    retries = [record for record in caplog.records if record.msg == RETRY_LOG_MESSAGE]
    assert [record.args for record in retries] == [(1, 4, "HTTP 503", 0.5), (2, 4, "HTTP 429", 2.0)]
    assert retries[0].getMessage() == "attempt 1 of 4 failed (HTTP 503); retrying in 0.50 s"


def test_call_logs_give_up_reason(caplog):
    send = ScriptedSend([http_error(503) for _ in range(4)])
    with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(httpx.HTTPStatusError):
        run(send)
    give_ups = [record for record in caplog.records if record.msg == GIVE_UP_LOG_MESSAGE]
    assert len(give_ups) == 1
    assert "last allowed attempt" in give_ups[0].getMessage()


def test_call_first_client_error_logs_nothing_at_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(httpx.HTTPStatusError):
        run(ScriptedSend([http_error(400)]))
    assert caplog.records == []


def test_call_reports_retries_to_callback():
    events = []
    send = ScriptedSend([httpx.ReadError("reset"), http_error(503)])
    run(send, on_retry=events.append)
    assert [(event.attempt, event.failure.reason, event.delay_s) for event in events] == [
        (1, "ReadError", 0.5),
        (2, "HTTP 503", 1.0),
    ]


# RetryPolicy validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 2.5),
        ("initial_delay_s", -1.0),
        ("max_delay_s", math.inf),
        ("max_retry_after_s", -0.5),
        ("multiplier", 0.5),
        ("deadline_s", 0),
        ("deadline_s", math.nan),
    ],
)
def test_policy_rejects_invalid_values(field, value):
    with pytest.raises(ValueError, match=f"invalid {field}"):
        RetryPolicy(**{field: value})


# stream_with_retry


def pieces_then(pieces: list[str], error: BaseException | None = None, closed: list[bool] | None = None):
    def generate():
        try:
            yield from pieces
            if error is not None:
                raise error
        finally:
            if closed is not None:
                closed.append(True)

    return generate()


def test_stream_retries_failure_before_first_text():
    attempts = [pieces_then([], httpx.ReadError("reset")), pieces_then(["", "Hel", "lo"])]
    emitted: list[str] = []
    clock = FakeClock(wall_start=NOW)
    text = stream_with_retry(lambda: attempts.pop(0), emitted.append, clock=clock.monotonic, sleep=clock.sleep, random=lambda: 1.0, now=clock.time)
    assert text == "Hello"
    assert emitted == ["Hel", "lo"]
    assert clock.sleeps == [0.5]


def test_stream_role_chunk_does_not_count_as_delivered():
    attempts = [pieces_then([""], IncompleteStreamError("")), pieces_then(["Hi"])]
    clock = FakeClock(wall_start=NOW)
    text = stream_with_retry(lambda: attempts.pop(0), lambda piece: None, clock=clock.monotonic, sleep=clock.sleep, now=clock.time)
    assert text == "Hi"
    assert attempts == []


def test_stream_failure_after_text_is_not_retried():
    closed: list[bool] = []
    cause = IncompleteStreamError("Hel")
    attempts = [pieces_then(["Hel"], cause, closed), pieces_then(["Hello"])]
    emitted: list[str] = []
    clock = FakeClock(wall_start=NOW)
    with pytest.raises(StreamInterrupted) as raised:
        stream_with_retry(lambda: attempts.pop(0), emitted.append, clock=clock.monotonic, sleep=clock.sleep, now=clock.time)
    assert raised.value.delivered_text == "Hel"
    assert raised.value.__cause__ is cause
    assert emitted == ["Hel"]
    assert len(attempts) == 1
    assert closed == [True]
    assert clock.sleeps == []


def test_stream_error_from_emit_is_not_retried():
    closed: list[bool] = []
    attempts = [pieces_then(["Hel", "lo"], closed=closed), pieces_then(["Hello"])]
    clock = FakeClock()

    def emit(piece: str) -> None:
        raise BrokenPipeError("the user closed the tab")

    with pytest.raises(BrokenPipeError, match="closed the tab"):
        stream_with_retry(lambda: attempts.pop(0), emit, sleep=clock.sleep)
    assert len(attempts) == 1
    assert closed == [True]
    assert clock.sleeps == []


# iter_with_deadline


def ticking_pieces(clock: FakeClock, count: int, interval_s: float, closed: list[bool]):
    try:
        for index in range(count):
            clock.advance(interval_s)
            yield f"t{index} "
    finally:
        closed.append(True)


def test_deadline_stops_dripping_stream_and_closes_it():
    clock = FakeClock()
    closed: list[bool] = []
    received = []
    with pytest.raises(DeadlineExceeded) as raised:
        for piece in iter_with_deadline(ticking_pieces(clock, 10, 0.4, closed), 1.0, clock=clock.monotonic):
            received.append(piece)
    assert received == ["t0 ", "t1 "]
    assert raised.value.deadline_s == 1.0
    assert raised.value.elapsed_s == pytest.approx(1.2)
    assert closed == [True]
    assert isinstance(raised.value, TimeoutError)


def test_deadline_passes_a_fast_stream():
    clock = FakeClock()
    closed: list[bool] = []
    pieces = list(iter_with_deadline(ticking_pieces(clock, 3, 0.1, closed), 1.0, clock=clock.monotonic))
    assert pieces == ["t0 ", "t1 ", "t2 "]
    assert closed == [True]


@pytest.mark.parametrize("deadline_s", [0, -1, math.inf])
def test_deadline_rejects_invalid_values(deadline_s):
    with pytest.raises(ValueError, match="invalid deadline_s"):
        list(iter_with_deadline([], deadline_s))


# FakeClock


def test_fake_clock_sleep_moves_both_clocks():
    clock = FakeClock(10.0, wall_start=NOW)
    clock.sleep(2.5)
    clock.advance(1.0)
    assert clock.monotonic() == 13.5
    assert clock.time() == NOW + 3.5
    assert clock.sleeps == [2.5]


@pytest.mark.parametrize("seconds", [-0.1, math.nan, math.inf])
def test_fake_clock_rejects_invalid_sleep(seconds):
    with pytest.raises(ValueError, match="invalid sleep"):
        FakeClock().sleep(seconds)
