"""Readiness and liveness: status codes a load balancer understands, and no secret in the body."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import string
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from lab_support._net import LOOPBACK, free_port
from lab_support.asgi import serve_in_background
from lab_support.deploy import (
    PacedUpstream,
    ReadinessProbe,
    add_health_route,
    add_readiness_route,
    check_readiness,
    create_deployable_app,
    has_route,
    start_paced_upstream,
)
from lab_support.deploy._pinning import UnpinnedModelError

RANDOM = random.Random(11)
KEY = "sk-lab-" + "".join(RANDOM.choice(string.ascii_letters + string.digits) for _ in range(32))


@pytest.fixture(scope="module")
def upstream() -> Iterator[PacedUpstream]:
    with start_paced_upstream(api_key=KEY, tokens=6, interval_s=0.01) as running:
        yield running


@pytest.fixture()
def silent_url() -> Iterator[str]:
    """A base URL whose server accepts connections and never responds."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(4)
    try:
        yield f"http://{LOOPBACK}:{listener.getsockname()[1]}/v1"
    finally:
        listener.close()


def check(*args, **kwargs):
    return asyncio.run(check_readiness(*args, **kwargs))


def test_ready_when_model_listed(upstream: PacedUpstream):
    readiness = check(upstream.base_url, upstream.model, api_key=KEY)

    assert readiness.ready
    assert readiness.status_code == 200
    assert readiness.body()["status"] == "ready"
    assert readiness.body()["model"] == upstream.model


def test_not_ready_when_model_missing(upstream: PacedUpstream):
    readiness = check(upstream.base_url, "other-model-v1", api_key=KEY)

    assert readiness.status_code == 503
    assert "does not serve model 'other-model-v1'" in readiness.reason
    assert upstream.model in readiness.reason


def test_not_ready_when_key_rejected(upstream: PacedUpstream):
    readiness = check(upstream.base_url, upstream.model, api_key="sk-lab-wrong")

    assert readiness.status_code == 503
    assert "rejected the API key (HTTP 401)" in readiness.reason


def test_not_ready_when_refused():
    readiness = check(f"http://{LOOPBACK}:{free_port()}/v1", "m-1")

    assert readiness.status_code == 503
    assert readiness.reason == "the upstream is unreachable (ConnectError)"


def test_not_ready_within_timeout(silent_url: str):
    readiness = check(silent_url, "m-1", timeout_s=0.3)

    assert readiness.status_code == 503
    assert "did not answer within 0.3 s" in readiness.reason
    assert readiness.checked_s < 2.0


def test_not_ready_for_floating_model(upstream: PacedUpstream):
    readiness = check(upstream.base_url, "latest", api_key=KEY)

    assert readiness.status_code == 503
    assert "not pinned" in readiness.reason


def test_not_ready_for_invalid_model_list():
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> list:
        return ["not", "a", "list", "object"]

    with serve_in_background(app) as server:
        readiness = check(server.url + "/v1", "m-1")

    assert readiness.status_code == 503
    assert readiness.reason == "the upstream returned an invalid model list"


def test_probe_validates_options():
    with pytest.raises(ValueError, match="timeout_s 0"):
        ReadinessProbe("http://127.0.0.1:1/v1", "m-1", timeout_s=0)
    with pytest.raises(ValueError, match="cache_s -1"):
        ReadinessProbe("http://127.0.0.1:1/v1", "m-1", cache_s=-1)


def test_probe_caches_results(upstream: PacedUpstream):
    probe = ReadinessProbe(upstream.base_url, upstream.model, api_key=KEY, cache_s=60)

    async def twice():
        return await probe.check(), await probe.check()

    first, second = asyncio.run(twice())

    assert first is second


def test_routes_answer_200_then_503(upstream: PacedUpstream):
    app = FastAPI()
    add_health_route(app)
    add_readiness_route(app, base_url=upstream.base_url, model=upstream.model, api_key=KEY, cache_s=0)
    with serve_in_background(app) as server:
        ready = httpx.get(server.url + "/api/ready")
        health = httpx.get(server.url + "/api/health")
    missing = FastAPI()
    add_readiness_route(missing, base_url=upstream.base_url, model="gone-model-v1", api_key=KEY)
    with serve_in_background(missing) as server:
        not_ready = httpx.get(server.url + "/api/ready")

    assert ready.status_code == 200
    assert ready.json()["model"] == upstream.model
    assert ready.headers["cache-control"] == "no-store"
    assert health.status_code == 200
    assert not_ready.status_code == 503
    assert not_ready.json()["status"] == "not ready"
    for response in (ready, health, not_ready):
        assert KEY not in response.text
        assert upstream.url not in response.text


def test_has_route():
    app = FastAPI()
    add_health_route(app)

    assert has_route(app, "/api/health")
    assert not has_route(app, "/api/ready")


def test_deployable_app_has_both_routes(upstream: PacedUpstream):
    app = create_deployable_app(upstream_base_url=upstream.base_url, model=upstream.model, upstream_api_key=KEY)

    with serve_in_background(app) as server:
        ready = httpx.get(server.url + "/api/ready")
        health = httpx.get(server.url + "/api/health")

    assert ready.status_code == 200
    assert health.status_code == 200
    assert KEY not in json.dumps(ready.json())


def test_deployable_app_rejects_floating_model(upstream: PacedUpstream):
    floating_name = "llama3:latest"

    with pytest.raises(UnpinnedModelError, match="'llama3:latest'"):
        create_deployable_app(upstream_base_url=upstream.base_url, model=floating_name)
