"""The finished chat route of lab 03: a browser page, ``POST /api/chat``, and an upstream model behind it.

    >>> from lab_support import serve_in_background, start_backend
    >>> from lab_support.chat_app import create_app
    >>> backend = start_backend()
    >>> app = create_app(upstream_base_url=backend.base_url, model=backend.model)
    >>> server = serve_in_background(app)      # open server.url in a browser
    >>> server.stop()

Or from a shell, with the upstream from ``LAB_CHAT_*`` settings or a local
model started for it: ``python -m lab_support.chat_app``.

Routes:

- ``GET /``: the chat page (``static/index.html`` and ``static/chat.js``);
- ``GET /api/health``: liveness, without calling the upstream;
- ``POST /api/chat``: body ``{"messages": [{"role", "content"}], "stream": true,
  "max_tokens": 256}``, of which only ``messages`` is required. With ``stream`` true (the default) the answer comes as
  Server-Sent Events, described in ``lab_support.chat_app._events``; with
  false, as ``{"answer", "finish_reason"}``. Errors before the first byte are
  JSON ``{"detail": "..."}`` with 400, 413, 415 or 422 for a bad request, and
  429, 502 or 504 for an upstream failure, described in
  ``lab_support.chat_app._upstream``.

The upstream key never leaves the server. It is a ``SecretStr``, sent only
in the upstream's ``Authorization`` header. Responses never quote the
upstream's error text, and log lines that quote it have the key replaced.
"""

from lab_support.chat_app._app import ClientDisconnected, RouteStats, create_app
from lab_support.chat_app._config import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_TOKENS,
    DEFAULT_READ_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_MESSAGES,
    MAX_OUTPUT_TOKENS,
    RouteTimeouts,
    UpstreamConfig,
)
from lab_support.chat_app._deadline import with_deadline
from lab_support.chat_app._errors import DeadlineExceeded, UpstreamBroken, UpstreamTimeout
from lab_support.chat_app._events import (
    DONE_EVENT,
    ERROR_EVENT,
    SSE_HEADERS,
    SSE_MEDIA_TYPE,
    describe_stream_error,
    error_event,
    relay_events,
    sse_event,
)
from lab_support.chat_app._schema import ChatRequest, Message, describe_validation_error, read_chat_request, require_json
from lab_support.chat_app._upstream import (
    complete,
    error_for_upstream,
    open_stream,
    redact,
    retry_after_header,
    upstream_body,
    upstream_chunks,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_READ_TIMEOUT_S",
    "DONE_EVENT",
    "ERROR_EVENT",
    "MAX_BODY_BYTES",
    "MAX_MESSAGES",
    "MAX_OUTPUT_TOKENS",
    "SSE_HEADERS",
    "SSE_MEDIA_TYPE",
    "ChatRequest",
    "ClientDisconnected",
    "DeadlineExceeded",
    "Message",
    "RouteStats",
    "RouteTimeouts",
    "UpstreamBroken",
    "UpstreamConfig",
    "UpstreamTimeout",
    "complete",
    "create_app",
    "describe_stream_error",
    "describe_validation_error",
    "error_event",
    "error_for_upstream",
    "open_stream",
    "read_chat_request",
    "redact",
    "relay_events",
    "require_json",
    "retry_after_header",
    "sse_event",
    "upstream_body",
    "upstream_chunks",
    "with_deadline",
]
