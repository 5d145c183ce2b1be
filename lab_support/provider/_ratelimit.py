"""Per-key rate limits on requests and tokens per minute, with the headers hosted APIs send.

Each limit is a token bucket of one minute's allowance that refills
continuously at ``limit / 60`` per second. A request takes one unit from
the requests bucket and its estimated token count from the tokens bucket.
It is rejected, taking nothing, when either bucket is short, with a
``Retry-After`` of the whole seconds until both can cover it. A request
that needs more tokens than the whole bucket gets 429 without
``Retry-After``, because waiting cannot help.

Every response to a key with limits carries::

    x-ratelimit-limit-requests      the limit per minute
    x-ratelimit-remaining-requests  what is left now, rounded down
    x-ratelimit-reset-requests      time until the bucket is full again, as in "1s", "6m0s", "20ms"

and the same three for ``-tokens``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_REQUESTS_PER_MINUTE = 60
DEFAULT_TOKENS_PER_MINUTE = 40_000
WINDOW_S = 60.0


@dataclass(frozen=True)
class RateLimits:
    """Requests and tokens per minute for one key; None turns that limit off."""

    requests_per_minute: int | None = DEFAULT_REQUESTS_PER_MINUTE
    tokens_per_minute: int | None = DEFAULT_TOKENS_PER_MINUTE

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"invalid {name} {value!r}: use a whole number >= 1, or None for no limit")


UNLIMITED = RateLimits(requests_per_minute=None, tokens_per_minute=None)


class TokenBucket:
    """A bucket of ``capacity`` units that refills at ``capacity / WINDOW_S`` units per second."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.updated = now

    @property
    def refill_per_s(self) -> float:
        return self.capacity / WINDOW_S

    def refill(self, now: float) -> None:
        """Add what has accrued since the last update, up to the capacity."""
        elapsed = max(0.0, now - self.updated)
        self.level = min(float(self.capacity), self.level + elapsed * self.refill_per_s)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        """Return the seconds until the bucket contains ``amount``; call ``refill`` first."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.refill_per_s

    def seconds_until_full(self) -> float:
        """Return the seconds until the bucket is full; call ``refill`` first."""
        return (self.capacity - self.level) / self.refill_per_s

    def adjust(self, amount: float) -> None:
        """Take ``amount`` (or give it back when negative), never above the capacity."""
        self.level = min(float(self.capacity), self.level - amount)


@dataclass(frozen=True)
class Admission:
    """The rate limiter's decision on one request, with the headers for its response."""

    allowed: bool
    headers: list[tuple[str, str]]
    reserved_tokens: int = 0
    retry_after_s: int | None = None
    limit_type: str | None = None
    message: str = ""


class RateLimiter:
    """The buckets of every key, read against an injectable clock (seconds, monotonic)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def admit(self, key_name: str, limits: RateLimits, estimated_tokens: int) -> Admission:
        """Take one request and ``estimated_tokens`` tokens from the key's buckets, or reject it."""
        with self._lock:
            now = self._clock()
            requests = self._bucket(key_name, "requests", limits.requests_per_minute, now)
            tokens = self._bucket(key_name, "tokens", limits.tokens_per_minute, now)

            if tokens is not None and estimated_tokens > tokens.capacity:
                return Admission(
                    allowed=False,
                    headers=self._headers(requests, tokens),
                    limit_type="tokens",
                    message=(
                        f"Request too large for key {key_name!r}: it may use {estimated_tokens} tokens "
                        f"(prompt estimate plus max_tokens) but the limit is {tokens.capacity} tokens per minute. "
                        "Lower max_tokens or shorten the prompt."
                    ),
                )

            waits = {}
            if requests is not None:
                waits["requests"] = requests.seconds_until(1)
            if tokens is not None:
                waits["tokens"] = tokens.seconds_until(estimated_tokens)
            blocking = {kind: wait for kind, wait in waits.items() if wait > 0}
            if blocking:
                limit_type = max(blocking, key=blocking.get)
                retry_after_s = math.ceil(max(blocking.values()))
                limit = limits.requests_per_minute if limit_type == "requests" else limits.tokens_per_minute
                return Admission(
                    allowed=False,
                    headers=self._headers(requests, tokens),
                    retry_after_s=retry_after_s,
                    limit_type=limit_type,
                    message=(
                        f"Rate limit reached for {limit_type} on key {key_name!r}: limit {limit} per minute. "
                        f"Retry after {retry_after_s} s, as the Retry-After header says."
                    ),
                )

            if requests is not None:
                requests.adjust(1)
            if tokens is not None:
                tokens.adjust(estimated_tokens)
            return Admission(allowed=True, headers=self._headers(requests, tokens), reserved_tokens=estimated_tokens)

    def settle(self, key_name: str, reserved_tokens: int, used_tokens: int) -> None:
        """Replace a request's reserved token estimate by the tokens it really used."""
        with self._lock:
            bucket = self._buckets.get((key_name, "tokens"))
            if bucket is None:
                return
            bucket.refill(self._clock())
            bucket.adjust(used_tokens - reserved_tokens)

    def _bucket(self, key_name: str, kind: str, limit: int | None, now: float) -> TokenBucket | None:
        if limit is None:
            self._buckets.pop((key_name, kind), None)
            return None
        bucket = self._buckets.get((key_name, kind))
        if bucket is None or bucket.capacity != limit:
            bucket = TokenBucket(limit, now)
            self._buckets[(key_name, kind)] = bucket
        bucket.refill(now)
        return bucket

    @staticmethod
    def _headers(requests: TokenBucket | None, tokens: TokenBucket | None) -> list[tuple[str, str]]:
        headers = []
        for kind, bucket in (("requests", requests), ("tokens", tokens)):
            if bucket is None:
                continue
            headers += [
                (f"x-ratelimit-limit-{kind}", str(bucket.capacity)),
                (f"x-ratelimit-remaining-{kind}", str(max(0, math.floor(bucket.level)))),
                (f"x-ratelimit-reset-{kind}", format_duration(bucket.seconds_until_full())),
            ]
        return headers


def format_duration(seconds: float) -> str:
    """Format a duration as hosted APIs do in reset headers: ``"20ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"
