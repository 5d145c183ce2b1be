"""The chat route's building blocks on their own: event format, relay, deadline, error mapping, settings."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import httpx
import pytest
from httpx_sse import ServerSentEvent

from lab_support.chat_app import (
    DeadlineExceeded,
    RouteTimeouts,
    UpstreamBroken,
    UpstreamConfig,
    UpstreamTimeout,
    error_for_upstream,
    redact,
    relay_events,
    retry_after_header,
    sse_event,
    with_deadline,
)
from lab_support.chat_app.__main__ import timeouts_from_settings
from lab_support.settings import LabSettings
from lab_support.sse import ChatChunk, IncompleteStreamError, StreamErrorEvent

SECRET = "sk-test-0123456789abcdef"
UPSTREAM_URL = "http://127.0.0.1:9/v1/chat/completions"


def chunk(text: str = "", finish_reason: str | None = None) -> ChatChunk:
    return ChatChunk(text=text, finish_reason=finish_reason, usage=None, raw={})


async def from_list(items, *, failure: Exception | None = None, gap_s: float = 0.0):
    for item in items:
        if gap_s:
            await asyncio.sleep(gap_s)
        yield item
    if failure is not None:
        raise failure


def parse_events(text: str) -> list[ServerSentEvent]:
    """Parse a whole event-stream body with the same rules a browser uses (blank line ends an event)."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        event, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        events.append(ServerSentEvent(event=event, data="\n".join(data)))
    return events


def relay(chunks) -> list[str]:
    async def collect():
        return [event async for event in relay_events(chunks)]

    return asyncio.run(collect())


# The event format.


def test_sse_event_data_only():
    assert sse_event({"delta": "Hi"}) == 'data: {"delta":"Hi"}\n\n'


def test_sse_event_named():
    assert sse_event({"finish_reason": "stop"}, event="done") == 'event: done\ndata: {"finish_reason":"stop"}\n\n'


def test_sse_event_keeps_newlines_inside_one_data_line():
    text = sse_event({"delta": "line one\nline two\r\n\n"})

    assert text.count("\n") == 2
    assert text.endswith("\n\n")
    assert json.loads(text.removeprefix("data: ").strip()) == {"delta": "line one\nline two\r\n\n"}


def test_sse_event_keeps_unicode_as_utf8():
    assert sse_event({"delta": "€ 😀"}) == 'data: {"delta":"€ 😀"}\n\n'


@pytest.mark.parametrize("name", ["", "two\nlines", "cr\rname"])
def test_sse_event_rejects_bad_event_name(name):
    with pytest.raises(ValueError, match="invalid event name"):
        sse_event({}, event=name)


# The relay.


def test_relay_sends_each_text_then_done():
    events = parse_events("".join(relay(from_list([chunk(), chunk("Hel"), chunk("lo"), chunk("", "stop")]))))

    assert [event.event for event in events] == ["message", "message", "done"]
    assert [json.loads(event.data) for event in events] == [{"delta": "Hel"}, {"delta": "lo"}, {"finish_reason": "stop"}]


def test_relay_reports_incomplete_stream_as_error():
    events = parse_events("".join(relay(from_list([chunk("Hel")], failure=IncompleteStreamError("Hel")))))

    assert [event.event for event in events] == ["message", "error"]
    assert json.loads(events[-1].data)["code"] == "incomplete"


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (DeadlineExceeded(5), "deadline_exceeded"),
        (UpstreamTimeout(2), "upstream_timeout"),
        (UpstreamBroken("peer closed connection"), "upstream_broken"),
        (StreamErrorEvent({"message": "overloaded"}), "upstream_error"),
    ],
)
def test_relay_error_codes(failure, code):
    events = parse_events("".join(relay(from_list([], failure=failure))))

    assert [event.event for event in events] == ["error"]
    payload = json.loads(events[0].data)
    assert payload["code"] == code
    assert payload["message"]


def test_relay_never_forwards_upstream_error_text():
    failure = StreamErrorEvent({"message": f"Incorrect API key provided: {SECRET}"})

    text = "".join(relay(from_list([chunk("Hi")], failure=failure)))

    assert SECRET not in text
    assert "Incorrect API key" not in text


def test_relay_sends_first_event_before_next_chunk():
    """The relay must yield each event while the upstream is still producing the next one."""
    release = None

    async def gated():
        yield chunk("first")
        await release.wait()
        yield chunk("second")

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        events = relay_events(gated())
        first = await asyncio.wait_for(events.__anext__(), timeout=2.0)
        release.set()
        rest = [event async for event in events]
        return first, rest

    first, rest = asyncio.run(scenario())

    assert first == 'data: {"delta":"first"}\n\n'
    assert rest[0] == 'data: {"delta":"second"}\n\n'


# The deadline.


def run_with_deadline(source, seconds: float):
    async def consume():
        received = []
        started = time.monotonic()
        try:
            async for item in with_deadline(source, seconds):
                received.append(item)
        except DeadlineExceeded as error:
            return received, error, time.monotonic() - started
        return received, None, time.monotonic() - started

    return asyncio.run(consume())


def test_deadline_passes_fast_stream_through():
    received, error, _ = run_with_deadline(from_list([1, 2, 3]), 5.0)

    assert received == [1, 2, 3]
    assert error is None


def test_deadline_stops_dripping_stream():
    received, error, elapsed = run_with_deadline(from_list(range(100), gap_s=0.1), 0.5)

    assert error is not None
    assert error.deadline_s == 0.5
    assert 2 <= len(received) < 10
    assert elapsed < 2.0


def test_deadline_fires_during_a_long_wait():
    received, error, elapsed = run_with_deadline(from_list([1], gap_s=30.0), 0.3)

    assert received == []
    assert error is not None
    assert elapsed < 2.0


def test_deadline_closes_the_source():
    closed = []

    async def source():
        try:
            while True:
                await asyncio.sleep(0.05)
                yield "x"
        finally:
            closed.append(True)

    _, error, _ = run_with_deadline(source(), 0.3)

    assert error is not None
    assert closed == [True]


# Errors before the first byte.


def upstream_response(status: int, headers: dict | None = None, body: dict | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, json=body or {}, request=httpx.Request("POST", UPSTREAM_URL))


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (upstream_response(429, {"Retry-After": "2"}), 429),
        (upstream_response(500), 502),
        (upstream_response(503), 502),
        (upstream_response(401), 502),
        (upstream_response(400), 502),
        (httpx.ConnectError("refused"), 502),
        (httpx.ReadError("reset"), 502),
        (httpx.RemoteProtocolError("closed"), 502),
        (httpx.ConnectTimeout("slow"), 504),
        (httpx.ReadTimeout("slow"), 504),
        (httpx.PoolTimeout("busy"), 504),
        (DeadlineExceeded(3), 504),
        (ValueError("not JSON"), 502),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, httpx.Response) else f"HTTP {value.status_code}",
)
def test_error_for_upstream_status(failure, status):
    assert error_for_upstream(failure).status_code == status


def test_error_for_upstream_passes_retry_after():
    error = error_for_upstream(upstream_response(429, {"Retry-After": "7"}))

    assert error.headers == {"Retry-After": "7"}
    assert "7 s" in error.detail


def test_error_for_upstream_429_without_retry_after():
    error = error_for_upstream(upstream_response(429))

    assert not error.headers
    assert "rate limiting" in error.detail


def test_error_for_upstream_hides_upstream_body():
    failure = upstream_response(401, body={"error": {"message": f"Incorrect API key provided: {SECRET}"}})

    error = error_for_upstream(failure)

    assert SECRET not in error.detail
    assert "401" in error.detail


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", "2"),
        ("0", "0"),
        ("1.2", "2"),
        (" 3 ", "3"),
        ("-1", None),
        ("soon", None),
        ("nan", None),
        (None, None),
    ],
)
def test_retry_after_header(value, expected):
    assert retry_after_header(value) == expected


def test_retry_after_header_http_date():
    date = email.utils.formatdate(time.time() + 30, usegmt=True)

    assert retry_after_header(date) == date


def test_redact_removes_every_copy():
    assert redact(f"a {SECRET} b {SECRET}", SECRET) == "a [redacted] b [redacted]"
    assert redact("nothing here", None) == "nothing here"


# Configuration.


@pytest.mark.parametrize("field", ["connect_s", "read_s", "deadline_s"])
@pytest.mark.parametrize("value", [0, -1, "5", True])
def test_route_timeouts_reject_invalid(field, value):
    with pytest.raises(ValueError, match=field):
        RouteTimeouts(**{field: value})


def test_route_timeouts_map_to_httpx():
    timeout = RouteTimeouts(connect_s=1, read_s=2, deadline_s=3).httpx_timeout()

    assert (timeout.connect, timeout.read, timeout.pool) == (1, 2, 1)


def test_upstream_config_rejects_bad_base_url():
    with pytest.raises(ValueError, match="invalid upstream base URL 'localhost:8080'"):
        UpstreamConfig(base_url="localhost:8080", model="m")


def test_upstream_config_repr_hides_key():
    from pydantic import SecretStr

    config = UpstreamConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key=SecretStr(SECRET))

    assert SECRET not in repr(config)
    assert SECRET not in str(config)


def test_upstream_client_sends_key_as_bearer():
    from pydantic import SecretStr

    config = UpstreamConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key=SecretStr(SECRET))

    async def headers():
        async with config.create_client(RouteTimeouts()) as client:
            return client.headers.get("authorization"), str(client.base_url)

    authorization, base_url = asyncio.run(headers())
    assert authorization == f"Bearer {SECRET}"
    assert base_url == "http://127.0.0.1:9/v1/"


def test_settings_read_chat_key_as_secret(monkeypatch):
    monkeypatch.setenv("LAB_CHAT_UPSTREAM_API_KEY", SECRET)
    monkeypatch.setenv("LAB_CHAT_DEADLINE_S", "12.5")

    settings = LabSettings()

    assert settings.chat_upstream_api_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert timeouts_from_settings(settings) == RouteTimeouts(deadline_s=12.5)


def test_settings_reject_zero_timeout(monkeypatch):
    monkeypatch.setenv("LAB_CHAT_READ_TIMEOUT_S", "0")

    with pytest.raises(ValueError, match="chat_read_timeout_s"):
        LabSettings()
