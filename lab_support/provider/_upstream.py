"""The upstream model server: its base URL, the HTTP client to it, and its errors in OpenAI shape."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx

# Generous, because a small CPU model may take a minute for a long reply.
DEFAULT_UPSTREAM_TIMEOUT_S = 120.0
UPSTREAM_CONNECT_TIMEOUT_S = 5.0
MAX_UPSTREAM_CONNECTIONS = 16


@dataclass(frozen=True)
class Upstream:
    """An OpenAI-compatible server (base URL ending in ``/v1``) and the model name it serves."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_UPSTREAM_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"invalid upstream base URL {self.base_url!r}: use http://host:port/v1")
        if not self.model:
            raise ValueError("missing upstream model name: pass upstream_model=, or an upstream with .model")
        if self.timeout_s <= 0:
            raise ValueError(f"invalid upstream timeout {self.timeout_s!r}: use seconds > 0")

    def create_client(self) -> httpx.AsyncClient:
        """Return a client for this upstream; the caller closes it."""
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.AsyncClient(
            base_url=self.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=UPSTREAM_CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=MAX_UPSTREAM_CONNECTIONS),
        )


class UpstreamError(Exception):
    """A failure of the upstream, as the status and OpenAI error the provider sends its client."""

    def __init__(self, status: int, message: str, *, type: str, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code


def error_from_exception(error: httpx.HTTPError, base_url: str) -> UpstreamError:
    """Map a transport error on the way to the upstream to 504 (timeout) or 502 (anything else)."""
    if isinstance(error, httpx.TimeoutException):
        return UpstreamError(
            504,
            f"The model server at {base_url} did not respond in time ({type(error).__name__}). Retry later.",
            type="server_error",
            code="upstream_timeout",
        )
    return UpstreamError(
        502,
        f"The model server at {base_url} could not be reached ({type(error).__name__}: {error}). "
        "Check that the upstream is running.",
        type="server_error",
        code="upstream_unavailable",
    )


def error_from_response(status: int, body: bytes) -> UpstreamError:
    """Map an upstream error response to the same status with an OpenAI error body."""
    message = _upstream_message(body) or f"The model server responded with HTTP {status}."
    # FastAPI servers such as llama.cpp's report invalid parameters as 422.
    if status == 422:
        status = 400
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return UpstreamError(status, message, type=error_type, code="upstream_error")


def _upstream_message(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:500] or None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if "detail" in payload:
            return json.dumps(payload["detail"])[:500]
    return json.dumps(payload)[:500]
