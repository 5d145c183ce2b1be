"""Latency of a streamed answer: time to first token (TTFT), decode speed, total time.

    >>> timer = StreamTimer()            # starts the clock when the request is sent
    >>> for chunk in stream:
    ...     timer.record(chunk.text)
    >>> timer.summary()
    StreamSummary(ttft_s=0.12, tokens=64, decode_tokens_per_s=71.3, total_s=1.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StreamSummary:
    """Latency numbers of one streamed answer; times in seconds."""

    ttft_s: float
    tokens: int
    decode_tokens_per_s: float
    total_s: float

    def __str__(self) -> str:
        return (
            f"time to first token {self.ttft_s * 1000:.0f} ms, {self.tokens} tokens, "
            f"decode {self.decode_tokens_per_s:.1f} tokens/s, total {self.total_s:.2f} s"
        )


def summarize(start: float, events: Sequence[tuple[float, str]], end: float | None = None) -> StreamSummary:
    """Compute TTFT, decode speed and total time from ``(timestamp, token)`` events.

    TTFT counts from ``start`` (the request being sent) to the first event with
    non-empty text, so role-only chunks and response headers do not count.
    Decode speed is the tokens after the first divided by the time after the
    first, since the first token's time is prompt processing, not decoding.
    """
    content = [(stamp, token) for stamp, token in events if token]
    if not content:
        raise ValueError("no token with text was recorded, so there is no time to first token")

    first_stamp = content[0][0]
    last_stamp = content[-1][0]
    end = last_stamp if end is None else end
    decode_time = last_stamp - first_stamp
    rate = (len(content) - 1) / decode_time if decode_time > 0 else 0.0
    return StreamSummary(
        ttft_s=first_stamp - start, tokens=len(content), decode_tokens_per_s=rate, total_s=end - start
    )


@dataclass
class StreamTimer:
    """Records when each token of a stream arrives, from the moment it is created."""

    clock: Callable[[], float] = time.perf_counter
    start: float = field(default=0.0)
    events: list[tuple[float, str]] = field(default_factory=list)
    end: float | None = None

    def __post_init__(self) -> None:
        self.start = self.clock()

    def record(self, token: str) -> None:
        self.events.append((self.clock(), token))

    def finish(self) -> None:
        self.end = self.clock()

    def summary(self) -> StreamSummary:
        return summarize(self.start, self.events, self.end)
