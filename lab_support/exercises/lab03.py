"""Visible cases of lab 03: a streaming chat route, built step by step.

Exercises, each answered by a function with the same name and contract as
in ``lab_support.chat_app`` (the finished route):

- ``03.validate``: ``async read_chat_request(request) -> ChatRequest``;
- ``03.upstream_errors``: ``error_for_upstream(failure) -> HTTPException``;
- ``03.sse_event``: ``sse_event(data, event=None) -> str``;
- ``03.relay``: ``async relay_events(chunks)``, an async generator of event strings;
- ``03.deadline``: ``async with_deadline(items, seconds)``, an async generator;
- ``03.checkpoint``: ``CHECKPOINT``, a dict with two written answers.

The helpers below also serve the notebook's hidden tests: they build
Starlette requests and async streams without a server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
from fastapi import HTTPException
from starlette.requests import Request

from lab_support.chat_app import MAX_BODY_BYTES, ChatRequest, DeadlineExceeded
from lab_support.grading import Case, register
from lab_support.sse import ChatChunk, IncompleteStreamError

# Cases that run an event loop or wait on a deadline get more than the usual
# time, because a busy 2-core machine may start threads late.
ASYNC_CASE_TIMEOUT_S = 15.0
UPSTREAM_URL = "http://127.0.0.1:8080/v1/chat/completions"
VALID_BODY = {"messages": [{"role": "user", "content": "Hi"}]}


# Building blocks for the cases.


def answer_or_reference(answer: Callable, reference: Callable) -> Callable:
    """Return ``answer`` once it is written, else ``reference`` with a note, so the demo cells run either way.

    An unwritten answer is the learner copy's stub, which raises NotImplementedError.
    """
    if "NotImplementedError" not in answer.__code__.co_names:
        return answer
    print(f"Note: using the reference {reference.__name__} until you write yours.")
    return reference


def make_request(
    body: bytes | Iterable[bytes], *, content_length: bool = True, content_type: str = "application/json"
) -> Request:
    """Return a Starlette request for ``POST /api/chat`` whose body arrives in the given pieces."""
    pieces = iter([body] if isinstance(body, bytes) else body)
    headers = [(b"content-type", content_type.encode())]
    if content_length and isinstance(body, bytes):
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/chat",
        "raw_path": b"/api/chat",
        "query_string": b"",
        "headers": headers,
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    pending = next(pieces, None)

    async def receive() -> dict:
        nonlocal pending
        # Let other tasks run between pieces, as a network read would, so a time limit can stop a reader.
        await asyncio.sleep(0)
        if pending is None:
            return {"type": "http.disconnect"}
        piece, pending = pending, next(pieces, None)
        return {"type": "http.request", "body": piece, "more_body": pending is not None}

    return Request(scope, receive)


class CountedBody:
    """Body pieces of ``piece_size`` bytes, up to ``total_bytes``, that count how many bytes were read.

    A client can send a body of any size, so a reader must stop at its limit
    instead of reading the whole body first.
    """

    def __init__(self, total_bytes: int = 64 * MAX_BODY_BYTES, piece_size: int = 4096) -> None:
        self.total_bytes = total_bytes
        self.piece_size = piece_size
        self.bytes_read = 0

    def __iter__(self):
        while self.bytes_read < self.total_bytes:
            self.bytes_read += self.piece_size
            yield b" " * self.piece_size


def http_error_from(call: Callable[[], Any]) -> HTTPException:
    """Return the HTTPException that ``call()`` raises; fail when it returns or raises something else."""
    try:
        result = call()
    except HTTPException as error:
        return error
    raise AssertionError(f"expected an HTTPException, but it returned {result!r}")


def run_async(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``function(*args)`` on a new event loop in a worker thread and return its result.

    A notebook cell already runs inside the kernel's event loop, where
    ``asyncio.run`` is not allowed, so the hidden tests use this instead.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, function(*args)).result()


def read_with(answer: Callable, request: Request) -> Any:
    """Return what ``answer(request)`` (a read_chat_request) returns, or raise what it raises."""
    return run_async(answer, request)


def chunk(text: str = "", finish_reason: str | None = None) -> ChatChunk:
    """Return a chunk as ``lab_support.sse.aiter_chat_chunks`` yields it."""
    return ChatChunk(text=text, finish_reason=finish_reason, usage=None, raw={})


async def stream_of(items: Iterable[Any], *, gap_s: float = 0.0, failure: BaseException | None = None) -> AsyncIterator[Any]:
    """Yield ``items`` with ``gap_s`` seconds before each, then raise ``failure`` if given."""
    for item in items:
        if gap_s:
            await asyncio.sleep(gap_s)
        yield item
    if failure is not None:
        raise failure


async def collect(result: Any) -> list[Any]:
    """Collect an async generator's items. The learner copy's stub is a coroutine, which is awaited so that it raises."""
    if inspect.iscoroutine(result):
        result = await result
    return [item async for item in result]


def parse_events(text: str) -> list[tuple[str, Any]]:
    """Split event-stream text into ``(event, data)`` pairs, with the data parsed as JSON.

    Fails when an event is not followed by a blank line, or its data is not
    exactly one ``data:`` line of JSON.
    """
    assert text.endswith("\n\n"), f"an event must end with a blank line ('\\n\\n'); got {text[-20:]!r}"
    events = []
    for block in text[:-2].split("\n\n"):
        event = "message"
        data_lines = []
        for line in block.split("\n"):
            field, colon, value = line.partition(":")
            assert colon, f"every line of an event must be 'field: value', got {line!r}"
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data_lines.append(value)
        assert len(data_lines) == 1, f"expected one data: line per event, got {len(data_lines)} in {block!r}"
        events.append((event, json.loads(data_lines[0])))
    return events


def relay(answer: Callable, items: Iterable[Any], **stream_options: Any) -> list[tuple[str, Any]]:
    """Run ``answer`` (a relay_events) over ``items`` and return the parsed events."""
    texts = run_async(collect, answer(stream_of(items, **stream_options)))
    for text in texts:
        assert isinstance(text, str), f"relay_events must yield strings (SSE text), got {type(text).__name__}"
    return [event for text in texts for event in parse_events(text)]


def run_deadline(
    answer: Callable, items: AsyncIterator[Any], seconds: float, *, limit_s: float = 10.0
) -> tuple[list[Any], BaseException | None, float]:
    """Consume ``answer(items, seconds)`` and return the items, the DeadlineExceeded raised (or None) and the time taken.

    Fails when the answer is still running after ``limit_s`` seconds.
    """

    async def consume() -> tuple[list[Any], BaseException | None, float]:
        received: list[Any] = []
        started = time.monotonic()
        result = answer(items, seconds)
        if inspect.iscoroutine(result):
            result = await result
        try:
            async for item in result:
                received.append(item)
        except DeadlineExceeded as error:
            return received, error, time.monotonic() - started
        return received, None, time.monotonic() - started

    async def consume_within_limit() -> tuple[list[Any], BaseException | None, float]:
        try:
            return await asyncio.wait_for(consume(), limit_s)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"still waiting after {limit_s:g} s with a deadline of {seconds:g} s: the deadline must also end a wait"
            ) from None

    return run_async(consume_within_limit)


def upstream_response(status: int, headers: dict[str, str] | None = None, body: Any = None) -> httpx.Response:
    """Return an upstream response as httpx would, with a request attached."""
    return httpx.Response(status, headers=headers, json=body or {}, request=httpx.Request("POST", UPSTREAM_URL))


# 03.validate


def _validate_accepts_valid_body(answer: Callable) -> None:
    result = read_with(answer, make_request(json.dumps(VALID_BODY).encode()))
    assert isinstance(result, ChatRequest), f"expected a ChatRequest, got {type(result).__name__}"
    assert result.messages[0].content == "Hi"


def _validate_rejects_malformed_json(answer: Callable) -> None:
    error = http_error_from(lambda: read_with(answer, make_request(b'{"messages": [')))
    assert error.status_code == 400, f"malformed JSON should be 400 Bad Request, got {error.status_code}"


def _validate_rejects_unknown_role(answer: Callable) -> None:
    body = json.dumps({"messages": [{"role": "robot", "content": "Hi"}]}).encode()
    error = http_error_from(lambda: read_with(answer, make_request(body)))
    assert error.status_code == 422, f"a body that breaks the schema should be 422, got {error.status_code}"
    assert "role" in str(error.detail), f"the message should name the bad field 'role', got {error.detail!r}"


def _validate_rejects_large_body(answer: Callable) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]}).encode()
    error = http_error_from(lambda: read_with(answer, make_request(body)))
    assert error.status_code == 413, f"a body over MAX_BODY_BYTES should be 413, got {error.status_code}"


register(
    "03.validate",
    Case("a valid body becomes a ChatRequest", run=_validate_accepts_valid_body, timeout_s=ASYNC_CASE_TIMEOUT_S),
    Case(
        "malformed JSON is 400",
        run=_validate_rejects_malformed_json,
        timeout_s=ASYNC_CASE_TIMEOUT_S,
        hint="catch the ValueError of json.loads and raise HTTPException(400, ...)",
    ),
    Case(
        "an unknown role is 422 and named",
        run=_validate_rejects_unknown_role,
        timeout_s=ASYNC_CASE_TIMEOUT_S,
        hint="catch pydantic's ValidationError and put describe_validation_error(error) in the detail",
    ),
    Case(
        "a body over the limit is 413",
        run=_validate_rejects_large_body,
        timeout_s=ASYNC_CASE_TIMEOUT_S,
        hint="count the bytes while reading request.stream()",
    ),
)


# 03.upstream_errors


def _maps_429(answer: Callable) -> None:
    error = answer(upstream_response(429, {"Retry-After": "2"}))
    assert isinstance(error, HTTPException), f"expected an HTTPException, got {type(error).__name__}"
    assert error.status_code == 429, f"a 429 upstream should stay 429, got {error.status_code}"
    retry_after = (error.headers or {}).get("Retry-After")
    assert retry_after == "2", f"expected the header Retry-After: 2, got {retry_after!r}"


def _maps_status(failure: Any, expected: int, reason: str) -> Callable[[Callable], None]:
    def run(answer: Callable) -> None:
        error = answer(failure)
        assert isinstance(error, HTTPException), f"expected an HTTPException, got {type(error).__name__}"
        assert error.status_code == expected, f"{reason}: expected {expected}, got {error.status_code}"
        assert error.detail, "the error needs a message for the browser"

    return run


register(
    "03.upstream_errors",
    Case("429 stays 429 with Retry-After", run=_maps_429, hint="copy the upstream's Retry-After into headers="),
    Case(
        "an upstream 503 is 502",
        run=_maps_status(upstream_response(503), 502, "an upstream error status is a bad gateway"),
        hint="the browser's request was fine; the upstream failed, which is 502 Bad Gateway",
    ),
    Case(
        "a refused connection is 502",
        run=_maps_status(httpx.ConnectError("connection refused"), 502, "an unreachable upstream is a bad gateway"),
    ),
    Case(
        "a read timeout is 504",
        run=_maps_status(httpx.ReadTimeout("timed out"), 504, "an upstream that is too slow is a gateway timeout"),
        hint="check httpx.TimeoutException before the more general httpx.HTTPError",
    ),
)


# 03.sse_event

register(
    "03.sse_event",
    Case("a data-only event", args=({"delta": "Hi"},), expected='data: {"delta": "Hi"}\n\n', compare=lambda a, e: _same_event(a, e)),
    Case(
        "a named event",
        args=({"finish_reason": "stop"}, "done"),
        expected='event: done\ndata: {"finish_reason": "stop"}\n\n',
        compare=lambda a, e: _same_event(a, e),
        hint="the event: line comes first, then data:, then a blank line",
    ),
)


def _same_event(actual: Any, expected: str) -> bool:
    """Compare events by structure, so that JSON spacing does not matter."""
    if not isinstance(actual, str):
        return False
    try:
        return parse_events(actual) == parse_events(expected)
    except (AssertionError, ValueError):
        return False


# 03.relay


def _relay_sends_text_then_done(answer: Callable) -> None:
    events = relay(answer, [chunk(), chunk("Hel"), chunk("lo"), chunk("", "stop")])
    assert events == [
        ("message", {"delta": "Hel"}),
        ("message", {"delta": "lo"}),
        ("done", {"finish_reason": "stop"}),
    ], f"got {events}"


def _relay_reports_incomplete(answer: Callable) -> None:
    events = relay(answer, [chunk("Hel")], failure=IncompleteStreamError("Hel"))
    assert events[0] == ("message", {"delta": "Hel"}), f"got {events}"
    assert events[-1][0] == "error", f"a stream without [DONE] must end with an error event, got {events[-1]}"
    assert events[-1][1].get("code") == "incomplete", f"got {events[-1]}"
    assert all(event != "done" for event, _ in events), "an incomplete stream must not also send done"


register(
    "03.relay",
    Case(
        "text chunks then done",
        run=_relay_sends_text_then_done,
        timeout_s=ASYNC_CASE_TIMEOUT_S,
        hint="skip chunks with empty text; remember the finish_reason for the done event",
    ),
    Case(
        "an incomplete stream ends with error",
        run=_relay_reports_incomplete,
        timeout_s=ASYNC_CASE_TIMEOUT_S,
        hint="catch StreamError and yield error_event(error)",
    ),
)


# 03.deadline


def _deadline_passes_fast_stream(answer: Callable) -> None:
    received, error, _ = run_deadline(answer, stream_of([1, 2, 3]), 5.0)
    assert error is None, f"a fast stream should pass, but it raised {error!r}"
    assert received == [1, 2, 3], f"got {received}"


def _deadline_stops_drip(answer: Callable) -> None:
    received, error, elapsed = run_deadline(answer, stream_of(range(100), gap_s=0.1), 0.5)
    assert error is not None, "a stream that drips for 10 s must raise DeadlineExceeded after 0.5 s"
    assert elapsed < 2.0, f"the deadline of 0.5 s fired after {elapsed:.2f} s"
    assert len(received) >= 2, f"items before the deadline should still arrive, got {received}"


register(
    "03.deadline",
    Case("a fast stream passes through", run=_deadline_passes_fast_stream, timeout_s=ASYNC_CASE_TIMEOUT_S),
    Case(
        "a dripping stream hits the deadline",
        run=_deadline_stops_drip,
        timeout_s=ASYNC_CASE_TIMEOUT_S,
        hint="compute the deadline once, before the loop, and wait at most the time that remains",
    ),
)


# 03.checkpoint

CHECKPOINT_KEYS = ("why_a_server_route", "what_streaming_improves")
MIN_ANSWER_WORDS = 15


def _checkpoint_answered(answer: Any) -> None:
    assert isinstance(answer, dict), f"CHECKPOINT must be a dict, got {type(answer).__name__}"
    for key in CHECKPOINT_KEYS:
        text = answer.get(key)
        assert isinstance(text, str), f"CHECKPOINT[{key!r}] must be a string"
        words = len(text.split())
        assert words >= MIN_ANSWER_WORDS, f"CHECKPOINT[{key!r}] has {words} words; write at least {MIN_ANSWER_WORDS}"


def _checkpoint_mentions_key(answer: Any) -> None:
    text = str(answer.get("why_a_server_route", "")).lower()
    assert any(word in text for word in ("key", "secret", "credential")), (
        "the first answer should say what happens to the API key"
    )


register(
    "03.checkpoint",
    Case("both questions answered", run=_checkpoint_answered),
    Case("the key is part of the answer", run=_checkpoint_mentions_key),
)
