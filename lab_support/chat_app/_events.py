"""The Server-Sent Events that ``POST /api/chat`` sends to the browser.

One event per piece of text, then exactly one final event::

    data: {"delta": "Hel"}

    data: {"delta": "lo"}

    event: done
    data: {"finish_reason": "stop"}

or, when the answer fails after the stream has started::

    event: error
    data: {"message": "The connection to the model provider broke ...", "code": "upstream_broken"}

A stream that closes with neither ``done`` nor ``error`` was cut off, and
the client must treat its text as incomplete.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from lab_support.chat_app._errors import DeadlineExceeded, UpstreamBroken, UpstreamTimeout
from lab_support.sse import ChatChunk, IncompleteStreamError, StreamError, StreamErrorEvent

DONE_EVENT = "done"
ERROR_EVENT = "error"

SSE_MEDIA_TYPE = "text/event-stream"
# no-cache: a browser or proxy must not store and replay an answer.
# X-Accel-Buffering: nginx, a common reverse proxy, otherwise buffers the
# response and delivers the tokens in bursts.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(data: dict[str, Any], event: str | None = None) -> str:
    """Format one SSE event: an optional ``event:`` line, one ``data:`` line of JSON, a blank line.

    JSON escapes newlines inside strings, so the text always fits on one
    ``data:`` line, whatever the model wrote.
    """
    if event is not None and (not event or "\n" in event or "\r" in event):
        raise ValueError(f"invalid event name {event!r}: use a non-empty name on one line")
    lines = [] if event is None else [f"event: {event}"]
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def describe_stream_error(error: StreamError) -> tuple[str, str]:
    """Return the error code and the browser's message, neither of which contains text from the upstream.

    An upstream's own error text can carry details meant for the server,
    so it is logged, never relayed.
    """
    if isinstance(error, DeadlineExceeded):
        return "deadline_exceeded", "The answer took longer than the route allows. Ask for a shorter answer or try again."
    if isinstance(error, UpstreamTimeout):
        return "upstream_timeout", "The model provider stopped sending the answer. Try again."
    if isinstance(error, StreamErrorEvent):
        return "upstream_error", "The model provider reported an error while writing the answer. Try again."
    if isinstance(error, IncompleteStreamError):
        return "incomplete", "The model provider ended the answer early, so the text above may be cut short. Try again."
    if isinstance(error, UpstreamBroken):
        return "upstream_broken", "The connection to the model provider broke during the answer. Try again."
    return "stream_error", "The answer failed before it was complete. Try again."


def error_event(error: StreamError) -> str:
    """Format the ``event: error`` that ends a stream which failed after its first byte."""
    code, message = describe_stream_error(error)
    return sse_event({"message": message, "code": code}, event=ERROR_EVENT)


async def relay_events(chunks: AsyncIterable[ChatChunk]) -> AsyncIterator[str]:
    """Turn upstream chunks into the route's events, each sent as soon as its chunk arrives.

    Chunks without text (the role, the finish reason) send nothing. The
    stream ends with ``done`` when the chunks end normally, or with one
    ``error`` event when they raise a :class:`~lab_support.sse.StreamError`.
    """
    finish_reason = None
    try:
        async for chunk in chunks:
            if chunk.finish_reason:
                finish_reason = chunk.finish_reason
            if chunk.text:
                yield sse_event({"delta": chunk.text})
    except StreamError as error:
        yield error_event(error)
        return
    yield sse_event({"finish_reason": finish_reason}, event=DONE_EVENT)
