"""The chat route end to end: real tokens from the local model, the provider's faults, bad input, disconnects, secrets.

The route forwards to the simulated provider (``lab_support.provider``),
which relays the real model and injects the scripted faults. Each fault
must give the client one defined outcome: a complete answer, an HTTP error
status, or an SSE error event followed by the end of the stream.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from httpx_sse import EventSource

from lab_support._net import LOOPBACK, free_port, port_is_open
from lab_support.asgi import serve_in_background
from lab_support.chat_app import MAX_BODY_BYTES, MAX_MESSAGES, MAX_OUTPUT_TOKENS, RouteTimeouts, create_app
from lab_support.provider import (
    ConnectionRefused,
    ConnectionReset,
    CrlfLineEndings,
    Drip,
    ErrorInStream,
    HttpError,
    KeepAliveComments,
    Ok,
    RateLimited,
    SlowFirstByte,
    SplitDataLine,
    SplitUtf8,
    StallMidStream,
    TruncatedStream,
    start_provider,
)

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Say hi"}]
MAX_TOKENS = 12
# A token can take a few seconds on a busy 2-core machine, so only routes
# built to trip a timeout use short ones.
HEALTHY_READ_S = 30.0
SHORT_READ_S = 2.0
SHORT_DEADLINE_S = 3.0
CLIENT_TIMEOUT_S = 60.0
CLEANUP_TIMEOUT_S = 2.0
# The brief for the route: the upstream request ends within a second of the browser leaving.
DISCONNECT_LIMIT_S = 1.0
PROVIDER_REOPEN_TIMEOUT_S = 10.0
PROVIDER_STOP_TIMEOUT_S = 15.0


@dataclass
class Route:
    """One running chat app and its URL."""

    app: FastAPI
    url: str

    @property
    def stats(self):
        return self.app.state.stats


@dataclass
class Outcome:
    """What a client saw for one ``POST /api/chat``."""

    status: int
    headers: httpx.Headers
    json: dict | None = None
    events: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(data["delta"] for event, data in self.events if event == "message")

    @property
    def final(self) -> tuple[str, dict] | None:
        return self.events[-1] if self.events else None


def start_route(provider, **timeouts) -> tuple[Route, Callable[[], None]]:
    app = create_app(
        upstream_base_url=provider.base_url,
        model=provider.model,
        upstream_api_key=provider.api_key.get_secret_value(),
        timeouts=RouteTimeouts(**timeouts),
    )
    server = serve_in_background(app)
    return Route(app, server.url), server.stop


@pytest.fixture(scope="module")
def provider(backend):
    with start_provider(upstream=backend) as running:
        yield running


@pytest.fixture(autouse=True)
def no_leftover_faults(provider):
    provider.faults.clear()
    yield
    provider.faults.clear()


@pytest.fixture(scope="module")
def routes(provider):
    """Routes by name: ``healthy`` (long timeouts), ``short_read`` and ``short_deadline``."""
    started = {
        "healthy": start_route(provider, read_s=HEALTHY_READ_S),
        "short_read": start_route(provider, connect_s=SHORT_READ_S, read_s=SHORT_READ_S),
        "short_deadline": start_route(provider, read_s=HEALTHY_READ_S, deadline_s=SHORT_DEADLINE_S),
    }
    yield {name: route for name, (route, _) in started.items()}
    for _, stop in started.values():
        stop()


@pytest.fixture
def route(routes) -> Route:
    return routes["healthy"]


def post_chat(route: Route, body: dict, **request_options) -> Outcome:
    """Send one chat request and read the whole response: JSON, or every SSE event until the stream closes."""
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        with client.stream("POST", route.url + "/api/chat", json=body, **request_options) as response:
            outcome = Outcome(response.status_code, response.headers)
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                for event in EventSource(response).iter_sse():
                    outcome.events.append((event.event, json.loads(event.data)))
            else:
                outcome.json = json.loads(response.read())
    return outcome


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def busy_upstream_connections(route: Route) -> int:
    # httpx has no public view of its pool; httpcore's pool lists its connections.
    pool = route.app.state.upstream_client._transport._pool
    return sum(1 for connection in pool.connections if not connection.is_idle())


def assert_nothing_left_behind(route: Route) -> None:
    assert wait_until(lambda: route.stats.open_upstream_requests == 0, CLEANUP_TIMEOUT_S), (
        f"{route.stats.open_upstream_requests} upstream requests still open"
    )
    assert wait_until(lambda: busy_upstream_connections(route) == 0, CLEANUP_TIMEOUT_S), (
        f"{busy_upstream_connections(route)} upstream connections still busy"
    )


# Health and page.


def test_health_is_ok(route, provider):
    before = len(provider.faults.history)

    response = httpx.get(route.url + "/api/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert len(provider.faults.history) == before


def test_page_and_script_served(route):
    page = httpx.get(route.url + "/")
    script = httpx.get(route.url + "/chat.js")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="composer"' in page.text
    assert '<script type="module" src="/chat.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "export class SseParser" in script.text


# Real answers from the local model.


def test_answer_without_streaming(route):
    outcome = post_chat(route, {"messages": PROMPT, "stream": False, "max_tokens": MAX_TOKENS})

    assert outcome.status == 200
    assert isinstance(outcome.json["answer"], str)
    assert outcome.json["answer"].strip()
    assert outcome.json["finish_reason"] in {"stop", "length"}
    assert_nothing_left_behind(route)


def test_streamed_answer_token_by_token(route):
    outcome = post_chat(route, {"messages": PROMPT, "max_tokens": MAX_TOKENS})

    assert outcome.status == 200
    assert outcome.headers["content-type"].startswith("text/event-stream")
    assert outcome.headers["cache-control"] == "no-cache"
    assert outcome.headers["x-accel-buffering"] == "no"
    deltas = [data for event, data in outcome.events if event == "message"]
    assert len(deltas) > 1
    assert any(character.isalpha() for character in outcome.text)
    assert outcome.final == ("done", {"finish_reason": outcome.final[1]["finish_reason"]})
    assert outcome.final[1]["finish_reason"] in {"stop", "length"}
    assert_nothing_left_behind(route)


def test_stream_not_buffered(route, provider):
    """With a drip between chunks, the first text must reach the client long before the end."""
    interval_s = 0.4
    provider.faults.script([Drip(interval_s=interval_s)])
    arrivals = []

    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        body = {"messages": PROMPT, "max_tokens": 8}
        with client.stream("POST", route.url + "/api/chat", json=body) as response:
            for event in EventSource(response).iter_sse():
                arrivals.append((time.monotonic(), event.event))

    text_times = [stamp for stamp, event in arrivals if event == "message"]
    assert arrivals[-1][1] == "done"
    assert len(text_times) >= 3
    assert arrivals[-1][0] - text_times[0] >= 2 * interval_s


# Bad input: each a 4xx with a message, and no upstream call.


def oversized_body() -> bytes:
    filler = "x" * MAX_BODY_BYTES
    return json.dumps({"messages": [{"role": "user", "content": filler}]}).encode()


BAD_REQUESTS = [
    ("malformed JSON", b'{"messages": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 422, "valid dictionary"),
    ("missing messages", b"{}", 422, "messages: Field required"),
    ("empty messages", b'{"messages": []}', 422, "messages: List should have at least 1 item"),
    ("messages not a list", b'{"messages": "hi"}', 422, "messages: Input should be a valid list"),
    ("unknown role", b'{"messages": [{"role": "robot", "content": "hi"}]}', 422, "messages[0].role"),
    ("content a number", b'{"messages": [{"role": "user", "content": 5}]}', 422, "messages[0].content"),
    ("empty content", b'{"messages": [{"role": "user", "content": ""}]}', 422, "messages[0].content"),
    ("blank content", b'{"messages": [{"role": "user", "content": "  \\n "}]}', 422, "not only whitespace"),
    ("missing role", b'{"messages": [{"content": "hi"}]}', 422, "messages[0].role: Field required"),
    ("unknown field", b'{"messages": [{"role": "user", "content": "hi"}], "model": "x"}', 422, "model: Extra inputs"),
    ("stream a string", b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 422, "stream"),
    ("max_tokens zero", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 422, "max_tokens"),
    (
        "max_tokens too large",
        json.dumps({"messages": PROMPT, "max_tokens": MAX_OUTPUT_TOKENS + 1}).encode(),
        422,
        "max_tokens",
    ),
    (
        "too many messages",
        json.dumps({"messages": PROMPT * (MAX_MESSAGES + 1)}).encode(),
        422,
        f"at most {MAX_MESSAGES} items",
    ),
    ("body over the limit", oversized_body(), 413, f"the limit is {MAX_BODY_BYTES} bytes"),
]


@pytest.mark.parametrize(("body", "status", "message"), [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_rejected(route, provider, body, status, message):
    before = len(provider.faults.history)

    response = httpx.post(route.url + "/api/chat", content=body, headers={"content-type": "application/json"})

    assert response.status_code == status
    assert message in response.json()["detail"]
    assert len(provider.faults.history) == before


def test_chunked_body_over_limit_rejected(route, provider):
    """Without Content-Length the route must still stop reading at the limit."""
    before = len(provider.faults.history)

    def pieces():
        for _ in range(4):
            yield b"x" * (MAX_BODY_BYTES // 2)

    response = httpx.post(route.url + "/api/chat", content=pieces(), headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert "over" in response.json()["detail"]
    assert len(provider.faults.history) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_rejected(route, content_type):
    headers = {"content-type": content_type} if content_type else {}

    response = httpx.post(route.url + "/api/chat", content=json.dumps({"messages": PROMPT}), headers=headers)

    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


# The provider's faults: each gives one defined outcome and leaves nothing open.


@dataclass(frozen=True)
class Expected:
    """A fault's outcome: an HTTP status, or a 200 stream ending with ``final_event`` (and ``code`` for errors)."""

    status: int = 200
    final_event: str | None = None
    code: str | None = None
    retry_after: str | None = None
    text_contains: str | None = None


FAULT_CASES = [
    ("ok", Ok(), "healthy", Expected(final_event="done")),
    ("429 with Retry-After", RateLimited(retry_after=2), "healthy", Expected(status=429, retry_after="2")),
    ("429 without Retry-After", RateLimited(), "healthy", Expected(status=429)),
    ("500", HttpError(status=500), "healthy", Expected(status=502)),
    ("503", HttpError(status=503), "healthy", Expected(status=502)),
    ("connection reset", ConnectionReset(), "healthy", Expected(status=502)),
    ("slow first byte, read timeout", SlowFirstByte(seconds=30), "short_read", Expected(status=504)),
    ("slow first byte, deadline", SlowFirstByte(seconds=30), "short_deadline", Expected(status=504)),
    ("stall mid-stream", StallMidStream(seconds=30, after_chunks=2), "short_read", Expected(final_event="error", code="upstream_timeout")),
    ("drip past the deadline", Drip(interval_s=1.0), "short_deadline", Expected(final_event="error", code="deadline_exceeded")),
    ("error in stream", ErrorInStream(after_chunks=2), "healthy", Expected(final_event="error", code="upstream_error")),
    ("truncated stream", TruncatedStream(after_chunks=2), "healthy", Expected(final_event="error", code="incomplete")),
    (
        "truncated connection",
        TruncatedStream(after_chunks=2, close_connection=True),
        "healthy",
        Expected(final_event="error", code="upstream_broken"),
    ),
    ("split UTF-8", SplitUtf8(after_chunks=2), "healthy", Expected(final_event="done", text_contains="€")),
    ("split data line", SplitDataLine(after_chunks=2), "healthy", Expected(final_event="done")),
    ("CRLF line endings", CrlfLineEndings(), "healthy", Expected(final_event="done")),
    ("keep-alive comments", KeepAliveComments(), "healthy", Expected(final_event="done")),
]


@pytest.mark.parametrize(("fault", "route_name", "expected"), [case[1:] for case in FAULT_CASES], ids=[case[0] for case in FAULT_CASES])
def test_fault_outcome(routes, provider, fault, route_name, expected):
    route = routes[route_name]
    provider.faults.script([fault])
    max_tokens = 40 if isinstance(fault, Drip) else MAX_TOKENS

    outcome = post_chat(route, {"messages": PROMPT, "max_tokens": max_tokens})

    assert outcome.status == expected.status
    if expected.status != 200:
        assert outcome.json is not None and outcome.json["detail"]
        assert outcome.headers.get("retry-after") == expected.retry_after
    else:
        assert outcome.final is not None, "the stream closed without a done or error event"
        assert outcome.final[0] == expected.final_event
        assert [event for event, _ in outcome.events[:-1]] == ["message"] * (len(outcome.events) - 1)
        if expected.code is not None:
            assert outcome.final[1]["code"] == expected.code
            assert outcome.final[1]["message"]
        if expected.text_contains is not None:
            assert expected.text_contains in outcome.text
    assert_nothing_left_behind(route)


def test_connection_refused_is_502(route, provider):
    provider.faults.script([ConnectionRefused(seconds=1.0)])
    try:
        outcome = post_chat(route, {"messages": PROMPT, "max_tokens": MAX_TOKENS})
    finally:
        assert wait_until(lambda: port_is_open(LOOPBACK, provider.port), PROVIDER_REOPEN_TIMEOUT_S)

    assert outcome.status == 502
    assert "could not be reached" in outcome.json["detail"]
    assert_nothing_left_behind(route)


def test_drip_under_read_timeout_hits_deadline(routes, provider):
    """Each chunk arrives well within the read timeout, so only the total deadline ends the answer."""
    route = routes["short_deadline"]
    provider.faults.script([Drip(interval_s=0.5)])
    started = time.monotonic()

    outcome = post_chat(route, {"messages": PROMPT, "max_tokens": 100})

    elapsed = time.monotonic() - started
    assert outcome.final[1]["code"] == "deadline_exceeded"
    assert SHORT_DEADLINE_S <= elapsed < SHORT_DEADLINE_S + 2.0
    assert len(outcome.events) > 2


# The browser going away.


def open_and_abandon(route: Route, body: dict, *, read_deltas: int = 0, wait_s: float = 0.0) -> float:
    """Start a chat request, read ``read_deltas`` events (or wait ``wait_s``), close the connection; return when."""
    client = httpx.Client(timeout=CLIENT_TIMEOUT_S)
    try:
        if read_deltas:
            with client.stream("POST", route.url + "/api/chat", json=body) as response:
                assert response.status_code == 200
                events = EventSource(response).iter_sse()
                for _ in range(read_deltas):
                    assert next(events).event == "message"
                closed_at = time.monotonic()
        else:
            with pytest.raises(httpx.ReadTimeout):
                client.post(route.url + "/api/chat", json=body, timeout=httpx.Timeout(CLIENT_TIMEOUT_S, read=wait_s))
            closed_at = time.monotonic()
    finally:
        client.close()
    return closed_at


@pytest.mark.parametrize(
    "fault",
    [StallMidStream(seconds=30, after_chunks=3), Drip(interval_s=0.5)],
    ids=["during a stall", "between drips"],
)
def test_disconnect_mid_stream_cancels_upstream(route, provider, fault):
    provider.faults.script([fault])
    billed_before = len(provider.ledger.entries())
    disconnects_before = route.stats.client_disconnects

    closed_at = open_and_abandon(route, {"messages": PROMPT, "max_tokens": 200}, read_deltas=2)

    # The route counts a disconnect only after it has closed the upstream response.
    assert wait_until(lambda: route.stats.client_disconnects == disconnects_before + 1, DISCONNECT_LIMIT_S), (
        f"the route had not closed the upstream request {DISCONNECT_LIMIT_S} s after the client left"
    )
    assert time.monotonic() - closed_at < DISCONNECT_LIMIT_S + 0.1
    assert_nothing_left_behind(route)
    # The provider bills a stream once it stops relaying. It notices the closed
    # connection at its next chunk, which a busy engine may take seconds to make.
    assert wait_until(lambda: len(provider.ledger.entries()) > billed_before, PROVIDER_STOP_TIMEOUT_S), (
        f"the provider was still streaming {PROVIDER_STOP_TIMEOUT_S} s after the route closed the connection"
    )
    entry = provider.ledger.entries()[-1]
    assert entry.output_tokens < 20, f"the provider generated {entry.output_tokens} tokens for an abandoned answer"


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_disconnect_before_first_byte_cancels_upstream(route, provider, stream):
    provider.faults.script([SlowFirstByte(seconds=30)])
    disconnects_before = route.stats.client_disconnects

    closed_at = open_and_abandon(route, {"messages": PROMPT, "max_tokens": MAX_TOKENS, "stream": stream}, wait_s=0.5)

    assert wait_until(lambda: route.stats.client_disconnects == disconnects_before + 1, DISCONNECT_LIMIT_S)
    assert time.monotonic() - closed_at < DISCONNECT_LIMIT_S + 0.1
    assert_nothing_left_behind(route)


# The upstream key stays on the server.


@pytest.fixture
def key_echoing_upstream():
    """A stand-in upstream that quotes the Authorization header back: in a 401 body, or in a mid-stream error."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorization = request.headers.get("authorization", "")
        body = await request.json()
        if body["messages"][0]["content"] == "reject":
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {authorization}"}}, status_code=401)

        async def events():
            yield 'data: {"choices": [{"delta": {"content": "Hi"}, "finish_reason": null}]}\n\n'
            yield "data: " + json.dumps({"error": {"message": f"quota exceeded for {authorization}"}}) + "\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    server = serve_in_background(app)
    yield server.url + "/v1"
    server.stop()


def collect_exposed(route: Route, requests: list[dict]) -> str:
    """Send each request and return every status line, header and body byte the client received."""
    seen = []
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        for body in requests:
            response = client.post(route.url + "/api/chat", json=body)
            seen.append(f"{response.status_code} {response.reason_phrase}")
            seen.extend(f"{name}: {value}" for name, value in response.headers.items())
            seen.append(response.text)
        for path in ("/", "/chat.js", "/api/health", "/openapi.json"):
            response = client.get(route.url + path)
            seen.extend(f"{name}: {value}" for name, value in response.headers.items())
            seen.append(response.text)
    return "\n".join(seen)


def test_key_absent_from_responses_and_logs(route, provider, caplog, capfd):
    key = provider.api_key.get_secret_value()
    caplog.set_level(logging.DEBUG)
    provider.faults.script(["ok", "ok", RateLimited(retry_after=1), "503", ErrorInStream(after_chunks=1), ConnectionReset()])

    exposed = collect_exposed(
        route,
        [
            {"messages": PROMPT, "max_tokens": 4},
            {"messages": PROMPT, "max_tokens": 4, "stream": False},
            {"messages": PROMPT},
            {"messages": PROMPT},
            {"messages": PROMPT, "max_tokens": 4},
            {"messages": PROMPT},
            {"messages": [{"role": "robot", "content": key}]},
        ],
    )
    captured = capfd.readouterr()

    assert key not in exposed
    assert key not in caplog.text
    assert key not in captured.out + captured.err
    assert "lab_support.chat_app" in {record.name for record in caplog.records}
    assert key not in repr(route.app.state.upstream)


def test_revoked_key_is_502_without_key(provider, caplog, capfd):
    """A 401 from the upstream is the server's problem: the browser gets 502 and nothing about the key."""
    key = provider.issue_key("revoked-route")
    route, stop = start_route_with_key(provider, key.get_secret_value())
    caplog.set_level(logging.DEBUG)
    try:
        provider.revoke_key(key)
        outcome = post_chat(route, {"messages": PROMPT})
    finally:
        stop()

    assert outcome.status == 502
    assert "HTTP 401" in outcome.json["detail"]
    assert key.get_secret_value() not in json.dumps(outcome.json)
    assert key.get_secret_value() not in caplog.text + "".join(capfd.readouterr())


def start_route_with_key(provider, key: str) -> tuple[Route, Callable[[], None]]:
    app = create_app(upstream_base_url=provider.base_url, model=provider.model, upstream_api_key=key)
    server = serve_in_background(app)
    return Route(app, server.url), server.stop


@pytest.mark.parametrize(("content", "expected_status"), [("reject", 502), ("stream", 200)])
def test_upstream_echoing_key_not_relayed(key_echoing_upstream, caplog, content, expected_status):
    key = "sk-echo-" + "7" * 32
    app = create_app(upstream_base_url=key_echoing_upstream, model="echo", upstream_api_key=key)
    caplog.set_level(logging.DEBUG)
    with serve_in_background(app) as server:
        route = Route(app, server.url)
        outcome = post_chat(route, {"messages": [{"role": "user", "content": content}]})
        exposed = collect_exposed(route, [{"messages": [{"role": "user", "content": content}]}])

    assert outcome.status == expected_status
    if expected_status == 200:
        assert outcome.final[0] == "error"
        assert outcome.final[1]["code"] == "upstream_error"
    assert key not in exposed
    assert key not in caplog.text
    assert "[redacted]" in caplog.text


# One command outside the notebooks.


def test_module_command_serves_the_route(provider):
    port = free_port()
    key = provider.api_key.get_secret_value()
    env = {
        **os.environ,
        "LAB_CHAT_UPSTREAM_BASE_URL": provider.base_url,
        "LAB_CHAT_UPSTREAM_API_KEY": key,
        "LAB_CHAT_MODEL": provider.model,
        "LAB_CHAT_READ_TIMEOUT_S": str(HEALTHY_READ_S),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lab_support.chat_app", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_until(lambda: port_is_open(LOOPBACK, port), 30.0), "the command did not start listening"
        outcome = post_chat(Route(FastAPI(), f"http://{LOOPBACK}:{port}"), {"messages": PROMPT, "max_tokens": 6})
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)

    assert outcome.status == 200
    assert outcome.final[0] == "done"
    assert outcome.text
    assert process.returncode == 0
    assert f"Open http://{LOOPBACK}:{port}/" in output
    assert key not in output


def test_module_command_needs_model_with_base_url(provider):
    env = {**os.environ, "LAB_CHAT_UPSTREAM_BASE_URL": provider.base_url}
    env.pop("LAB_CHAT_MODEL", None)

    completed = subprocess.run(
        [sys.executable, "-m", "lab_support.chat_app", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 2
    assert "LAB_CHAT_MODEL" in completed.stderr
