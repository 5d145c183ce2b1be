"""Visible cases of lab 04: timeouts and retries against a misbehaving upstream.

The notebook's setup cell passes its simulated provider to :func:`use_provider`.
The cases then issue their own key, ``lab04-checks``, without rate limits,
and script faults on that key only, so they never consume the notebook's
global fault script. Wherever an answer takes a clock or a sleep, time is a
:class:`lab_support.retry.FakeClock`, so the cases never wait for a backoff.
Only the deadline case waits in real time, for about a second, on a real
dripping stream.

The notebook's hidden tests use the same helpers: :func:`trial`,
:func:`drive_retry`, :func:`drive_stream` and :func:`drive_charge`.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from lab_support import retry
from lab_support.grading import Case, register
from lab_support.provider import (
    ConnectionReset,
    Drip,
    ErrorInStream,
    Fault,
    HttpError,
    RateLimited,
    RateLimits,
    TruncatedStream,
)
from lab_support.retry import DeadlineExceeded, FakeClock, StreamInterrupted
from lab_support.sse import iter_chat_chunks

# The lab's timeouts, in seconds. A non-streamed completion sends nothing
# until the whole answer is generated, so its read timeout must cover the
# generation. The model's first request, which loads it into memory, took
# 17 s once on 2 CPU cores shared with other test runs. For a stream the
# read timeout bounds the gap between two chunks.
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 2.0

# The lab's retry policy: the same numbers as lab_support.retry's defaults.
MAX_ATTEMPTS = retry.DEFAULT_MAX_ATTEMPTS
INITIAL_DELAY_S = retry.DEFAULT_INITIAL_DELAY_S
MAX_DELAY_S = retry.DEFAULT_MAX_DELAY_S
MAX_RETRY_AFTER_S = retry.DEFAULT_MAX_RETRY_AFTER_S
DEADLINE_S = retry.DEFAULT_DEADLINE_S
RETRY_LOG_MESSAGE = retry.RETRY_LOG_MESSAGE

# The logger that the learner's call_with_retries writes to.
LOGGER_NAME = "lab04"
CHECKS_KEY_NAME = "lab04-checks"

# Cases that talk to the provider get more time than the default, because
# the model generates the reply to each "ok" request.
PROVIDER_CASE_TIMEOUT_S = 20.0
QUICK_CASE_TIMEOUT_S = 5.0

# Answers of a few tokens keep "ok" requests fast on a CPU.
CHAT_MAX_TOKENS = 1
STREAM_MAX_TOKENS = 6
PROMPT = "Name three colours."

# The real dripping stream of the deadline case: a chunk every 0.25 s, with
# a read timeout 40 times longer, so only a deadline can stop it early. The
# long read timeout also covers a slow first chunk on a busy CPU.
DRIP_INTERVAL_S = 0.25
DRIP_READ_TIMEOUT_S = 10.0
DRIP_DEADLINE_S = 0.6

# A stream fault "after 4 chunks" acts after the role chunk and three chunks of text.
AFTER_TEXT_CHUNKS = 4

_provider: Any = None


def use_provider(provider: Any) -> None:
    """Run the provider-backed cases against ``provider`` (from ``lab_support.provider.start_provider``)."""
    global _provider
    try:
        provider.key(CHECKS_KEY_NAME)
    except KeyError:
        provider.issue_key(CHECKS_KEY_NAME, rate_limits=RateLimits(requests_per_minute=None, tokens_per_minute=None))
    _provider = provider


def _require_provider() -> Any:
    if _provider is None or not _provider.running:
        raise RuntimeError(
            "no running provider for the lab 04 checks: run the setup cell at the top of the notebook, "
            "which starts one and calls lab04.use_provider(provider)"
        )
    return _provider


# Trials: one scripted run against the checks key.


@dataclass
class Trial:
    """A scripted run on the checks key, with an HTTP client for that key and a fake clock."""

    provider: Any
    http: httpx.Client
    clock: FakeClock
    history_start: int
    charges_start: int

    @property
    def requests(self) -> int:
        """The number of requests with the checks key that reached the provider's fault script in this trial."""
        history = self.provider.faults.history[self.history_start :]
        return sum(1 for applied in history if applied.key_name == CHECKS_KEY_NAME)

    @property
    def charges(self) -> list:
        """The charges applied for the checks key during this trial."""
        return [charge for charge in self.provider.charges[self.charges_start :] if charge.key_name == CHECKS_KEY_NAME]

    @property
    def api_key(self) -> str:
        return self.provider.key(CHECKS_KEY_NAME).get_secret_value()


@contextlib.contextmanager
def trial(script: Sequence[Fault | str] = (), *, read_timeout_s: float = READ_TIMEOUT_S) -> Iterator[Trial]:
    """Script ``script`` on the checks key and yield a :class:`Trial`; leftover faults are dropped afterwards."""
    provider = _require_provider()
    key = provider.key(CHECKS_KEY_NAME)
    timeout = httpx.Timeout(
        connect=CONNECT_TIMEOUT_S, read=read_timeout_s, write=WRITE_TIMEOUT_S, pool=POOL_TIMEOUT_S
    )
    provider.faults.script(list(script), key=key)
    try:
        with httpx.Client(
            base_url=provider.base_url,
            headers={"Authorization": f"Bearer {key.get_secret_value()}"},
            timeout=timeout,
        ) as http:
            yield Trial(
                provider=provider,
                http=http,
                clock=FakeClock(),
                history_start=len(provider.faults.history),
                charges_start=len(provider.charges),
            )
    finally:
        provider.faults.script([], key=key)


def chat_once(http: httpx.Client) -> dict:
    """Send one short non-streamed chat completion; raise ``httpx.HTTPStatusError`` for an error status."""
    response = http.post(
        "/chat/completions",
        json={
            "model": _require_provider().model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": CHAT_MAX_TOKENS,
            "temperature": 0,
        },
    )
    response.raise_for_status()
    return response.json()


def text_stream(http: httpx.Client, *, max_tokens: int = STREAM_MAX_TOKENS) -> Iterator[str]:
    """Stream a chat completion and yield the text of each chunk ("" for the role chunk)."""
    body = {
        "model": _require_provider().model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    with http.stream("POST", "/chat/completions", json=body) as response:
        for chunk in iter_chat_chunks(response):
            yield chunk.text


@dataclass
class Outcome:
    """The result of running an answer in one trial: its value or error, its sleeps, the requests and charges."""

    value: Any = None
    error: BaseException | None = None
    sleeps: list[float] = field(default_factory=list)
    requests: int = 0
    charges: int = 0
    emitted: list[str] = field(default_factory=list)


def _finish(outcome: Outcome, run: Trial) -> Outcome:
    outcome.sleeps = list(run.clock.sleeps)
    outcome.requests = run.requests
    outcome.charges = len(run.charges)
    return outcome


def drive_retry(
    call_with_retries: Callable[..., Any],
    script: Sequence[Fault | str],
    *,
    random_value: float = 1.0,
    send: Callable[[Trial], Any] | None = None,
) -> Outcome:
    """Run ``call_with_retries`` on a chat request against ``script``, with a fake clock and fixed ``random()``."""
    with trial(script) as run:
        attempt = send or (lambda current: chat_once(current.http))
        outcome = Outcome()
        try:
            outcome.value = call_with_retries(
                lambda: attempt(run),
                clock=run.clock.monotonic,
                sleep=run.clock.sleep,
                random=lambda: random_value,
                now=run.clock.time,
            )
        except NotImplementedError:
            raise
        except Exception as error:
            outcome.error = error
        return _finish(outcome, run)


def drive_stream(stream_with_retry: Callable[..., Any], script: Sequence[Fault | str]) -> Outcome:
    """Run ``stream_with_retry`` on a real stream against ``script``; ``emitted`` is what reached the user."""
    with trial(script) as run:
        outcome = Outcome()
        try:
            outcome.value = stream_with_retry(
                lambda: text_stream(run.http), outcome.emitted.append, sleep=run.clock.sleep, random=lambda: 1.0
            )
        except NotImplementedError:
            raise
        except Exception as error:
            outcome.error = error
        return _finish(outcome, run)


def drive_charge(charge_card: Callable[..., Any], script: Sequence[Fault | str], *, calls: int = 1) -> Outcome:
    """Call ``charge_card`` ``calls`` times for 500 cents against ``script``; ``value`` is the last result."""
    with trial(script) as run:
        outcome = Outcome()
        try:
            for _ in range(calls):
                outcome.value = charge_card(run.http, 500, "usd", sleep=run.clock.sleep)
        except NotImplementedError:
            raise
        except Exception as error:
            outcome.error = error
        return _finish(outcome, run)


def status_of(error: BaseException | None) -> int | None:
    """Return the HTTP status of an ``httpx.HTTPStatusError``, else None."""
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code
    return None


def _describe(outcome: Outcome) -> str:
    result = f"raised {retry.describe_error(outcome.error)}" if outcome.error is not None else "returned"
    return f"it {result} after {outcome.requests} request(s), sleeping {outcome.sleeps}"


def _assert_succeeded(outcome: Outcome) -> None:
    if outcome.error is not None:
        raise AssertionError(f"expected a result, but {_describe(outcome)}")


def _assert_raised_status(outcome: Outcome, status: int) -> None:
    if status_of(outcome.error) != status:
        raise AssertionError(f"expected the HTTP {status} error to be raised, but {_describe(outcome)}")


def _sleeps_close(actual: Sequence[float], expected: Sequence[float]) -> bool:
    return len(actual) == len(expected) and all(math.isclose(a, e, abs_tol=1e-6) for a, e in zip(actual, expected))


# 04.deadline: collect_with_deadline(pieces, deadline_s, *, clock)


def _ticking_pieces(clock: FakeClock, intervals_s: Sequence[float], closed: list[bool]) -> Iterator[str]:
    try:
        for index, interval_s in enumerate(intervals_s):
            clock.advance(interval_s)
            yield f"t{index} "
    finally:
        closed.append(True)


def _fast_stream_returns_text(answer: Callable[..., Any]) -> None:
    clock, closed = FakeClock(), []
    text = answer(_ticking_pieces(clock, [0.1, 0.1, 0.1], closed), 1.0, clock=clock.monotonic)
    assert text == "t0 t1 t2 ", f"expected 't0 t1 t2 ', got {text!r}"


def _dripping_stream_raises(answer: Callable[..., Any]) -> None:
    clock, closed = FakeClock(), []
    pieces = _ticking_pieces(clock, [0.4] * 10, closed)
    try:
        answer(pieces, 1.0, clock=clock.monotonic)
    except DeadlineExceeded:
        pass
    else:
        raise AssertionError("a stream with a piece every 0.4 s ran past the 1.0 s deadline without DeadlineExceeded")
    assert clock.monotonic() <= 1.6, (
        f"it kept reading until {clock.monotonic():.1f} s, past the 1.0 s deadline: check the clock after every piece"
    )


def _closes_stream_at_deadline(answer: Callable[..., Any]) -> None:
    clock, closed = FakeClock(), []
    # This reference keeps the generator alive, so only an explicit close() runs its cleanup.
    pieces = _ticking_pieces(clock, [0.4] * 10, closed)
    try:
        answer(pieces, 1.0, clock=clock.monotonic)
    except DeadlineExceeded:
        pass
    assert closed, "the stream was left open: call pieces.close() before raising"


def _real_drip_stops_at_deadline(answer: Callable[..., Any]) -> None:
    with trial([Drip(interval_s=DRIP_INTERVAL_S)], read_timeout_s=DRIP_READ_TIMEOUT_S) as run:
        started = time.monotonic()
        try:
            answer(text_stream(run.http, max_tokens=STREAM_MAX_TOKENS), DRIP_DEADLINE_S)
        except DeadlineExceeded:
            pass
        except httpx.ReadTimeout:
            raise AssertionError("the read timeout fired, so the deadline did not stop the stream first") from None
        else:
            raise AssertionError(
                f"a stream dripping a chunk every {DRIP_INTERVAL_S} s finished without DeadlineExceeded "
                f"(deadline {DRIP_DEADLINE_S} s)"
            )
        elapsed_s = time.monotonic() - started
    assert elapsed_s < DRIP_DEADLINE_S + DRIP_READ_TIMEOUT_S, f"it stopped only after {elapsed_s:.2f} s"


register(
    "04.deadline",
    Case(
        "a fast stream returns the whole text",
        run=_fast_stream_returns_text,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="join the pieces, as in lab 00",
    ),
    Case(
        "a dripping stream raises DeadlineExceeded",
        run=_dripping_stream_raises,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="after each piece, compare clock() - start with deadline_s and raise DeadlineExceeded(deadline_s, elapsed)",
    ),
    Case(
        "the stream is closed at the deadline",
        run=_closes_stream_at_deadline,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="closing the stream stops the download and the provider's generation (and billing)",
    ),
    Case(
        "a real dripping stream stops at the deadline",
        run=_real_drip_stops_at_deadline,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="use the clock argument, whose default is time.monotonic",
    ),
)


# 04.retryable: is_retryable(error)


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


def _expect_retryable(answer: Callable[[BaseException], Any], errors: Sequence[BaseException], expected: bool) -> None:
    wrong = [retry.describe_error(error) for error in errors if answer(error) is not expected]
    assert not wrong, f"is_retryable returned {not expected} for {', '.join(wrong)}"


register(
    "04.retryable",
    Case(
        "408, 409, 429 and 5xx are retryable",
        run=lambda answer: _expect_retryable(answer, [_status_error(s) for s in (408, 409, 429, 500, 502, 503)], True),
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="a timeout, a conflict, a rate limit or a server error may pass on a later attempt",
    ),
    Case(
        "400, 401 and 404 are not retryable",
        run=lambda answer: _expect_retryable(answer, [_status_error(s) for s in (400, 401, 404)], False),
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="a bad request, a bad key or a missing route fail the same way every time: retrying 400 only adds load",
    ),
    Case(
        "network errors and timeouts are retryable",
        run=lambda answer: _expect_retryable(
            answer, [httpx.ConnectError("refused"), httpx.ReadError("reset"), httpx.ReadTimeout("slow")], True
        ),
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="check isinstance(error, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))",
    ),
    Case(
        "other exceptions are not retryable",
        run=lambda answer: _expect_retryable(answer, [ValueError("bug"), KeyError("choices")], False),
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="a bug in your own code fails again on every attempt",
    ),
)


# 04.retry_after: parse_retry_after(value, now)

# A fixed wall-clock time (2027-01-15), so the HTTP dates below are exact.
_NOW = 1_800_000_000.0


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _number_close(actual: Any, expected: float) -> bool:
    return isinstance(actual, (int, float)) and not isinstance(actual, bool) and math.isclose(actual, expected, abs_tol=1e-6)


def _seconds_case(name: str, value: str, expected: float, hint: str = "") -> Case:
    return Case(
        name,
        args=(value, _NOW),
        expected=expected,
        compare=_number_close,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint=hint,
    )


register(
    "04.retry_after",
    _seconds_case("'2' is 2 seconds", "2", 2.0, hint="delay-seconds: float(value)"),
    _seconds_case(
        "'0' means retry at once",
        "0",
        0.0,
        hint="0 is a valid wait, not a missing one: compare with None, not with `if seconds:`",
    ),
    _seconds_case(
        "an HTTP date 5 s ahead is 5 seconds",
        _http_date(_NOW + 5),
        5.0,
        hint="Retry-After may be an HTTP date: parse it with email.utils.parsedate_to_datetime and subtract now",
    ),
    _seconds_case(
        "an HTTP date in the past is 0 seconds",
        _http_date(_NOW - 30),
        0.0,
        hint="the date has passed, so there is nothing left to wait: return max(0.0, date - now)",
    ),
    Case("a missing header is None", args=(None, _NOW), expected=None, timeout_s=QUICK_CASE_TIMEOUT_S),
    Case(
        "text that is neither form is None",
        args=("soon", _NOW),
        expected=None,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="return None for a value you cannot parse, so the caller falls back to its own backoff",
    ),
    Case(
        "a negative number is None",
        args=("-3", _NOW),
        expected=None,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="a negative wait is invalid: return None",
    ),
)


# 04.backoff: backoff_delay(attempt, random)


def _caps_double(answer: Callable[..., Any]) -> None:
    caps = [answer(attempt, random=lambda: 1.0) for attempt in range(1, 5)]
    expected = [INITIAL_DELAY_S * 2**index for index in range(4)]
    assert _sleeps_close(caps, expected), f"with random() = 1.0, attempts 1 to 4 gave {caps}, expected {expected}"


def _cap_holds(answer: Callable[..., Any]) -> None:
    delays = {attempt: answer(attempt, random=lambda: 1.0) for attempt in (5, 6, 10, 30)}
    too_long = {attempt: delay for attempt, delay in delays.items() if not _number_close(delay, MAX_DELAY_S)}
    assert not too_long, f"expected {MAX_DELAY_S} s for late attempts, got {too_long}"


def _full_jitter(answer: Callable[..., Any]) -> None:
    half = answer(3, random=lambda: 0.5)
    assert _number_close(half, 1.0), f"attempt 3 with random() = 0.5 gave {half}, expected 0.5 * 2.0 = 1.0"
    zero = answer(3, random=lambda: 0.0)
    assert _number_close(zero, 0.0), f"attempt 3 with random() = 0.0 gave {zero}, expected 0.0"


def _jitter_spreads(answer: Callable[..., Any]) -> None:
    source = random.Random(4)
    delays = [answer(4, random=source.random) for _ in range(1000)]
    cap = INITIAL_DELAY_S * 2**3
    outside = [delay for delay in delays if not 0.0 <= delay <= cap]
    assert not outside, f"delays outside [0, {cap}] s: {outside[:5]}"
    spread = f"1000 delays for attempt 4 ranged from {min(delays):.2f} to {max(delays):.2f} s, not over [0, {cap}] s"
    assert min(delays) < 0.2 * cap, spread
    assert max(delays) > 0.8 * cap, spread


register(
    "04.backoff",
    Case(
        "the cap doubles with each attempt",
        run=_caps_double,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="cap = INITIAL_DELAY_S * 2 ** (attempt - 1), with attempt 1 for the first failure",
    ),
    Case(
        "no delay exceeds MAX_DELAY_S",
        run=_cap_holds,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="sleeping without a cap makes attempt 30 wait for years: take min(MAX_DELAY_S, ...)",
    ),
    Case(
        "full jitter scales the cap by random()",
        run=_full_jitter,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="full jitter returns random() * cap, anywhere from 0 to the cap",
    ),
    Case(
        "delays spread over the whole window",
        run=_jitter_spreads,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="call random() once per delay, and use the random argument rather than the random module",
    ),
)


# 04.retry: call_with_retries(send, *, clock, sleep, random, now)


def _recovers_after_503s(answer: Callable[..., Any]) -> None:
    outcome = drive_retry(answer, ["503", "503", "ok"])
    _assert_succeeded(outcome)
    assert isinstance(outcome.value, dict) and outcome.value.get("choices"), (
        f"expected the completion that send() returned, got {outcome.value!r}"
    )
    assert outcome.requests == 3, f"expected 3 requests, got {outcome.requests}"
    assert _sleeps_close(outcome.sleeps, [0.5, 1.0]), (
        f"with random() = 1.0 the waits should be [0.5, 1.0] s, got {outcome.sleeps}"
    )


def _client_errors_not_retried(answer: Callable[..., Any]) -> None:
    for status in (400, 401, 404):
        outcome = drive_retry(answer, [HttpError(status), "ok"])
        _assert_raised_status(outcome, status)
        assert outcome.requests == 1, f"HTTP {status} was sent {outcome.requests} times; it must not be retried"
        assert outcome.sleeps == [], f"HTTP {status} must raise at once, but it slept {outcome.sleeps}"


def _stops_after_max_attempts(answer: Callable[..., Any]) -> None:
    outcome = drive_retry(answer, ["503"] * (MAX_ATTEMPTS + 2))
    _assert_raised_status(outcome, 503)
    assert outcome.requests == MAX_ATTEMPTS, f"expected {MAX_ATTEMPTS} attempts in all, got {outcome.requests}"
    assert len(outcome.sleeps) == MAX_ATTEMPTS - 1, (
        f"expected {MAX_ATTEMPTS - 1} waits, got {outcome.sleeps}; do not sleep after the last attempt"
    )


def _honours_retry_after_seconds(answer: Callable[..., Any]) -> None:
    outcome = drive_retry(answer, [RateLimited(retry_after=2), "ok"])
    _assert_succeeded(outcome)
    assert _sleeps_close(outcome.sleeps, [2.0]), f"Retry-After: 2 should wait 2.0 s, got {outcome.sleeps}"


def _honours_retry_after_zero(answer: Callable[..., Any]) -> None:
    outcome = drive_retry(answer, [RateLimited(retry_after=0), "ok"])
    _assert_succeeded(outcome)
    assert _sleeps_close(outcome.sleeps, [0.0]), f"Retry-After: 0 should wait 0 s, got {outcome.sleeps}"


def _honours_retry_after_date(answer: Callable[..., Any]) -> None:
    outcome = drive_retry(answer, [RateLimited(retry_after=3, retry_after_as_date=True), "ok"])
    _assert_succeeded(outcome)
    # The provider rounds the date up to the next whole second.
    message = f"a Retry-After date 3 to 4 s ahead should wait about that long, got {outcome.sleeps}"
    assert len(outcome.sleeps) == 1, message
    assert 2.5 <= outcome.sleeps[0] <= 4.5, message


def _gives_up_on_long_retry_after(answer: Callable[..., Any]) -> None:
    # Longer than the window but inside the deadline, so only the window check raises at once.
    retry_after_s = MAX_RETRY_AFTER_S + 5
    outcome = drive_retry(answer, [RateLimited(retry_after=retry_after_s), "ok"])
    _assert_raised_status(outcome, 429)
    message = f"Retry-After {retry_after_s:g} s is above MAX_RETRY_AFTER_S, so raise at once, but {_describe(outcome)}"
    assert outcome.sleeps == [], message
    assert outcome.requests == 1, message


def _respects_deadline(answer: Callable[..., Any]) -> None:
    outcome = drive_retry(answer, [RateLimited(retry_after=12)] * (MAX_ATTEMPTS + 1))
    _assert_raised_status(outcome, 429)
    message = (
        f"attempts at 0, 12 and 24 s fit the {DEADLINE_S:g} s deadline, but a wait until 36 s does not, "
        f"so expected 3 requests and waits [12.0, 12.0], but {_describe(outcome)}"
    )
    assert outcome.requests == 3, message
    assert _sleeps_close(outcome.sleeps, [12.0, 12.0]), message


def _retries_connection_reset(answer: Callable[..., Any]) -> None:
    outcome = drive_retry(answer, [ConnectionReset(), "ok"])
    _assert_succeeded(outcome)
    assert outcome.requests == 2, f"expected 2 requests, got {outcome.requests}"


class _RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _logs_each_retry(answer: Callable[..., Any]) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    handler = _RecordingHandler()
    logger.addHandler(handler)
    try:
        drive_retry(answer, ["503", RateLimited(retry_after=2), "ok"])
    finally:
        logger.removeHandler(handler)
    retries = [record for record in handler.records if record.msg == RETRY_LOG_MESSAGE]
    assert len(retries) == 2, (
        f"expected 2 retry records on the {LOGGER_NAME!r} logger, got {len(retries)} "
        f"(all messages: {[record.getMessage() for record in handler.records]})"
    )
    first, second = (record.args for record in retries)
    attempts = f"the attempt numbers were {first[0]!r} and {second[0]!r}, expected 1 and 2"
    assert first[0] == 1, attempts
    assert second[0] == 2, attempts
    reasons = f"the reasons were {first[2]!r} and {second[2]!r}, but each must name the status, as in 'HTTP 503'"
    assert "503" in str(first[2]), reasons
    assert "429" in str(second[2]), reasons
    assert _sleeps_close([first[-1], second[-1]], [0.5, 2.0]), (
        f"the logged delays were {first[-1]!r} and {second[-1]!r}, expected 0.5 and 2.0"
    )


register(
    "04.retry",
    Case(
        "recovers after two 503s",
        run=_recovers_after_503s,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="catch the error, sleep(backoff_delay(attempt, random)) and call send() again; return what it returns",
    ),
    Case(
        "400, 401 and 404 are raised at once",
        run=_client_errors_not_retried,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="raise the error unchanged when is_retryable(error) is false",
    ),
    Case(
        "stops after MAX_ATTEMPTS",
        run=_stops_after_max_attempts,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="MAX_ATTEMPTS counts the first attempt too; raise the last error when none are left",
    ),
    Case(
        "honours Retry-After in seconds",
        run=_honours_retry_after_seconds,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="read error.response.headers.get('retry-after') and wait that long instead of the backoff",
    ),
    Case(
        "honours Retry-After: 0",
        run=_honours_retry_after_zero,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="a Retry-After of 0 is a wait of 0 s, not a missing header: compare with None",
    ),
    Case(
        "honours an HTTP-date Retry-After",
        run=_honours_retry_after_date,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="ignoring an HTTP-date Retry-After retries too early: use parse_retry_after(value, now())",
    ),
    Case(
        "gives up when Retry-After exceeds MAX_RETRY_AFTER_S",
        run=_gives_up_on_long_retry_after,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="sleeping without a cap lets the server park your request for minutes: raise instead",
    ),
    Case(
        "respects the deadline",
        run=_respects_deadline,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="before sleeping, raise if clock() - start + delay > DEADLINE_S",
    ),
    Case(
        "retries a reset connection",
        run=_retries_connection_reset,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="a reset connection raises an httpx network error, which is_retryable accepts",
    ),
    Case(
        "logs each retry",
        run=_logs_each_retry,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="call logger.warning(RETRY_LOG_MESSAGE, attempt, MAX_ATTEMPTS, reason, delay) before each sleep",
    ),
)


# 04.stream: stream_with_retry(open_stream, emit, *, sleep, random)


def _stream_retries_503(answer: Callable[..., Any]) -> None:
    outcome = drive_stream(answer, ["503", "ok"])
    _assert_succeeded(outcome)
    assert outcome.requests == 2, f"expected 2 requests, got {outcome.requests}"
    assert isinstance(outcome.value, str) and outcome.value, f"expected the streamed text, got {outcome.value!r}"
    assert outcome.value == "".join(outcome.emitted), (
        f"the returned text {outcome.value!r} differs from what was emitted, {''.join(outcome.emitted)!r}"
    )


def _stream_retries_error_before_text(answer: Callable[..., Any]) -> None:
    outcome = drive_stream(answer, [ErrorInStream(after_chunks=0), "ok"])
    _assert_succeeded(outcome)
    assert outcome.requests == 2, f"expected 2 requests, got {outcome.requests}"


def _stream_not_retried_after_text(answer: Callable[..., Any]) -> None:
    outcome = drive_stream(answer, [TruncatedStream(after_chunks=AFTER_TEXT_CHUNKS), "ok"])
    assert isinstance(outcome.error, StreamInterrupted), (
        f"expected StreamInterrupted once text had reached the user, but {_describe(outcome)}"
    )
    assert outcome.requests == 1, f"the stream was sent {outcome.requests} times after text reached the user"
    delivered = "".join(outcome.emitted)
    assert delivered and outcome.error.delivered_text == delivered, (
        f"StreamInterrupted carries {outcome.error.delivered_text!r}, but the user saw {delivered!r}"
    )


def _stream_error_event_after_text(answer: Callable[..., Any]) -> None:
    outcome = drive_stream(answer, [ErrorInStream(after_chunks=AFTER_TEXT_CHUNKS), "ok"])
    assert isinstance(outcome.error, StreamInterrupted), (
        f"expected StreamInterrupted for an error event after text, but {_describe(outcome)}"
    )
    assert outcome.requests == 1, f"the stream was sent {outcome.requests} times after text reached the user"


def _stream_stops_after_max_attempts(answer: Callable[..., Any]) -> None:
    outcome = drive_stream(answer, ["503"] * (MAX_ATTEMPTS + 2))
    _assert_raised_status(outcome, 503)
    assert outcome.requests == MAX_ATTEMPTS, f"expected {MAX_ATTEMPTS} attempts in all, got {outcome.requests}"


register(
    "04.stream",
    Case(
        "retries a 503 before the stream starts",
        run=_stream_retries_503,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="call open_stream() inside the loop, so each attempt sends a new request",
    ),
    Case(
        "retries an error event that came before any text",
        run=_stream_retries_error_before_text,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="StreamError (from lab_support.sse) is retryable while nothing has been emitted",
    ),
    Case(
        "does not retry once text reached the user",
        run=_stream_not_retried_after_text,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="once emit() has shown text, raise StreamInterrupted(delivered_text, error) instead of starting over",
    ),
    Case(
        "an error event after text is not retried either",
        run=_stream_error_event_after_text,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="count the text you emitted, not the chunks you received",
    ),
    Case(
        "stops after MAX_ATTEMPTS",
        run=_stream_stops_after_max_attempts,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="MAX_ATTEMPTS counts the first attempt too",
    ),
)


# 04.charge: charge_card(http, amount, currency, *, sleep)


def _lost_response_charges_once(answer: Callable[..., Any]) -> None:
    outcome = drive_charge(answer, [ConnectionReset(after_processing=True), "ok"])
    _assert_succeeded(outcome)
    assert outcome.requests == 2, f"expected the charge to be retried once after the reset, got {outcome.requests} requests"
    assert outcome.charges == 1, (
        f"the card was charged {outcome.charges} times for one purchase: "
        "retrying a charge without an idempotency key repeats it"
    )


def _same_key_on_every_attempt(answer: Callable[..., Any]) -> None:
    outcome = drive_charge(answer, [ConnectionReset(after_processing=True)] * 2 + ["ok"])
    _assert_succeeded(outcome)
    assert outcome.charges == 1, f"3 attempts of one charge applied {outcome.charges} charges"


def _returns_the_charge(answer: Callable[..., Any]) -> None:
    outcome = drive_charge(answer, [])
    _assert_succeeded(outcome)
    value = outcome.value
    message = f"expected the charge object from the response JSON, got {value!r}"
    assert isinstance(value, dict), message
    assert value.get("object") == "charge", message
    assert value.get("amount") == 500, message


def _two_purchases_two_charges(answer: Callable[..., Any]) -> None:
    outcome = drive_charge(answer, [], calls=2)
    _assert_succeeded(outcome)
    assert outcome.charges == 2, (
        f"two calls of charge_card applied {outcome.charges} charge(s): each purchase needs a key of its own"
    )


register(
    "04.charge",
    Case(
        "a lost response does not charge twice",
        run=_lost_response_charges_once,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="send an Idempotency-Key header, so the provider recognises the retry and replays the first result",
    ),
    Case(
        "every attempt sends the same key",
        run=_same_key_on_every_attempt,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="create the key once per charge_card call, before the retries, not inside send()",
    ),
    Case(
        "returns the charge",
        run=_returns_the_charge,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="return response.json() from the successful attempt",
    ),
    Case(
        "two purchases are two charges",
        run=_two_purchases_two_charges,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="a key shared by every call makes the second purchase a replay of the first",
    ),
)


# 04.sdk_client: make_sdk_client(base_url, api_key)


def _sdk_retries_off(answer: Callable[..., Any]) -> None:
    provider = _require_provider()
    client = answer(provider.base_url, provider.key(CHECKS_KEY_NAME).get_secret_value())
    assert getattr(client, "max_retries", None) == 0, (
        f"max_retries is {getattr(client, 'max_retries', None)!r}; the SDK retries twice by default"
    )


def _sdk_timeouts(answer: Callable[..., Any]) -> None:
    provider = _require_provider()
    client = answer(provider.base_url, provider.key(CHECKS_KEY_NAME).get_secret_value())
    timeout = getattr(client, "timeout", None)
    expected = {"connect": CONNECT_TIMEOUT_S, "read": READ_TIMEOUT_S, "write": WRITE_TIMEOUT_S, "pool": POOL_TIMEOUT_S}
    actual = {name: getattr(timeout, name, None) for name in expected}
    assert actual == expected, f"the client's timeouts are {actual} (from {timeout!r}), expected {expected}"


def _sdk_one_request(answer: Callable[..., Any]) -> None:
    import openai

    with trial(["503", "503", "503", "ok"]) as run:
        client = answer(run.provider.base_url, run.api_key)
        try:
            client.chat.completions.create(
                model=run.provider.model,
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=CHAT_MAX_TOKENS,
            )
        except openai.InternalServerError:
            pass
        else:
            raise AssertionError(f"the call succeeded after {run.requests} requests, so the SDK retried the 503")
        requests = run.requests
    assert requests == 1, f"one call sent {requests} requests: the SDK retried on its own"


register(
    "04.sdk_client",
    Case(
        "the SDK does not retry",
        run=_sdk_retries_off,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="pass max_retries=0, so that your own retry function is the only retry layer",
    ),
    Case(
        "every timeout is set",
        run=_sdk_timeouts,
        timeout_s=QUICK_CASE_TIMEOUT_S,
        hint="pass timeout=httpx.Timeout(connect=..., read=..., write=..., pool=...) with the lab's constants",
    ),
    Case(
        "a 503 costs one request",
        run=_sdk_one_request,
        timeout_s=PROVIDER_CASE_TIMEOUT_S,
        hint="with the default max_retries=2 the SDK sends the request three times",
    ),
)
