"""The chat page in real headless Chromium: streamed tokens, Stop, errors, and the page's SSE parser.

Needs Debian's Chromium (``apt-get install -y chromium``) and the
``playwright`` Python package, which drives it without downloading a
browser of its own. Set ``LAB_SKIP_BROWSER=1`` to skip these tests on a
machine without Chromium; otherwise a missing browser fails them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from importlib import resources

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from lab_support.asgi import serve_in_background
from lab_support.chat_app import RouteTimeouts, create_app
from lab_support.provider import Drip, ErrorInStream, RateLimited, start_provider

pytestmark = pytest.mark.slow

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
SKIP_VARIABLE = "LAB_SKIP_BROWSER"
INSTALL_HINT = (
    "install Debian's Chromium with `apt-get update && apt-get install -y chromium` and the driver with "
    f"`.venv/bin/pip install playwright` (no browser download is needed), or set {SKIP_VARIABLE}=1 to skip"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous, because tokens can take seconds each on a busy 2-core machine.
PAGE_TIMEOUT_MS = 60_000
DISCONNECT_LIMIT_S = 1.0
PROVIDER_STOP_TIMEOUT_S = 15.0
# Short answers keep the tests quick; the Stop test needs more than it lets through.
ANSWER_TOKENS = 24


def find_chromium() -> str | None:
    configured = os.environ.get("LAB_CHROMIUM")
    for candidate in (configured, *CHROMIUM_PATHS, shutil.which("chromium")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if os.environ.get(SKIP_VARIABLE, "").strip() in {"1", "true", "yes"}:
        pytest.skip(f"{SKIP_VARIABLE} is set")
    path = find_chromium()
    if path is None:
        pytest.fail(f"Chromium was not found at {', '.join(CHROMIUM_PATHS)}: {INSTALL_HINT}", pytrace=False)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(f"the playwright package is not installed: {INSTALL_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser(chromium_path, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=chromium_path,
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    console_errors = []
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    yield page
    page.close()
    assert not console_errors, f"the page raised: {console_errors}"


@pytest.fixture(scope="module")
def provider(backend):
    with start_provider(upstream=backend) as running:
        yield running


@pytest.fixture(scope="module")
def route(provider):
    app = create_app(
        upstream_base_url=provider.base_url,
        model=provider.model,
        upstream_api_key=provider.api_key.get_secret_value(),
        timeouts=RouteTimeouts(read_s=30.0),
        default_max_tokens=ANSWER_TOKENS,
    )
    with serve_in_background(app) as server:
        yield app, server.url


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def send_message(page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


# Waits use locators, which run outside the page's scripts, so the page's
# Content-Security-Policy (no eval) stays in force during the tests.
def wait_for_state(page, state: str) -> None:
    page.locator(f"body[data-state='{state}']").wait_for()


def wait_for_answer_text(page) -> None:
    page.locator("li.assistant:not(:empty)").last.wait_for()


def page_state(page) -> str:
    return page.get_attribute("body", "data-state")


def test_tokens_appear_before_answer_complete(page, route, provider):
    app, url = route
    provider.faults.script([Drip(interval_s=0.3)])
    page.goto(url + "/")
    wait_for_state(page, "idle")

    send_message(page, "Write two sentences about the sea.")
    wait_for_answer_text(page)
    partial = page.text_content("li.assistant")
    state_while_partial = page_state(page)
    wait_for_state(page, "done")
    final = page.text_content("li.assistant")

    assert state_while_partial == "streaming"
    assert len(final) > len(partial)
    assert final.startswith(partial)
    assert page.text_content("li.user") == "Write two sentences about the sea."
    assert "first token after" in page.text_content("#status")
    assert page.is_hidden("#error")


def test_stop_aborts_request(page, route, provider):
    app, url = route
    provider.faults.script([Drip(interval_s=1.0)])
    billed_before = len(provider.ledger.entries())
    disconnects_before = app.state.stats.client_disconnects
    page.goto(url + "/")
    wait_for_state(page, "idle")

    send_message(page, "Tell me a long story.")
    wait_for_answer_text(page)
    assert page.is_enabled("#stop")
    page.click("#stop")
    # The route counts a disconnect only after it has closed the upstream response.
    upstream_closed = wait_until(lambda: app.state.stats.client_disconnects == disconnects_before + 1, DISCONNECT_LIMIT_S)
    wait_for_state(page, "stopped")

    assert upstream_closed, f"the route had not closed the upstream request {DISCONNECT_LIMIT_S} s after Stop"
    assert app.state.stats.open_upstream_requests == 0
    assert page.text_content("#status") == "Stopped."
    assert page.is_enabled("#send")
    assert page.is_disabled("#stop")
    # The provider bills a stream once it stops relaying, at its next chunk at the latest.
    assert wait_until(lambda: len(provider.ledger.entries()) > billed_before, PROVIDER_STOP_TIMEOUT_S)
    assert provider.ledger.entries()[-1].output_tokens < ANSWER_TOKENS


def test_http_error_shown(page, route, provider):
    app, url = route
    provider.faults.script([RateLimited(retry_after=3)])
    page.goto(url + "/")
    wait_for_state(page, "idle")

    send_message(page, "Hi")
    wait_for_state(page, "error")

    assert "rate limiting" in page.text_content("#error")
    assert "Retry after 3 s" in page.text_content("#error")
    assert page.is_visible("#error")


def test_stream_error_event_shown(page, route, provider):
    app, url = route
    provider.faults.script([ErrorInStream(after_chunks=3)])
    page.goto(url + "/")
    wait_for_state(page, "idle")

    send_message(page, "Hi")
    wait_for_state(page, "error")

    assert "reported an error" in page.text_content("#error")
    assert page.text_content("li.assistant")


def test_conversation_sends_history(page, route, provider):
    """The second question goes out with the first question and answer before it."""
    app, url = route
    sent_bodies = []
    page.on("request", lambda request: sent_bodies.append(request.post_data) if request.url.endswith("/api/chat") else None)
    page.goto(url + "/")
    wait_for_state(page, "idle")

    for question in ("Name a colour.", "Name another one."):
        send_message(page, question)
        wait_for_state(page, "done")

    second = json.loads(sent_bodies[-1])["messages"]
    assert [message["role"] for message in second] == ["user", "assistant", "user"]
    assert second[0]["content"] == "Name a colour."
    assert second[1]["content"] == page.text_content("li.assistant >> nth=0")


# The page's own handling of the network: a stand-in route that writes awkward bytes.


def scripted_route(writes: list[bytes], pause_s: float = 0.05) -> FastAPI:
    """Serve the real page and a ``POST /api/chat`` that sends ``writes`` as separate network writes."""
    app = FastAPI()
    static = resources.files("lab_support.chat_app").joinpath("static")

    @app.get("/")
    async def index():
        return HTMLResponse(static.joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/chat.js")
    async def script():
        return Response(static.joinpath("chat.js").read_text(encoding="utf-8"), media_type="text/javascript")

    @app.post("/api/chat")
    async def chat():
        async def body():
            for write in writes:
                yield write
                await asyncio.sleep(pause_s)

        return StreamingResponse(body(), media_type="text/event-stream")

    return app


def test_page_joins_split_bytes_and_crlf(page):
    euro = "€".encode()
    writes = [
        b'data: {"delta":"Pri',
        b'ce: 5 ' + euro[:1],
        euro[1:] + b'"}\r',
        b"\n\r\n: ping\r\n\r\n",
        b'data: {"delta":" ok"}\r\rdata: {"delta":"!"}\n\n',
        b'event: done\r\ndata: {"finish_reason":"stop"}\r\n\r\n',
    ]
    with serve_in_background(scripted_route(writes)) as server:
        page.goto(server.url + "/")
        wait_for_state(page, "idle")
        send_message(page, "Hi")
        wait_for_state(page, "done")

        assert page.text_content("li.assistant") == "Price: 5 € ok!"


def test_page_reports_stream_cut_off(page):
    writes = [b'data: {"delta":"Half an"}\n\n', b'data: {"delta":" answ']
    with serve_in_background(scripted_route(writes)) as server:
        page.goto(server.url + "/")
        wait_for_state(page, "idle")
        send_message(page, "Hi")
        wait_for_state(page, "incomplete")

        assert page.text_content("li.assistant") == "Half an"
        assert "cut short" in page.text_content("#error")


PARSER_CHECK = """
async (input) => {
  const { SseParser } = await import("/chat.js");
  const bytes = new TextEncoder().encode(input);

  function parse(pieces) {
    const events = [];
    const parser = new SseParser((event) => events.push(event));
    const decoder = new TextDecoder("utf-8");
    for (const piece of pieces) parser.push(decoder.decode(piece, { stream: true }));
    parser.push(decoder.decode());
    parser.end();
    return JSON.stringify(events);
  }

  const whole = parse([bytes]);
  const failures = [];
  for (let split = 1; split < bytes.length; split++) {
    const result = parse([bytes.slice(0, split), bytes.slice(split)]);
    if (result !== whole) failures.push(split);
  }
  const byteByByte = parse(Array.from(bytes, (byte) => new Uint8Array([byte])));
  return { whole: JSON.parse(whole), failures, byteByByteMatches: byteByByte === whole };
}
"""

PARSER_INPUT = (
    'data: {"delta":"a €"}\r\n\r\n'
    ": keep-alive comment\n\n"
    "event: done\rdata: line one\rdata: line two\r\r"
    "data:no space\n"
    "data:  two spaces\n\n"
    "event: lonely\n\n"
    "id: 7\nretry: 10\ndata: 😀\n\n"
    "data: never finished"
)

PARSER_EXPECTED = [
    {"event": "message", "data": '{"delta":"a €"}'},
    {"event": "done", "data": "line one\nline two"},
    {"event": "message", "data": "no space\n two spaces"},
    {"event": "message", "data": "😀"},
]


def test_sse_parser_any_split(page):
    # The stand-in route sends no Content-Security-Policy, so page.evaluate may compile the check.
    with serve_in_background(scripted_route([])) as server:
        page.goto(server.url + "/")
        result = page.evaluate(PARSER_CHECK, PARSER_INPUT)

    assert result["whole"] == PARSER_EXPECTED
    assert result["failures"] == []
    assert result["byteByByteMatches"] is True
