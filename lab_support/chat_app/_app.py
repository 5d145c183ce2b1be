"""The FastAPI app: ``POST /api/chat``, ``GET /api/health`` and the browser page at ``GET /``."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import SecretStr

from lab_support.chat_app._config import (
    DEFAULT_MAX_TOKENS,
    MAX_BODY_BYTES,
    MAX_OUTPUT_TOKENS,
    RouteTimeouts,
    UpstreamConfig,
)
from lab_support.chat_app._deadline import with_deadline
from lab_support.chat_app._events import DONE_EVENT, ERROR_EVENT, SSE_HEADERS, SSE_MEDIA_TYPE, relay_events
from lab_support.chat_app._schema import read_chat_request, require_json
from lab_support.chat_app._upstream import complete, open_stream, upstream_body, upstream_chunks

logger = logging.getLogger("lab_support.chat_app")

T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-Id"
# The page may load scripts only from this server. Inline styles are allowed for its one <style> block.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
    "Cache-Control": "no-cache",
}
# nginx's status for a request that the client closed. The client never receives it, so it only labels the access log.
CLIENT_CLOSED_STATUS = 499


@dataclass
class RouteStats:
    """Counters of one app, changed only on the server's event loop and read by tests and notebooks."""

    open_upstream_requests: int = 0
    client_disconnects: int = 0
    answers_completed: int = 0
    answers_failed: int = 0


class ClientDisconnected(Exception):
    """The browser closed the connection before the upstream answered."""


def create_app(
    *,
    upstream_base_url: str,
    model: str,
    upstream_api_key: SecretStr | str | None = None,
    timeouts: RouteTimeouts | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> FastAPI:
    """Build the chat app for one OpenAI-compatible upstream.

    ``upstream_api_key`` is kept as a ``SecretStr`` and only ever sent to the
    upstream. ``default_max_tokens`` caps answers whose request sets no
    ``max_tokens``. The app's ``state.stats`` is a :class:`RouteStats`.
    """
    if not 1 <= default_max_tokens <= MAX_OUTPUT_TOKENS:
        raise ValueError(f"invalid default_max_tokens {default_max_tokens!r}: use 1 to {MAX_OUTPUT_TOKENS}")
    if isinstance(upstream_api_key, str):
        upstream_api_key = SecretStr(upstream_api_key)
    upstream = UpstreamConfig(base_url=upstream_base_url, model=model, api_key=upstream_api_key)
    timeouts = timeouts or RouteTimeouts()
    secret = upstream_api_key.get_secret_value() if upstream_api_key is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream.create_client(timeouts) as client:
            app.state.upstream_client = client
            logger.info("chat route forwarding to %s, model %s", upstream.base_url, upstream.model)
            yield
        logger.info("chat route stopped and closed its upstream client")

    # The interactive docs load their scripts from a CDN, which an offline lab cannot reach.
    app = FastAPI(title="serving-lab chat route", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.stats = RouteStats()
    app.state.upstream = upstream
    app.state.timeouts = timeouts

    @app.exception_handler(ClientDisconnected)
    async def client_disconnected(request: Request, error: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED_STATUS)

    @app.get("/api/health")
    async def health() -> dict:
        """Liveness: the process serves requests. It does not call the upstream."""
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"), headers=PAGE_HEADERS)

    @app.get("/chat.js")
    async def page_script() -> Response:
        return Response(_static_text("chat.js"), media_type="text/javascript", headers=PAGE_HEADERS)

    @app.post("/api/chat")
    async def chat(request: Request) -> Response:
        started = time.monotonic()
        request_id = secrets.token_hex(6)
        stats: RouteStats = app.state.stats
        client: httpx.AsyncClient = app.state.upstream_client

        require_json(request)
        chat_request = await read_chat_request(request, max_body_bytes=max_body_bytes)
        body = upstream_body(chat_request, upstream.model, default_max_tokens=default_max_tokens)
        id_header = {REQUEST_ID_HEADER: request_id}

        if not chat_request.stream:
            stats.open_upstream_requests += 1
            try:
                answer = await _cancel_on_disconnect(
                    request, complete(client, body, seconds=_remaining(started, timeouts), secret=secret)
                )
            except ClientDisconnected:
                stats.client_disconnects += 1
                logger.info("chat %s: client disconnected before the answer, so the upstream request was cancelled", request_id)
                raise
            finally:
                stats.open_upstream_requests -= 1
            stats.answers_completed += 1
            logger.info("chat %s: answered without streaming in %.0f ms", request_id, _elapsed_ms(started))
            return JSONResponse(answer, headers=id_header)

        stats.open_upstream_requests += 1
        try:
            response = await _cancel_on_disconnect(
                request, open_stream(client, body, seconds=_remaining(started, timeouts), secret=secret)
            )
        except ClientDisconnected:
            stats.client_disconnects += 1
            stats.open_upstream_requests -= 1
            logger.info(
                "chat %s: client disconnected before the upstream's headers, so the upstream request was cancelled", request_id
            )
            raise
        except BaseException:
            stats.open_upstream_requests -= 1
            raise

        events = _stream_answer(response, started=started, timeouts=timeouts, stats=stats, request_id=request_id, secret=secret)
        return StreamingResponse(events, media_type=SSE_MEDIA_TYPE, headers={**SSE_HEADERS, **id_header})

    return app


async def _stream_answer(
    response: httpx.Response,
    *,
    started: float,
    timeouts: RouteTimeouts,
    stats: RouteStats,
    request_id: str,
    secret: str | None,
) -> AsyncIterator[str]:
    """Relay one upstream stream as the route's events and always close the upstream response.

    When the browser disconnects, Starlette cancels this generator at its
    current ``await``, and the ``finally`` block closes the upstream
    connection, so that the upstream stops generating.

    NOTE: Starlette (1.10) watches for the disconnect only under servers that
    report ASGI spec 2.3 or older, as uvicorn 0.55 does. Under a 2.4 server it
    notices the disconnect at the next write, so a stalled upstream keeps
    this generator until the read timeout.
    """
    outcome = "cancelled (client disconnected)"
    events_sent = 0
    try:
        chunks = upstream_chunks(response, read_timeout_s=timeouts.read_s, secret=secret)
        async for event in relay_events(with_deadline(chunks, _remaining(started, timeouts))):
            yield event
            events_sent += 1
            if event.startswith(f"event: {DONE_EVENT}"):
                outcome = "done"
            elif event.startswith(f"event: {ERROR_EVENT}"):
                outcome = "error event: " + event.split('"code":"', 1)[-1].split('"', 1)[0]
    finally:
        # The response must close even while this task is being cancelled.
        with anyio.CancelScope(shield=True):
            await response.aclose()
        stats.open_upstream_requests -= 1
        if outcome == "done":
            stats.answers_completed += 1
        elif outcome.startswith("error"):
            stats.answers_failed += 1
        else:
            stats.client_disconnects += 1
        logger.info("chat %s: stream %s after %d events, %.0f ms", request_id, outcome, events_sent, _elapsed_ms(started))


async def _cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, but cancel it and raise :class:`ClientDisconnected` if the browser goes away first.

    Starlette notices a disconnect only while it sends a streaming body, so
    the wait for the upstream's first byte needs its own watch.
    """
    work_task = asyncio.ensure_future(work)
    disconnect_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect_task.cancel()
        if not work_task.done():
            work_task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(work_task, return_exceptions=True)
    if work_task.cancelled():
        raise ClientDisconnected()
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _remaining(started: float, timeouts: RouteTimeouts) -> float:
    return max(timeouts.deadline_s - (time.monotonic() - started), 0.0)


def _elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _static_text(name: str) -> str:
    return resources.files("lab_support.chat_app").joinpath("static", name).read_text(encoding="utf-8")
