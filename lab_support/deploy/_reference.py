"""The reference deployable app: the chat route of lab 03 plus a readiness route and deployment timeouts."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import SecretStr

from lab_support.chat_app import RouteTimeouts, create_app
from lab_support.deploy._masking import as_secret
from lab_support.deploy._pinning import require_pinned
from lab_support.deploy._readiness import DEFAULT_READINESS_CACHE_S, DEFAULT_READINESS_TIMEOUT_S, add_readiness_route
from lab_support.settings import get_settings

# A stalled upstream is noticed after 15 s without a byte, inside the audit's
# 20 s stall limit, yet long enough for a first token from a busy CPU engine.
# One answer may take at most 2 minutes.
DEPLOY_TIMEOUTS = RouteTimeouts(connect_s=5.0, read_s=15.0, deadline_s=120.0)


def create_deployable_app(
    *,
    upstream_base_url: str,
    model: str,
    upstream_api_key: SecretStr | str | object | None = None,
    timeouts: RouteTimeouts = DEPLOY_TIMEOUTS,
    readiness_timeout_s: float | None = None,
    readiness_cache_s: float | None = None,
) -> FastAPI:
    """Build the chat app with ``GET /api/ready``; raise UnpinnedModelError for a floating ``model``.

    ``upstream_api_key`` may be a str, a SecretStr or a provider's ``ApiKey``.

    Readiness options left as None come from ``LAB_READINESS_TIMEOUT_S`` and
    ``LAB_READINESS_CACHE_S``, else the defaults of :func:`add_readiness_route`.
    """
    require_pinned(model, setting="model")
    settings = get_settings()
    if readiness_timeout_s is None:
        readiness_timeout_s = settings.readiness_timeout_s or DEFAULT_READINESS_TIMEOUT_S
    if readiness_cache_s is None:
        readiness_cache_s = DEFAULT_READINESS_CACHE_S if settings.readiness_cache_s is None else settings.readiness_cache_s
    api_key = as_secret(upstream_api_key)
    app = create_app(upstream_base_url=upstream_base_url, model=model, upstream_api_key=api_key, timeouts=timeouts)
    add_readiness_route(
        app,
        base_url=upstream_base_url,
        model=model,
        api_key=api_key,
        timeout_s=readiness_timeout_s,
        cache_s=readiness_cache_s,
    )
    return app
