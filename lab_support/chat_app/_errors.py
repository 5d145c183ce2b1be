"""Ways an answer from the upstream can fail after it started, on top of those in ``lab_support.sse``."""

from __future__ import annotations

from lab_support.sse import StreamError


class DeadlineExceeded(StreamError):
    """The whole answer took longer than the route's total deadline."""

    def __init__(self, deadline_s: float):
        self.deadline_s = deadline_s
        super().__init__(f"the answer did not finish within the {deadline_s:g} s deadline")


class UpstreamTimeout(StreamError):
    """The upstream sent nothing for longer than the read timeout."""

    def __init__(self, read_timeout_s: float | None):
        self.read_timeout_s = read_timeout_s
        waited = f"{read_timeout_s:g} s" if read_timeout_s is not None else "the read timeout"
        super().__init__(f"the upstream sent nothing for {waited}")


class UpstreamBroken(StreamError):
    """The upstream connection failed, or sent something that is not a chat stream, in the middle of an answer."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"the upstream stream broke: {reason}")
