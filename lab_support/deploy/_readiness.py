"""Liveness and readiness routes in the form load balancers and orchestrators expect.

- Liveness, ``GET /api/health``: the process runs and its event loop responds.
  It never calls the upstream, so an upstream outage does not get healthy
  replicas restarted.
- Readiness, ``GET /api/ready``: this replica can serve chats now. It requests
  the upstream's model list (``GET {base_url}/models``) and returns 200 when
  the pinned model is in it, else 503. On 503 the load balancer stops sending
  traffic here until the route returns 200 again.

Neither body contains the API key or the upstream URL.

    >>> app = create_app(...)
    >>> add_readiness_route(app, base_url=backend.base_url, model=backend.model)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import httpx
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from lab_support.deploy._masking import as_secret
from lab_support.deploy._pinning import is_pinned

logger = logging.getLogger(__name__)

READY_PATH = "/api/ready"
HEALTH_PATH = "/api/health"
# A probe that waits longer than a load balancer's probe timeout counts as failed there anyway.
DEFAULT_READINESS_TIMEOUT_S = 2.0
# Probes from several load balancers share one upstream check within this window.
DEFAULT_READINESS_CACHE_S = 1.0
MAX_LISTED_MODELS = 5

STATUS_READY = 200
STATUS_NOT_READY = 503


@dataclass(frozen=True)
class Readiness:
    """The outcome of one readiness check; ``reason`` is safe to send to clients."""

    ready: bool
    model: str
    reason: str
    checked_s: float

    @property
    def status_code(self) -> int:
        return STATUS_READY if self.ready else STATUS_NOT_READY

    def body(self) -> dict[str, object]:
        """Return the JSON body of the readiness route."""
        return {
            "status": "ready" if self.ready else "not ready",
            "model": self.model,
            "reason": self.reason,
            "check_ms": round(self.checked_s * 1000, 1),
        }


def _listed_models(payload: object) -> list[str] | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return None
    return [str(entry.get("id")) for entry in payload["data"] if isinstance(entry, dict)]


async def check_readiness(
    base_url: str,
    model: str,
    *,
    api_key: str | SecretStr | None = None,
    timeout_s: float = DEFAULT_READINESS_TIMEOUT_S,
    client: httpx.AsyncClient | None = None,
) -> Readiness:
    """Check that the upstream at ``base_url`` responds and lists ``model``, and that ``model`` is pinned."""
    started = time.perf_counter()

    def result(ready: bool, reason: str) -> Readiness:
        return Readiness(ready=ready, model=model, reason=reason, checked_s=time.perf_counter() - started)

    if not is_pinned(model):
        return result(False, f"model {model!r} is not pinned; set an exact version")

    headers = {}
    secret = as_secret(api_key)
    if secret is not None and secret.get_secret_value():
        headers["Authorization"] = f"Bearer {secret.get_secret_value()}"

    url = base_url.rstrip("/") + "/models"
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout_s) as own_client:
                response = await own_client.get(url, headers=headers)
        else:
            response = await client.get(url, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        return result(False, f"the upstream did not answer within {timeout_s:g} s")
    except httpx.HTTPError as error:
        # The error type is enough for an operator; its message can contain the upstream URL.
        return result(False, f"the upstream is unreachable ({type(error).__name__})")

    if response.status_code in (401, 403):
        return result(False, f"the upstream rejected the API key (HTTP {response.status_code})")
    if response.status_code != 200:
        return result(False, f"the upstream returned HTTP {response.status_code} for its model list")
    try:
        models = _listed_models(response.json())
    except ValueError:
        models = None
    if models is None:
        return result(False, "the upstream returned an invalid model list")
    if model not in models:
        listed = ", ".join(repr(name) for name in models[:MAX_LISTED_MODELS]) or "no models"
        return result(False, f"the upstream does not serve model {model!r}; it lists {listed}")
    return result(True, "the upstream serves the pinned model")


class ReadinessProbe:
    """A cached readiness check for one upstream and model, shared by concurrent probes."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | SecretStr | None = None,
        timeout_s: float = DEFAULT_READINESS_TIMEOUT_S,
        cache_s: float = DEFAULT_READINESS_CACHE_S,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"invalid readiness timeout_s {timeout_s!r}: use a number of seconds above 0")
        if cache_s < 0:
            raise ValueError(f"invalid readiness cache_s {cache_s!r}: use 0 (no cache) or more seconds")
        self.base_url = base_url
        self.model = model
        self._api_key = as_secret(api_key)
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._last: Readiness | None = None
        self._last_at = float("-inf")
        self._lock: asyncio.Lock | None = None
        self._was_ready: bool | None = None

    async def check(self) -> Readiness:
        """Return the cached result when it is fresher than ``cache_s``, else check the upstream."""
        # The lock is created on first use, in the event loop that serves the app.
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last_at < self.cache_s:
                return self._last
            readiness = await check_readiness(
                self.base_url, self.model, api_key=self._api_key, timeout_s=self.timeout_s
            )
            self._last, self._last_at = readiness, time.monotonic()
        if readiness.ready != self._was_ready:
            level = logging.INFO if readiness.ready else logging.WARNING
            logger.log(level, "readiness changed to %s for model %r: %s",
                       "ready" if readiness.ready else "not ready", self.model, readiness.reason)
            self._was_ready = readiness.ready
        return readiness

    def __repr__(self) -> str:
        return f"ReadinessProbe(model={self.model!r}, timeout_s={self.timeout_s}, cache_s={self.cache_s})"


def add_readiness_route(
    app,
    *,
    base_url: str,
    model: str,
    api_key: str | SecretStr | None = None,
    path: str = READY_PATH,
    timeout_s: float = DEFAULT_READINESS_TIMEOUT_S,
    cache_s: float = DEFAULT_READINESS_CACHE_S,
) -> ReadinessProbe:
    """Add ``GET {path}`` to a FastAPI app: 200 while the upstream serves ``model``, 503 otherwise.

    Returns the probe, so tests can call ``await probe.check()`` directly.
    """

    probe = ReadinessProbe(base_url, model, api_key=api_key, timeout_s=timeout_s, cache_s=cache_s)

    async def ready() -> JSONResponse:
        readiness = await probe.check()
        return JSONResponse(readiness.body(), status_code=readiness.status_code, headers={"Cache-Control": "no-store"})

    app.add_api_route(path, ready, methods=["GET"], name="ready", include_in_schema=True)
    return probe


def add_health_route(app, *, path: str = HEALTH_PATH) -> None:
    """Add a liveness route, ``GET {path}``, that returns 200 without calling the upstream."""

    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    app.add_api_route(path, health, methods=["GET"], name="health", include_in_schema=True)


def has_route(app, path: str) -> bool:
    """Return whether a Starlette or FastAPI app already has a route for ``path``."""
    return any(getattr(route, "path", None) == path for route in getattr(app, "routes", []))
