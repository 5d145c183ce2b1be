"""A stand-in upstream that streams at a fixed pace, for measuring the app in front of it.

The real local model shares this machine's CPU with the app being measured
and processes one request at a time, so measurements through it mix the
app's behaviour with the engine's. This upstream speaks the same
OpenAI-compatible protocol (``GET /v1/models``, and ``POST
/v1/chat/completions`` with or without ``stream``) but spends no CPU. It
sleeps ``ttft_s`` before the first token and ``interval_s`` between tokens,
for any number of concurrent requests, like a large GPU server that batches
requests.

    >>> with start_paced_upstream(tokens=20, interval_s=0.05) as upstream:
    ...     upstream.base_url, upstream.model, upstream.max_concurrent
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import SecretStr

from lab_support.asgi import BackgroundServer, serve_in_background
from lab_support.settings import PINNED_MODEL

DEFAULT_TOKENS = 20
DEFAULT_INTERVAL_S = 0.05
WORDS = ("The", " app", " streams", " each", " token", " as", " soon", " as", " it", " arrives", ".")


@dataclass
class PacedUpstream:
    """A running paced upstream; ``base_url`` ends with ``/v1``."""

    model: str
    tokens: int
    interval_s: float
    ttft_s: float
    _server: BackgroundServer = field(repr=False)
    _counters: dict[str, int] = field(repr=False)
    api_key: SecretStr | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        return self._server.url + "/v1"

    @property
    def requests(self) -> int:
        """Chat requests received so far."""
        return self._counters["requests"]

    @property
    def max_concurrent(self) -> int:
        """The largest number of chat requests in progress at the same time so far."""
        return self._counters["max_concurrent"]

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> PacedUpstream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _chunk(completion_id: str, model: str, created: int, delta: dict, finish_reason: str | None = None) -> str:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(payload)}\n\n"


def build_paced_app(
    *, model: str, tokens: int, interval_s: float, ttft_s: float, counters: dict[str, int], api_key: str | None = None
):
    """Return the FastAPI app of the paced upstream; ``counters`` receives request statistics.

    With ``api_key``, every route returns 401 unless the request sends ``Authorization: Bearer <api_key>``.
    """

    app = FastAPI(title="paced upstream")
    lock = threading.Lock()
    in_progress = [0]

    def enter() -> None:
        with lock:
            counters["requests"] += 1
            in_progress[0] += 1
            counters["max_concurrent"] = max(counters["max_concurrent"], in_progress[0])

    def leave() -> None:
        with lock:
            in_progress[0] -= 1

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            error = {"message": "Missing or invalid API key: send Authorization: Bearer <key>.",
                     "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
            return JSONResponse({"error": error}, status_code=401)
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "paced-upstream"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if body.get("model") != model:
            message = f"model {body.get('model')!r} not found; this upstream serves {model!r}"
            error = {"message": message, "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
            return JSONResponse({"error": error}, status_code=404)
        count = min(tokens, int(body.get("max_tokens") or tokens))
        pieces = [WORDS[i % len(WORDS)] for i in range(count)]
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        usage = {"prompt_tokens": 8, "completion_tokens": count, "total_tokens": 8 + count}

        if not body.get("stream"):
            enter()
            try:
                await asyncio.sleep(ttft_s + interval_s * max(count - 1, 0))
            finally:
                leave()
            message = {"role": "assistant", "content": "".join(pieces)}
            return {
                "id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "length"}], "usage": usage,
            }

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            enter()
            try:
                yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""})
                await asyncio.sleep(ttft_s)
                for index, piece in enumerate(pieces):
                    if index:
                        await asyncio.sleep(interval_s)
                    yield _chunk(completion_id, model, created, {"content": piece})
                yield _chunk(completion_id, model, created, {}, finish_reason="length")
                if include_usage:
                    last = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [], "usage": usage}
                    yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                leave()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def start_paced_upstream(
    *,
    model: str = PINNED_MODEL,
    tokens: int = DEFAULT_TOKENS,
    interval_s: float = DEFAULT_INTERVAL_S,
    ttft_s: float = 0.0,
    api_key: str | None = None,
) -> PacedUpstream:
    """Start a paced upstream on a free loopback port; each answer has at most ``tokens`` tokens.

    With ``api_key`` it rejects requests without that Bearer key, as a hosted provider does.
    """
    if tokens < 1:
        raise ValueError(f"invalid tokens {tokens!r}: use 1 or more")
    if interval_s < 0 or ttft_s < 0:
        raise ValueError(f"invalid pacing interval_s={interval_s!r}, ttft_s={ttft_s!r}: use 0 or more seconds")
    counters = {"requests": 0, "max_concurrent": 0}
    app = build_paced_app(
        model=model, tokens=tokens, interval_s=interval_s, ttft_s=ttft_s, counters=counters, api_key=api_key
    )
    server = serve_in_background(app)
    return PacedUpstream(
        model=model, tokens=tokens, interval_s=interval_s, ttft_s=ttft_s, _server=server, _counters=counters,
        api_key=None if api_key is None else SecretStr(api_key),
    )
