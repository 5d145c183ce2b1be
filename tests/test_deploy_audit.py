"""The audit passes the reference app and fails, item by item, apps that each break one checklist rule.

The apps run in front of a simulated provider whose tokens come from a paced
stand-in upstream, so each audit takes seconds and does not depend on the
speed of the CPU. The apps use a 1 s read timeout and the audits a 3 s stall
limit for the same reason.
"""

from __future__ import annotations

import asyncio
import random
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from lab_support.asgi import serve_in_background
from lab_support.chat_app import RouteTimeouts, create_app
from lab_support.deploy import (
    ITEM_ORDER,
    AuditReport,
    add_readiness_route,
    audit,
    build_relay_app,
    check_readiness,
    create_deployable_app,
    start_paced_upstream,
)
from lab_support.provider import Provider, start_provider

def made_up_key(prefix: str, length: int, *, seed: int) -> str:
    generator = random.Random(seed)
    return prefix + "".join(generator.choice(string.ascii_letters + string.digits) for _ in range(length))


FAST_TIMEOUTS = RouteTimeouts(connect_s=2.0, read_s=1.0, deadline_s=30.0)
STALL_LIMIT_S = 3.0


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with start_paced_upstream(tokens=24, interval_s=0.02) as upstream:
        with start_provider(upstream=upstream, models=upstream.model) as running:
            yield running


@pytest.fixture(scope="module")
def clean_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean-repo")
    (root / ".gitignore").write_text(".env\n")
    (root / "app.py").write_text('import os\n\nMODEL = os.environ["LAB_MODEL"]\n')
    return root


def key_of(provider: Provider) -> str:
    return provider.api_key.get_secret_value()


def reference_app(provider: Provider, **options) -> FastAPI:
    options.setdefault("timeouts", FAST_TIMEOUTS)
    return create_deployable_app(
        upstream_base_url=provider.base_url, model=provider.model, upstream_api_key=provider.api_key, **options
    )


def run_audit(app_or_url, provider: Provider | None, repo: Path | None, **options) -> AuditReport:
    return audit(app_or_url, upstream=provider, repo=repo, stall_limit_s=STALL_LIMIT_S, show=False, **options)


def assert_fails_only(report: AuditReport, expected: set[str]) -> None:
    assert set(report.failed) == expected, report.text()
    assert report.skipped == [], report.text()
    for item_id in expected:
        item = report.item(item_id)
        assert item.fix, f"{item_id} failed without a fix"
        assert item.detail


# Apps that break one rule each.


def app_without_readiness(provider: Provider) -> FastAPI:
    return create_app(upstream_base_url=provider.base_url, model=provider.model,
                      upstream_api_key=SecretStr(key_of(provider)), timeouts=FAST_TIMEOUTS)


def app_always_ready(provider: Provider) -> FastAPI:
    app = app_without_readiness(provider)

    @app.get("/api/ready")
    async def ready() -> dict:
        return {"status": "ready", "model": provider.model}

    return app


def app_with_leaky_readiness(provider: Provider) -> FastAPI:
    app = app_without_readiness(provider)

    @app.get("/api/ready")
    async def ready() -> JSONResponse:
        readiness = await check_readiness(provider.base_url, provider.model, api_key=key_of(provider))
        body = {**readiness.body(), "debug": {"authorization": f"Bearer {key_of(provider)}"}}
        return JSONResponse(body, status_code=readiness.status_code)

    return app


def app_with_upstream_liveness(provider: Provider) -> FastAPI:
    app = reference_app(provider)

    @app.middleware("http")
    async def health_calls_upstream(request: Request, call_next):
        if request.url.path == "/api/health":
            readiness = await check_readiness(provider.base_url, provider.model, api_key=key_of(provider))
            return JSONResponse({"status": "ok" if readiness.ready else "down"}, status_code=readiness.status_code)
        return await call_next(request)

    return app


def app_without_liveness(provider: Provider) -> FastAPI:
    app = reference_app(provider)

    @app.middleware("http")
    async def no_health(request: Request, call_next):
        if request.url.path == "/api/health":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return await call_next(request)

    return app


def app_with_slow_liveness(provider: Provider) -> FastAPI:
    app = reference_app(provider)

    @app.middleware("http")
    async def slow_health(request: Request, call_next):
        if request.url.path == "/api/health":
            await asyncio.sleep(1.5)
        return await call_next(request)

    return app


def app_with_tracebacks(provider: Provider) -> FastAPI:
    app = reference_app(provider)

    @app.exception_handler(HTTPException)
    async def debug_page(request: Request, error: HTTPException) -> PlainTextResponse:
        text = f"Traceback (most recent call last):\n  File \"app.py\", line 1\nHTTPException: {error.detail}"
        return PlainTextResponse(text, status_code=500)

    return app


class ChatBody(BaseModel):
    messages: list[dict]
    max_tokens: int = 16


def app_without_streaming(provider: Provider) -> FastAPI:
    app = FastAPI()

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/api/chat")
    async def chat(body: ChatBody) -> dict:
        request = {"model": provider.model, "messages": body.messages, "max_tokens": body.max_tokens}
        headers = {"Authorization": f"Bearer {key_of(provider)}"}
        async with httpx.AsyncClient(timeout=httpx.Timeout(1.0, connect=2.0)) as client:
            try:
                response = await client.post(provider.base_url + "/chat/completions", json=request, headers=headers)
            except httpx.TimeoutException:
                raise HTTPException(504, "The model provider did not respond in time.") from None
        if response.status_code != 200:
            raise HTTPException(502, "The model provider failed.")
        return {"answer": response.json()["choices"][0]["message"]["content"]}

    add_readiness_route(app, base_url=provider.base_url, model=provider.model, api_key=key_of(provider))
    return app


def app_with_blocking_relay(provider: Provider) -> FastAPI:
    app = build_relay_app(provider, style="blocking", read_timeout_s=1.0)
    add_readiness_route(app, base_url=provider.base_url, model=provider.model, api_key=key_of(provider))
    return app


def app_without_stall_timeout(provider: Provider) -> FastAPI:
    return reference_app(provider, timeouts=RouteTimeouts(read_s=60.0, deadline_s=120.0))


class PlainSettings(BaseSettings):
    """Settings that keep the key as a plain str, so repr() shows it."""

    model_config = SettingsConfigDict(env_prefix="LAB_TEST_", env_file=None)

    model: str = "smollm2-135m-instruct-q4_1"
    api_key: str = made_up_key("sk-lab-", 30, seed=21)


# The tests.


def test_reference_app_passes(provider: Provider, clean_repo: Path):
    report = run_audit(reference_app(provider), provider, clean_repo)

    assert report.ok, report.text()
    assert [item.id for item in report.items] == list(ITEM_ORDER)
    assert "11 of 11 items passed" in report.text()
    assert "What to fix" not in report.text()


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (app_without_readiness, {"readiness", "outage", "pinned-model"}),
        (app_always_ready, {"outage"}),
        (app_with_leaky_readiness, {"no-secrets"}),
        (app_with_upstream_liveness, {"outage"}),
        (app_without_liveness, {"liveness", "outage"}),
        (app_with_slow_liveness, {"liveness", "concurrency"}),
        (app_with_tracebacks, {"bad-input"}),
        (app_without_streaming, {"streaming"}),
        (app_with_blocking_relay, {"concurrency"}),
        (app_without_stall_timeout, {"stall"}),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_broken_app_fails_its_item(provider: Provider, clean_repo: Path, build, expected: set[str]):
    report = run_audit(build(provider), provider, clean_repo)

    assert_fails_only(report, expected)


def test_outage_detail_names_liveness(provider: Provider, clean_repo: Path):
    report = run_audit(app_with_upstream_liveness(provider), provider, clean_repo, items=["outage"])

    assert "/api/health returned HTTP 503" in report.item("outage").detail


def test_leak_is_reported_masked(provider: Provider, clean_repo: Path):
    report = run_audit(app_with_leaky_readiness(provider), provider, clean_repo, items=["readiness", "no-secrets"])

    detail = report.item("no-secrets").detail
    assert "readiness response" in detail
    assert key_of(provider) not in report.text()
    assert key_of(provider) not in report._repr_html_()


def test_floating_model_in_code_fails(provider: Provider, tmp_path: Path):
    (tmp_path / ".gitignore").write_text(".env\n")
    (tmp_path / "app.py").write_text('client.chat.completions.create(model="llama3:latest", messages=[])\n')

    report = run_audit(reference_app(provider), provider, tmp_path, items=["readiness", "pinned-model", "repository"])

    assert report.failed == ["pinned-model"], report.text()
    assert "app.py line 1: 'llama3:latest'" in report.item("pinned-model").detail


def test_key_in_repository_fails(provider: Provider, tmp_path: Path):
    key = made_up_key("sk-proj-", 40, seed=31)
    (tmp_path / ".gitignore").write_text(".env\n")
    (tmp_path / "config.py").write_text(f'OPENAI_API_KEY = "{key}"\n')

    report = run_audit(reference_app(provider), provider, tmp_path)

    assert_fails_only(report, {"repository"})
    assert key not in report.text()
    assert "config.py line 1" in report.item("repository").detail


def test_committed_env_fails(provider: Provider, tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / ".env").write_text("LAB_HOSTED_API_KEY=\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", ".env"], check=True)

    report = run_audit(reference_app(provider), provider, root, items=["repository"])

    assert report.failed == ["repository"]
    assert "committed-env-file" in report.item("repository").detail or "gitignore" in report.item("repository").detail


def test_plain_str_secret_in_settings_fails(provider: Provider, clean_repo: Path):
    settings = PlainSettings()

    report = run_audit(reference_app(provider), provider, clean_repo, settings=settings)

    assert_fails_only(report, {"settings"})
    assert "api_key" in report.item("settings").detail


def test_url_target_without_provider_skips(provider: Provider, clean_repo: Path):
    with serve_in_background(reference_app(provider)) as server:
        report = run_audit(server.url, None, clean_repo)

    assert report.failed == [], report.text()
    assert report.skipped == ["outage", "stall"]
    assert not report.ok
    assert "upstream=provider" in report.item("outage").fix


def test_missing_repo_skips_repository(provider: Provider):
    report = run_audit(reference_app(provider), provider, None, items=["readiness", "repository"])

    assert report.skipped == ["repository"]
    assert "repo=" in report.item("repository").fix


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "http://example.invalid:80"])
def test_remote_url_rejected(url: str):
    with pytest.raises(ValueError, match="not a loopback address"):
        audit(url, show=False)


def test_unknown_item_rejected(provider: Provider):
    with pytest.raises(ValueError, match="unknown audit item"):
        audit("http://127.0.0.1:9", items=["liveness", "speed"], show=False)


def test_missing_repo_folder_rejected(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not found"):
        audit("http://127.0.0.1:9", repo=tmp_path / "nowhere", show=False)


def test_report_html_and_repr(provider: Provider, clean_repo: Path):
    report = run_audit(app_always_ready(provider), provider, clean_repo, items=["liveness", "outage"])

    html = report._repr_html_()
    assert "<table>" in html
    assert "outage" in html
    assert repr(report) == f"AuditReport(target={report.target!r}, ok=False, failed=['outage'], skipped=[])"
    with pytest.raises(KeyError, match="no audit item 'speed'"):
        report.item("speed")
