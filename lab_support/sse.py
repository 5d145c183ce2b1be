"""Read an OpenAI-style chat stream (Server-Sent Events) and know how it ended.

Event framing comes from ``httpx-sse``, which handles events split across
network reads, UTF-8 characters split across reads (through httpx's
incremental decoder), CRLF line endings split between reads, comment lines
such as ``: ping`` and multi-line ``data:`` fields. This module adds the
OpenAI layer on top:

- ``data: [DONE]`` ends the stream successfully;
- ``data: {"error": ...}`` inside a 200 stream raises :class:`StreamErrorEvent`;
- a stream that ends without ``[DONE]`` raises :class:`IncompleteStreamError`,
  because the answer may be cut short and must not be shown as complete.

    >>> with httpx.Client() as client, client.stream("POST", url, json=body) as response:
    ...     for chunk in iter_chat_chunks(response):
    ...         print(chunk.text, end="")
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

DONE = "[DONE]"


class StreamError(Exception):
    """A chat stream did not end with a complete answer."""


class StreamErrorEvent(StreamError):
    """The server sent an error object inside the stream, after the 200 status."""

    def __init__(self, error: dict[str, Any]):
        self.error = error
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(f"the stream carried an error event: {message or error!r}")


class IncompleteStreamError(StreamError):
    """The stream closed without ``data: [DONE]``; the text so far may be cut short."""

    def __init__(self, text_so_far: str):
        self.text_so_far = text_so_far
        super().__init__(
            f"the stream ended without [DONE] after {len(text_so_far)} characters; treat the answer as incomplete"
        )


@dataclass
class ChatChunk:
    """One parsed ``chat.completion.chunk``: its text, finish reason and usage, if any."""

    text: str
    finish_reason: str | None
    usage: dict[str, int] | None
    raw: dict[str, Any] = field(repr=False)


def parse_chunk(event: ServerSentEvent) -> ChatChunk | None:
    """Turn one SSE event into a :class:`ChatChunk`; return None for ``[DONE]``.

    Raises :class:`StreamErrorEvent` for an error object and ``ValueError``
    for data that is not JSON.
    """
    if event.data.strip() == DONE:
        return None
    try:
        payload = json.loads(event.data)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON in stream event {event.data[:200]!r}: {error}") from error
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object in stream event, got {event.data[:200]!r}")
    if "error" in payload:
        raise StreamErrorEvent(payload["error"])

    text = ""
    finish_reason = None
    choices = payload.get("choices") or []
    if choices:
        delta = choices[0].get("delta") or {}
        text = delta.get("content") or ""
        finish_reason = choices[0].get("finish_reason")
    return ChatChunk(text=text, finish_reason=finish_reason, usage=payload.get("usage"), raw=payload)


def _check_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        body = response.read() if not response.is_stream_consumed else b""
        raise httpx.HTTPStatusError(
            f"HTTP {response.status_code} from {response.request.url}: {body[:500].decode(errors='replace')}",
            request=response.request,
            response=response,
        )


def iter_chat_chunks(response: httpx.Response) -> Iterator[ChatChunk]:
    """Yield the chunks of a streaming chat completion until ``[DONE]``."""
    _check_status(response)
    text_so_far: list[str] = []
    for event in EventSource(response).iter_sse():
        chunk = parse_chunk(event)
        if chunk is None:
            return
        text_so_far.append(chunk.text)
        yield chunk
    raise IncompleteStreamError("".join(text_so_far))


async def aiter_chat_chunks(response: httpx.Response) -> AsyncIterator[ChatChunk]:
    """Yield the chunks of a streaming chat completion until ``[DONE]`` (async)."""
    if response.status_code >= 400:
        await response.aread()
        _check_status(response)
    text_so_far: list[str] = []
    async for event in EventSource(response).aiter_sse():
        chunk = parse_chunk(event)
        if chunk is None:
            return
        text_so_far.append(chunk.text)
        yield chunk
    raise IncompleteStreamError("".join(text_so_far))
