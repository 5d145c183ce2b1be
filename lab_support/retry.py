"""Retries for idempotent upstream calls: classify a failure, decide, wait, try again.

    >>> policy = RetryPolicy(max_attempts=4, deadline_s=30.0)
    >>> response = call_with_retries(lambda: send_once(http, body), policy)

Each decision is a small function that a notebook or a test can call on its
own. :func:`parse_retry_after` reads the header (delay-seconds or an HTTP
date), :func:`classify` turns an exception into a :class:`Failure`,
:func:`backoff_delay` computes exponential backoff with full jitter and a cap,
and :func:`decide` combines them with the attempt count, the Retry-After
window and the deadline. :func:`call_with_retries` runs the loop and logs
every retry with the attempt, the reason and the delay. Its clock, sleep and
random source are parameters, so tests drive it with a :class:`FakeClock` and
never wait.

Only idempotent calls belong here. A call with a side effect (a charge, an
e-mail) needs an idempotency key first, because a retry after a lost
response repeats the side effect. A stream may be retried only until its
first text has reached the user: :func:`stream_with_retry`.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import random as random_module
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from lab_support.sse import StreamError, StreamErrorEvent

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_INITIAL_DELAY_S = 0.5
DEFAULT_MULTIPLIER = 2.0
DEFAULT_MAX_DELAY_S = 8.0
# A Retry-After longer than this means the upstream will not be ready soon
# enough for an interactive request, so the call fails at once instead.
DEFAULT_MAX_RETRY_AFTER_S = 20.0
DEFAULT_DEADLINE_S = 30.0

# 408 Request Timeout, 409 Conflict (a lock held by a concurrent request),
# 429 Too Many Requests; every 5xx is also retried.
RETRYABLE_4XX_STATUSES = frozenset({408, 409, 429})

# Beyond this exponent the delay is far above any cap, and 2.0 ** exponent
# would overflow a float for very large attempt numbers.
MAX_BACKOFF_EXPONENT = 64

RETRY_LOG_MESSAGE = "attempt %d of %d failed (%s); retrying in %.2f s"
GIVE_UP_LOG_MESSAGE = "giving up after attempt %d of %d: %s"

# Network failures worth a new attempt. Protocol errors on our side
# (LocalProtocolError, UnsupportedProtocol) are bugs, and repeat on every attempt.
_RETRYABLE_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    ConnectionError,
)


class DeadlineExceeded(TimeoutError):
    """An operation, retries and waits included, ran past its overall deadline."""

    def __init__(self, deadline_s: float, elapsed_s: float) -> None:
        self.deadline_s = deadline_s
        self.elapsed_s = elapsed_s
        super().__init__(
            f"deadline of {deadline_s:g} s exceeded after {elapsed_s:.2f} s; "
            "raise the deadline or ask for less work (a shorter reply, fewer tokens)"
        )


class StreamInterrupted(Exception):
    """A stream failed after part of the reply had reached the user, so it was not retried.

    ``delivered_text`` is what the user has already seen. The error that ended
    the stream is the ``__cause__``.
    """

    def __init__(self, delivered_text: str, error: BaseException) -> None:
        self.delivered_text = delivered_text
        super().__init__(
            f"the stream failed after {len(delivered_text)} characters reached the user ({describe_error(error)}); "
            "show the reply as incomplete and let the user regenerate it"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """The numbers that bound a retry loop; times in seconds.

    ``max_attempts`` counts every attempt, the first included. The backoff
    before retry ``n`` is at most ``min(max_delay_s, initial_delay_s *
    multiplier ** (n - 1))``, and with ``jitter`` a uniformly random part of
    that (full jitter). A Retry-After up to ``max_retry_after_s`` replaces the
    backoff, and a longer one stops the retries. ``deadline_s``, counted
    from the start of the first attempt, stops the retries when a wait would
    end after it; None means no deadline.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_delay_s: float = DEFAULT_INITIAL_DELAY_S
    multiplier: float = DEFAULT_MULTIPLIER
    max_delay_s: float = DEFAULT_MAX_DELAY_S
    jitter: bool = True
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    deadline_s: float | None = DEFAULT_DEADLINE_S

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"invalid max_attempts {self.max_attempts!r}: use a whole number >= 1 (1 means no retries)")
        for name in ("initial_delay_s", "max_delay_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"invalid {name} {value!r}: use a finite number of seconds >= 0")
        if not (isinstance(self.multiplier, (int, float)) and math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"invalid multiplier {self.multiplier!r}: use a finite number >= 1 (2 doubles each delay)")
        if self.deadline_s is not None and not (
            isinstance(self.deadline_s, (int, float)) and math.isfinite(self.deadline_s) and self.deadline_s > 0
        ):
            raise ValueError(f"invalid deadline_s {self.deadline_s!r}: use seconds > 0, or None for no deadline")


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True)
class Failure:
    """The facts about one failed attempt that the retry policy needs.

    ``reason`` is a short label for logs, such as ``HTTP 503`` or
    ``ConnectError``. ``retry_after_s`` is the server's Retry-After in seconds
    from now, or None when it sent none.
    """

    reason: str
    retryable: bool
    status: int | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Decision:
    """Whether to retry, after how many seconds, and why."""

    retry: bool
    delay_s: float
    reason: str


@dataclass(frozen=True)
class RetryEvent:
    """One retry of :func:`call_with_retries`, as passed to its ``on_retry`` callback."""

    attempt: int
    failure: Failure
    delay_s: float
    elapsed_s: float


# Reading the server's response.


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Return the wait that a Retry-After value asks for, in seconds from ``now``.

    ``value`` is delay-seconds (``"2"``; fractions such as ``"1.5"`` are
    accepted, as some providers send them) or an HTTP date
    (``"Wed, 21 Oct 2026 07:28:00 GMT"``), which is compared with ``now`` in
    seconds since the epoch (``time.time()``). A date in the past means 0.
    Missing, negative, infinite or unparsable values return None, so the
    caller falls back to its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None

    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None

    try:
        retry_at = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if retry_at.tzinfo is None:
        # HTTP dates are always GMT, but "-0000" parses to a datetime without a zone.
        retry_at = retry_at.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, retry_at.timestamp() - now)


def retry_after_from_headers(headers: Mapping[str, str] | None, *, now: float) -> float | None:
    """Return the wait that response headers ask for, in seconds: ``retry-after-ms`` first, then ``Retry-After``.

    ``retry-after-ms`` is not standard, but OpenAI and Azure OpenAI send it
    with their 429 responses.
    """
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            value = float(milliseconds)
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value / 1000
    return parse_retry_after(headers.get("retry-after"), now=now)


def is_retryable_status(status: int) -> bool:
    """Return whether a request that got HTTP ``status`` may succeed if sent again unchanged."""
    return status in RETRYABLE_4XX_STATUSES or 500 <= status <= 599


def describe_error(error: BaseException) -> str:
    """Return a short label for an error, such as ``HTTP 503`` or ``ConnectError``."""
    status = _status_of(error)
    if status is not None:
        return f"HTTP {status}"
    return type(error).__name__


def classify(error: BaseException, *, now: float | None = None) -> Failure:
    """Turn an exception from one attempt into a :class:`Failure`.

    HTTP errors come from ``httpx`` (``HTTPStatusError``) or the ``openai``
    package (``APIStatusError``). Network errors, timeouts of one attempt and
    the ``openai`` package's ``APIConnectionError`` are retryable. A stream
    that ended early (:class:`lab_support.sse.StreamError`) is retryable
    unless its error event marks the request as invalid. Anything else, such
    as a bug in the caller's code or :class:`DeadlineExceeded`, is not.
    ``now`` (seconds since the epoch) resolves an HTTP-date Retry-After.
    """
    now = time.time() if now is None else now
    reason = describe_error(error)

    status = _status_of(error)
    if status is not None:
        retry_after_s = retry_after_from_headers(_headers_of(error), now=now)
        return Failure(reason, is_retryable_status(status), status=status, retry_after_s=retry_after_s)

    if isinstance(error, DeadlineExceeded):
        return Failure(reason, retryable=False)
    if isinstance(error, _RETRYABLE_TRANSPORT_ERRORS) or _is_openai_connection_error(error):
        return Failure(reason, retryable=True)
    if isinstance(error, StreamErrorEvent):
        error_type = error.error.get("type") if isinstance(error.error, dict) else None
        return Failure(reason, retryable=error_type != "invalid_request_error")
    if isinstance(error, StreamError):
        return Failure(reason, retryable=True)
    return Failure(reason, retryable=False)


# Deciding and waiting.


def backoff_delay(attempt: int, policy: RetryPolicy = DEFAULT_POLICY, *, random: Callable[[], float] = random_module.random) -> float:
    """Return the backoff in seconds after failed attempt number ``attempt`` (1 for the first).

    The cap grows exponentially and stops at ``policy.max_delay_s``. With
    ``policy.jitter`` the delay is ``random() * cap`` (full jitter), so
    clients that failed together spread their retries over the whole window.
    ``random`` returns a float in [0, 1), as ``random.random`` does.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"invalid attempt {attempt!r}: use the number of the attempt that failed, starting at 1")
    exponent = min(attempt - 1, MAX_BACKOFF_EXPONENT)
    cap = min(policy.max_delay_s, policy.initial_delay_s * policy.multiplier**exponent)
    if not policy.jitter:
        return cap
    return random() * cap


def decide(
    failure: Failure,
    *,
    attempt: int,
    elapsed_s: float,
    policy: RetryPolicy = DEFAULT_POLICY,
    random: Callable[[], float] = random_module.random,
) -> Decision:
    """Decide whether to retry after failed attempt number ``attempt``, ``elapsed_s`` into the call.

    The checks run in this order: the failure must be retryable, attempts
    must remain, a Retry-After must fit the policy's window, and the wait
    must end before the deadline. The wait is the Retry-After when the
    server sent one, else :func:`backoff_delay`.
    """
    if not failure.retryable:
        return Decision(False, 0.0, f"{failure.reason} is not retryable")
    if attempt >= policy.max_attempts:
        return Decision(False, 0.0, f"{failure.reason} on the last allowed attempt")

    if failure.retry_after_s is not None:
        if failure.retry_after_s > policy.max_retry_after_s:
            return Decision(
                False,
                0.0,
                f"{failure.reason} with Retry-After {failure.retry_after_s:g} s, "
                f"longer than the {policy.max_retry_after_s:g} s maximum",
            )
        delay_s = failure.retry_after_s
    else:
        delay_s = backoff_delay(attempt, policy, random=random)

    if policy.deadline_s is not None and elapsed_s + delay_s > policy.deadline_s:
        return Decision(
            False,
            delay_s,
            f"{failure.reason}, and waiting {delay_s:.2f} s more after {elapsed_s:.2f} s "
            f"would pass the {policy.deadline_s:g} s deadline",
        )
    return Decision(True, delay_s, failure.reason)


def call_with_retries(
    send: Callable[[], T],
    policy: RetryPolicy = DEFAULT_POLICY,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
    random: Callable[[], float] = random_module.random,
    now: Callable[[], float] = time.time,
    on_retry: Callable[[RetryEvent], Any] | None = None,
) -> T:
    """Call ``send()`` until it returns, retrying the failures that :func:`decide` allows.

    ``send`` makes one attempt and raises on failure; with ``httpx``, call
    ``response.raise_for_status()`` inside it. When the policy stops, the
    last error is raised unchanged. Each retry is logged at WARNING with the
    attempt, the reason and the delay, and passed to ``on_retry``.
    ``clock`` (monotonic seconds) measures the deadline, ``now`` (seconds
    since the epoch) resolves HTTP-date Retry-After values, and ``sleep``
    waits; pass a :class:`FakeClock`'s methods to simulate time.

    NOTE: the deadline is checked before each wait, so an attempt that starts
    in time can still run past it by up to the client's own timeout. Give
    the client a timeout shorter than the deadline.
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return send()
        except Exception as error:
            failure = classify(error, now=now())
            elapsed_s = clock() - start
            decision = decide(failure, attempt=attempt, elapsed_s=elapsed_s, policy=policy, random=random)
            if not decision.retry:
                _log_give_up(attempt, policy, failure, decision)
                raise
            logger.warning(RETRY_LOG_MESSAGE, attempt, policy.max_attempts, failure.reason, decision.delay_s)
            if on_retry is not None:
                on_retry(RetryEvent(attempt, failure, decision.delay_s, elapsed_s))
        sleep(decision.delay_s)


# Streams and deadlines.


def stream_with_retry(
    open_stream: Callable[[], Iterable[str]],
    emit: Callable[[str], Any],
    policy: RetryPolicy = DEFAULT_POLICY,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
    random: Callable[[], float] = random_module.random,
    now: Callable[[], float] = time.time,
) -> str:
    """Stream text pieces to ``emit`` and return the whole text, retrying only before the first piece.

    ``open_stream()`` sends the request and returns the text pieces. A
    failure before any text was emitted is retried as in
    :func:`call_with_retries`: the user has seen nothing, so a fresh reply
    is invisible. After that a retry would show a second, different reply
    after the start of the first, so the failure raises
    :class:`StreamInterrupted` with the text already emitted. Empty pieces
    (a role-only chunk) are not emitted and do not count.
    """
    delivered: list[str] = []

    def attempt_stream() -> str:
        pieces = iter(open_stream())
        try:
            while True:
                try:
                    piece = next(pieces)
                except StopIteration:
                    return "".join(delivered)
                except Exception as error:
                    if delivered:
                        raise StreamInterrupted("".join(delivered), error) from error
                    raise
                if piece:
                    _emit_once(emit, piece)
                    delivered.append(piece)
        finally:
            _close(pieces)

    try:
        return call_with_retries(attempt_stream, policy, clock=clock, sleep=sleep, random=random, now=now)
    except _EmitFailed as failed:
        raise failed.error from None


def iter_with_deadline(
    pieces: Iterable[T], deadline_s: float, *, clock: Callable[[], float] = time.monotonic
) -> Iterator[T]:
    """Yield ``pieces`` until ``deadline_s`` seconds have passed since the first ``next()``, then raise.

    A per-read timeout fires only when one gap between pieces is too long,
    so a stream that drips a token every second never trips it. This bounds
    the total instead. The check runs when a piece arrives, so a stalled
    stream still needs the client's read timeout: the total wait is at most
    the deadline plus one read timeout. The source is closed when the
    deadline passes, which stops the download (and a provider's billing).
    """
    if not (isinstance(deadline_s, (int, float)) and math.isfinite(deadline_s) and deadline_s > 0):
        raise ValueError(f"invalid deadline_s {deadline_s!r}: use seconds > 0")
    start = clock()
    source = iter(pieces)
    try:
        for piece in source:
            elapsed_s = clock() - start
            if elapsed_s > deadline_s:
                raise DeadlineExceeded(deadline_s, elapsed_s)
            yield piece
    finally:
        _close(source)


class FakeClock:
    """A clock for tests and simulations: ``sleep()`` moves time forward at once and records the wait.

    ``monotonic()`` starts at ``start``. ``time()`` is the wall clock, seconds
    since the epoch, and starts at ``wall_start`` (the real time when None),
    so HTTP dates from a real server still resolve to sensible waits.
    """

    def __init__(self, start: float = 0.0, *, wall_start: float | None = None) -> None:
        self._now = float(start)
        self._wall_offset = (time.time() if wall_start is None else wall_start) - self._now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def sleep(self, seconds: float) -> None:
        """Record ``seconds`` and move both clocks forward by it."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"invalid sleep of {seconds!r} s: use a finite number of seconds >= 0")
        self.sleeps.append(float(seconds))
        self._now += seconds

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` without recording a sleep, as a slow call would."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"invalid advance of {seconds!r} s: use a finite number of seconds >= 0")
        self._now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._now:g}, sleeps={self.sleeps})"


# Helpers.


def _status_of(error: BaseException) -> int | None:
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code
    status = getattr(error, "status_code", None)
    if _is_openai_status_error(error) and isinstance(status, int):
        return status
    return None


def _headers_of(error: BaseException) -> Mapping[str, str] | None:
    response = getattr(error, "response", None)
    return getattr(response, "headers", None)


def _is_openai_status_error(error: BaseException) -> bool:
    openai = _openai_module()
    return openai is not None and isinstance(error, openai.APIStatusError)


def _is_openai_connection_error(error: BaseException) -> bool:
    # APITimeoutError is a subclass, so one attempt's timeout counts too.
    openai = _openai_module()
    return openai is not None and isinstance(error, openai.APIConnectionError)


def _openai_module():
    # Imported on first use, so that plain httpx users do not pay for the openai import.
    try:
        import openai
    except ImportError:
        return None
    return openai


class _EmitFailed(Exception):
    """Carries an error raised by ``emit`` past the retry loop, which must not retry it.

    A user who closed the connection makes ``emit`` raise BrokenPipeError, a
    ConnectionError that would otherwise count as a retryable network failure.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _emit_once(emit: Callable[[str], Any], piece: str) -> None:
    try:
        emit(piece)
    except Exception as error:
        raise _EmitFailed(error) from error


def _close(iterator: object) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def _log_give_up(attempt: int, policy: RetryPolicy, failure: Failure, decision: Decision) -> None:
    # A first-attempt client error is the caller's to report, so it is logged
    # at DEBUG; giving up on a retryable failure is an operational event.
    level = logging.WARNING if failure.retryable or attempt > 1 else logging.DEBUG
    logger.log(level, GIVE_UP_LOG_MESSAGE, attempt, policy.max_attempts, decision.reason)
