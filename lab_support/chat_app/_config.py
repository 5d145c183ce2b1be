"""Limits and timeouts of the chat route, and where its upstream is."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr

# The request body: a conversation of at most MAX_MESSAGES messages in at most
# MAX_BODY_BYTES of JSON. 64 KiB is about 16,000 tokens of English, far more
# than the bundled model's 2,048-token context.
MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGES = 50
DEFAULT_MAX_TOKENS = 256
MAX_OUTPUT_TOKENS = 1024

# The upstream call. The read timeout bounds each wait for the next bytes:
# the response headers, or the next chunk of a stream. The deadline bounds the
# whole answer, because a stream that drips a chunk every few seconds never
# trips a per-read timeout.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_DEADLINE_S = 120.0
MAX_UPSTREAM_CONNECTIONS = 100


@dataclass(frozen=True)
class RouteTimeouts:
    """How long the route waits on the upstream, in seconds.

    ``connect_s`` bounds opening a connection (and waiting for a free one in
    the pool), ``read_s`` each read, and ``deadline_s`` the whole answer, from
    the request's arrival to the last event.
    """

    connect_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_s: float = DEFAULT_READ_TIMEOUT_S
    deadline_s: float = DEFAULT_DEADLINE_S

    def __post_init__(self) -> None:
        for name in ("connect_s", "read_s", "deadline_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"invalid {name} {value!r}: use a number of seconds greater than 0")

    def httpx_timeout(self) -> httpx.Timeout:
        """Return httpx's per-operation timeouts. The route enforces the deadline itself."""
        return httpx.Timeout(connect=self.connect_s, read=self.read_s, write=self.connect_s, pool=self.connect_s)


@dataclass(frozen=True)
class UpstreamConfig:
    """The OpenAI-compatible server the route forwards to: base URL (ending in /v1), key and model."""

    base_url: str
    model: str
    api_key: SecretStr | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"invalid upstream base URL {self.base_url!r}: use an OpenAI-compatible URL such as http://127.0.0.1:8080/v1"
            )
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("missing upstream model name: pass model=, as served by the upstream's GET /v1/models")
        if self.api_key is not None and not isinstance(self.api_key, SecretStr):
            raise TypeError("api_key must be a pydantic SecretStr (or None), so that it never shows in a repr or log line")

    def create_client(self, timeouts: RouteTimeouts) -> httpx.AsyncClient:
        """Return an httpx client for the upstream, with the key in its default headers; the caller closes it."""
        headers = {}
        if self.api_key is not None and self.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        return httpx.AsyncClient(
            base_url=self.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=timeouts.httpx_timeout(),
            limits=httpx.Limits(max_connections=MAX_UPSTREAM_CONNECTIONS),
        )
