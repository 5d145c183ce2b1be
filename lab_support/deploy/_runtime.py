"""Three ways to run the same streaming relay, for measuring why an LLM route needs an async worker.

``build_relay_app(upstream, style=...)`` returns a FastAPI app whose
``POST /api/chat`` forwards an OpenAI-style stream from the upstream:

- ``"async"``: one event loop serves every stream; while a stream waits for
  its next token, the loop serves the others. This is a long-lived async
  worker (uvicorn), the Python counterpart of a Node.js server process.
- ``"workers"``: each stream occupies one of ``workers`` workers until it
  ends. A synchronous server (one request per thread or process) behaves
  like this, and so does a serverless platform that gives each request its
  own instance up to a concurrency limit.
- ``"blocking"``: an async route that calls a blocking HTTP client, a common
  mistake. The event loop stops for the whole stream, so every other
  request waits, health checks included.

``limit_request_time(app, seconds)`` cuts every response at a fixed duration,
the way a serverless platform ends a function at its time limit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import anyio
import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from lab_support.deploy._masking import as_secret

logger = logging.getLogger(__name__)

RelayStyle = Literal["async", "workers", "blocking"]
RELAY_STYLES = ("async", "workers", "blocking")
DEFAULT_WORKERS = 2
DEFAULT_RELAY_READ_TIMEOUT_S = 60.0
RELAY_CONNECT_TIMEOUT_S = 5.0
DEFAULT_RELAY_MAX_TOKENS = 32
ERROR_EVENT = 'event: error\ndata: {"message": "The upstream failed during the answer. Try again."}\n\n'


def _upstream_request(model: str, body: object) -> dict:
    """Build the upstream request from the app's body; raise HTTPException 422 for an invalid body."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise HTTPException(422, 'Invalid chat request: send {"messages": [{"role": "user", "content": "..."}]}.')
    max_tokens = body.get("max_tokens", DEFAULT_RELAY_MAX_TOKENS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise HTTPException(422, f"Invalid max_tokens {max_tokens!r}: send a whole number of 1 or more.")
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True}


def build_relay_app(
    upstream,
    *,
    style: RelayStyle = "async",
    workers: int = DEFAULT_WORKERS,
    read_timeout_s: float = DEFAULT_RELAY_READ_TIMEOUT_S,
):
    """Return a FastAPI relay app in front of ``upstream`` (an object with ``base_url`` and ``model``).

    The relay sends ``upstream.api_key`` when there is one, passes the
    upstream's OpenAI-style events through unchanged, and ends a stream that
    fails halfway with an ``event: error``.
    """
    if style not in RELAY_STYLES:
        raise ValueError(f"invalid relay style {style!r}; choose one of: {', '.join(RELAY_STYLES)}")
    if workers < 1:
        raise ValueError(f"invalid workers {workers!r}: use 1 or more")

    url = upstream.base_url.rstrip("/") + "/chat/completions"
    model = upstream.model
    key = as_secret(getattr(upstream, "api_key", None))
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
    timeout = httpx.Timeout(read_timeout_s, connect=RELAY_CONNECT_TIMEOUT_S)
    app = FastAPI(title=f"{style} relay")
    worker_slots: list[asyncio.Semaphore] = []

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok"}

    async def relay_async(payload: dict):
        try:
            async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:
                async with client.stream("POST", url, json=payload) as response:
                    async for line in response.aiter_lines():
                        yield line + "\n"
        except httpx.HTTPError as error:
            logger.warning("%s relay: upstream failed mid-stream: %s", style, type(error).__name__)
            yield ERROR_EVENT

    async def relay_in_worker(payload: dict):
        # The semaphore is created in the serving event loop on first use.
        if not worker_slots:
            worker_slots.append(asyncio.Semaphore(workers))
        async with worker_slots[0]:
            async for line in relay_async(payload):
                yield line

    async def relay_blocking(payload: dict):
        # Deliberately wrong: a blocking client inside an async generator stops the event loop.
        try:
            with httpx.Client(timeout=timeout, headers=headers) as client:
                with client.stream("POST", url, json=payload) as response:
                    for line in response.iter_lines():
                        yield line + "\n"
        except httpx.HTTPError as error:
            logger.warning("blocking relay: upstream failed mid-stream: %s", type(error).__name__)
            yield ERROR_EVENT

    relays = {"async": relay_async, "workers": relay_in_worker, "blocking": relay_blocking}

    @app.post("/api/chat")
    async def chat(request: Request) -> StreamingResponse:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "The request body is not valid JSON.") from None
        payload = _upstream_request(model, body)
        return StreamingResponse(relays[style](payload), media_type="text/event-stream")

    return app


class limit_request_time:  # noqa: N801 - used like a function: limit_request_time(app, seconds)
    """ASGI wrapper that stops every request after ``seconds``, like a serverless time limit."""

    def __init__(self, app, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"invalid time limit {seconds!r}: use a number of seconds above 0")
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        state = {"started": False, "finished": False}

        async def tracking_send(message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["finished"] = True
            await send(message)

        with anyio.move_on_after(self.seconds) as limit:
            await self.app(scope, receive, tracking_send)
        if not limit.cancelled_caught:
            return

        logger.info("cut %s %s at the %g s time limit", scope.get("method"), scope.get("path"), self.seconds)
        if not state["started"]:
            await send({"type": "http.response.start", "status": 504, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"time limit reached before the response started"})
        elif not state["finished"]:
            # End the body where it is: the client gets a stream without its done event.
            await send({"type": "http.response.body", "body": b"", "more_body": False})
