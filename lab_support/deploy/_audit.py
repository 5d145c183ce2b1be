"""The deployment checklist as an audit you run against your own app.

    >>> report = audit(app, upstream=provider, repo="..")
    ITEM  RESULT  DETAIL
    ...
    >>> report.ok
    True

``audit`` serves an app object on a loopback port for the audit (or takes the
URL of one already running on this machine), runs each checklist item, and
prints a table with what passed, what failed, and what to fix. Items that
need something the call did not provide (a provider that can be taken
offline, a repository folder) are reported as skipped, and a report with a
skipped item is not ``ok``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from httpx_sse import EventSource
from pydantic import SecretStr

from lab_support.asgi import serve_in_background
from lab_support.deploy._loadtest import chat_body, interpret_event, run_load_test
from lab_support.deploy._loopback import require_loopback_url
from lab_support.deploy._masking import mask_secret, secret_values
from lab_support.deploy._pinning import find_unpinned_models, is_pinned
from lab_support.deploy._readiness import HEALTH_PATH, READY_PATH
from lab_support.deploy._secrets import find_secrets_in_text, scan_secrets
from lab_support.deploy._table import html_table, text_table

logger = logging.getLogger(__name__)

CHAT_PATH = "/api/chat"
REQUEST_TIMEOUT_S = 30.0
# Liveness must respond faster than a load balancer's probe timeout, typically a few seconds.
LIVENESS_MAX_S = 1.0
# How long readiness may take to notice an outage: a 1 s result cache plus a 2 s upstream
# timeout, and a margin. Recovery may take longer, because the upstream restarts first.
OUTAGE_DETECT_S = 4.0
RECOVERY_S = 15.0
POLL_INTERVAL_S = 0.25
# A stalled upstream must end the stream (with an error event) within this time by default.
DEFAULT_STALL_LIMIT_S = 20.0
STALL_EXTRA_S = 10.0
CONCURRENT_STREAMS = 3
STREAM_MAX_TOKENS = 16
CONCURRENCY_MAX_TOKENS = 8
# Statuses by which an app turns away load instead of serving it.
REJECTED_STATUSES = frozenset({"HTTP 429", "HTTP 503"})
# 7 gaps of 0.2 s make each stream last at least 1.4 s.
CONCURRENCY_DRIP_S = 0.2
MIN_STREAM_EVENTS = 2
TRACEBACK_MARKER = "Traceback (most recent call last)"
SECRET_FIELD = re.compile(r"(?i)(api_?key|token|secret|password|passwd)$")

Status = Literal["pass", "fail", "skipped"]
ITEM_ORDER = (
    "liveness", "readiness", "streaming", "bad-input", "concurrency", "outage",
    "stall", "pinned-model", "settings", "repository", "no-secrets",
)


@dataclass(frozen=True)
class AuditItem:
    """One checklist item: its outcome, what was measured, and what to change when it did not pass."""

    id: str
    title: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class AuditReport:
    """Every checklist item of one audit, in checklist order."""

    target: str
    items: list[AuditItem] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every item ran and passed."""
        return bool(self.items) and all(item.passed for item in self.items)

    @property
    def failed(self) -> list[str]:
        return [item.id for item in self.items if item.status == "fail"]

    @property
    def skipped(self) -> list[str]:
        return [item.id for item in self.items if item.status == "skipped"]

    def item(self, item_id: str) -> AuditItem:
        """Return the item with id ``item_id``; raise KeyError naming the ids present."""
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(f"no audit item {item_id!r}; this report has {[i.id for i in self.items]}")

    def _rows(self) -> list[tuple[str, str, str, str]]:
        return [
            (item.id, item.status.upper(), item.detail, "" if item.passed else item.fix)
            for item in self.items
        ]

    def text(self) -> str:
        """Format the report as plain text: a summary line, then one row per item."""
        passed = sum(item.passed for item in self.items)
        lines = [f"Audit of {self.target}: {passed} of {len(self.items)} items passed in {self.duration_s:.1f} s"]
        lines.append(text_table(("ITEM", "RESULT", "DETAIL"), [row[:3] for row in self._rows()]))
        to_fix = [item for item in self.items if not item.passed]
        if to_fix:
            lines.append("")
            lines.append("What to fix:")
            lines.extend(f"  {item.id}: {item.fix}" for item in to_fix)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        passed = sum(item.passed for item in self.items)
        colours = {"pass": "#1a7f37", "fail": "#b42318", "skipped": "#9a6700"}
        table = html_table(
            ("item", "result", "detail", "what to fix"),
            self._rows(),
            row_colours=[colours[item.status] for item in self.items],
        )
        return f"<p><strong>Audit of {self.target}: {passed} of {len(self.items)} items passed</strong></p>{table}"

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"AuditReport(target={self.target!r}, ok={self.ok}, failed={self.failed}, skipped={self.skipped})"


class _Outcome(Exception):
    """Raised inside a check to end it with a result."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _fail(detail: str) -> _Outcome:
    return _Outcome("fail", detail)


def _skip(detail: str) -> _Outcome:
    return _Outcome("skipped", detail)


@dataclass(frozen=True)
class _Check:
    title: str
    fix: str
    run: Callable[[_Auditor], str]


class _Auditor:
    """The state of one audit: the app's URL, what the checks need, and the response bodies seen so far."""

    def __init__(
        self,
        url: str,
        *,
        upstream: Any,
        settings: Any,
        secrets: Sequence[str],
        pinned_model: str | None,
        repo: Path | None,
        stall_limit_s: float,
        chat_path: str,
        health_path: str,
        ready_path: str,
    ) -> None:
        self.url = url
        self.upstream = upstream
        self.settings = settings
        self.secrets = list(secrets)
        self.pinned_model = pinned_model
        self.repo = repo
        self.stall_limit_s = stall_limit_s
        self.chat_path = chat_path
        self.health_path = health_path
        self.ready_path = ready_path
        self.client = httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S)
        self.bodies: list[tuple[str, str]] = []
        self.ready_model: str | None = None

    def get(self, path: str, label: str) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        response = self.client.get(path)
        elapsed = time.perf_counter() - started
        self.bodies.append((label, response.text))
        return response, elapsed

    def post(self, label: str, **options: Any) -> httpx.Response:
        response = self.client.post(self.chat_path, **options)
        self.bodies.append((label, response.text))
        return response

    def wait_for_ready_status(self, expected: int, limit_s: float, label: str) -> tuple[int, float]:
        """Poll readiness until it returns ``expected`` or ``limit_s`` passes; return the last status and the wait."""
        started = time.perf_counter()
        status = 0
        while True:
            try:
                status = self.get(self.ready_path, label)[0].status_code
            except httpx.HTTPError:
                status = 0
            waited = time.perf_counter() - started
            if status == expected or waited >= limit_s:
                return status, waited
            time.sleep(POLL_INTERVAL_S)

    def close(self) -> None:
        self.client.close()


def _json(response: httpx.Response) -> dict | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _check_liveness(auditor: _Auditor) -> str:
    try:
        response, elapsed = auditor.get(auditor.health_path, "liveness response")
    except httpx.HTTPError as error:
        raise _fail(f"GET {auditor.health_path} failed: {type(error).__name__}: {error}") from None
    if response.status_code != 200:
        raise _fail(f"GET {auditor.health_path} returned HTTP {response.status_code}, expected 200")
    if elapsed > LIVENESS_MAX_S:
        raise _fail(f"GET {auditor.health_path} took {elapsed:.2f} s, more than {LIVENESS_MAX_S:g} s")
    return f"200 in {elapsed * 1000:.0f} ms"


def _check_readiness(auditor: _Auditor) -> str:
    try:
        response, elapsed = auditor.get(auditor.ready_path, "readiness response")
    except httpx.HTTPError as error:
        raise _fail(f"GET {auditor.ready_path} failed: {type(error).__name__}: {error}") from None
    if response.status_code == 404:
        raise _fail(f"GET {auditor.ready_path} returned 404: the app has no readiness route")
    if response.status_code != 200:
        raise _fail(f"GET {auditor.ready_path} returned HTTP {response.status_code} while the upstream is up, expected 200")
    body = _json(response)
    model = body.get("model") if body else None
    if not isinstance(model, str) or not model:
        raise _fail(f"the readiness body has no \"model\" field, so a probe cannot tell which model is served: {response.text[:120]!r}")
    auditor.ready_model = model
    if auditor.pinned_model is not None and model != auditor.pinned_model:
        raise _fail(f"readiness reports model {model!r}, but the pinned model is {auditor.pinned_model!r}")
    return f"200 in {elapsed * 1000:.0f} ms, model {model!r}"


def _read_stream(auditor: _Auditor, body: dict, label: str, *, read_limit_s: float) -> dict[str, Any]:
    """POST a chat request and read its events; return the status, event counts, timings and how it ended."""
    result: dict[str, Any] = {
        "status": None, "content_type": "", "texts": 0, "ttft_s": None, "ended": "closed", "text": "", "duration_s": 0.0,
    }
    started = time.perf_counter()
    timeout = httpx.Timeout(read_limit_s, connect=5.0)
    try:
        with auditor.client.stream("POST", auditor.chat_path, json=body, timeout=timeout) as response:
            result["status"] = response.status_code
            result["content_type"] = response.headers.get("content-type", "")
            if response.status_code != 200 or "text/event-stream" not in result["content_type"]:
                response.read()
                auditor.bodies.append((label, response.text))
                return result
            pieces = []
            for event in EventSource(response).iter_sse():
                meaning = interpret_event(event)
                if meaning.error is not None:
                    result["ended"] = "error event"
                    pieces.append(event.data)
                    break
                if meaning.text:
                    pieces.append(meaning.text)
                    result["texts"] += 1
                    if result["ttft_s"] is None:
                        result["ttft_s"] = time.perf_counter() - started
                if meaning.done:
                    result["ended"] = "done"
                    break
                if time.perf_counter() - started > read_limit_s:
                    result["ended"] = "still running"
                    break
            result["text"] = "".join(pieces)
            auditor.bodies.append((label, result["text"]))
    except httpx.TimeoutException:
        result["ended"] = "still running"
    except httpx.HTTPError as error:
        result["ended"] = f"failed ({type(error).__name__})"
    finally:
        result["duration_s"] = time.perf_counter() - started
    return result


def _check_streaming(auditor: _Auditor) -> str:
    result = _read_stream(auditor, chat_body(max_tokens=STREAM_MAX_TOKENS), "chat stream", read_limit_s=REQUEST_TIMEOUT_S)
    if result["status"] != 200:
        raise _fail(f"POST {auditor.chat_path} returned HTTP {result['status']}, expected 200")
    if "text/event-stream" not in result["content_type"]:
        raise _fail(f"the response is {result['content_type'] or 'untyped'!r}, not text/event-stream, so nothing reaches the user before the end")
    if result["texts"] < MIN_STREAM_EVENTS:
        raise _fail(f"the stream carried {result['texts']} text event(s); expected at least {MIN_STREAM_EVENTS}")
    if result["ended"] != "done":
        raise _fail(f"the stream ended with {result['ended']!r} instead of a done event")
    return (
        f"{result['texts']} text events, first after {result['ttft_s']:.2f} s, "
        f"done after {result['duration_s']:.2f} s"
    )


BAD_REQUESTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("body that is not JSON", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
    ("JSON without messages", {"json": {}}),
    ("messages of the wrong type", {"json": {"messages": "hello"}}),
)


def _check_bad_input(auditor: _Auditor) -> str:
    statuses = []
    for description, options in BAD_REQUESTS:
        try:
            response = auditor.post(f"response to a {description}", **options)
        except httpx.HTTPError as error:
            raise _fail(f"a {description} broke the connection ({type(error).__name__}) instead of getting a 4xx") from None
        if not 400 <= response.status_code < 500:
            raise _fail(f"a {description} got HTTP {response.status_code}, expected a 4xx status")
        if TRACEBACK_MARKER in response.text:
            raise _fail(f"the response to a {description} contains a Python traceback")
        statuses.append(str(response.status_code))
    return f"statuses {', '.join(statuses)} for {len(BAD_REQUESTS)} invalid requests"


def _check_concurrency(auditor: _Auditor) -> str:
    # Slowed-down streams keep a blocked event loop blocked for longer than LIVENESS_MAX_S,
    # however fast the model is.
    faults = getattr(auditor.upstream, "faults", None)
    if faults is not None:
        from lab_support.provider import Drip

        faults.script([Drip(interval_s=CONCURRENCY_DRIP_S)] * CONCURRENT_STREAMS)
    try:
        result = run_load_test(
            auditor.url,
            path=auditor.chat_path,
            body=chat_body(max_tokens=CONCURRENCY_MAX_TOKENS),
            clients=CONCURRENT_STREAMS,
            max_requests=CONCURRENT_STREAMS,
            duration_s=REQUEST_TIMEOUT_S,
            request_timeout_s=REQUEST_TIMEOUT_S,
            probe_path=auditor.health_path,
        )
    finally:
        if faults is not None:
            faults.clear()
    # A stream that the app started and that then failed upstream (an error event, 502, 504) still
    # counts as accepted, because a slow single-request engine behind the app causes those.
    rejected = [r for r in result.records if r.headers_s is None or r.error in REJECTED_STATUSES]
    if rejected:
        errors = sorted({record.error or "no response" for record in rejected})
        raise _fail(f"{len(rejected)} of {CONCURRENT_STREAMS} concurrent streams were not accepted: {'; '.join(errors)}")
    slowest = result.max_probe_latency_s
    if slowest is None:
        raise _fail("no liveness probe completed during the streams")
    if slowest > LIVENESS_MAX_S:
        raise _fail(
            f"while {CONCURRENT_STREAMS} streams ran, {auditor.health_path} took up to {slowest:.2f} s: "
            "something blocks the event loop"
        )
    upstream_failures = f", {result.errors} ended with an upstream error" if result.errors else ""
    return (
        f"{CONCURRENT_STREAMS} streams accepted{upstream_failures} in {result.wall_s:.1f} s; "
        f"liveness answered {len(result.probes)} probes in at most {slowest * 1000:.0f} ms"
    )


def _check_outage(auditor: _Auditor) -> str:
    offline = getattr(auditor.upstream, "offline", None)
    if offline is None:
        raise _skip("needs an upstream that can be taken offline")
    with offline():
        status, waited = auditor.wait_for_ready_status(503, OUTAGE_DETECT_S, "readiness response during an outage")
        try:
            health, _ = auditor.get(auditor.health_path, "liveness response during an outage")
            health_status = health.status_code
        except httpx.HTTPError:
            health_status = 0
    if status != 503:
        raise _fail(f"with the upstream down, {auditor.ready_path} still returned HTTP {status} after {waited:.1f} s, expected 503")
    if health_status != 200:
        raise _fail(
            f"with the upstream down, {auditor.health_path} returned HTTP {health_status}: an orchestrator "
            "would restart a replica that is fine"
        )
    back, recovered = auditor.wait_for_ready_status(200, RECOVERY_S, "readiness response after an outage")
    if back != 200:
        raise _fail(f"after the upstream came back, {auditor.ready_path} stayed HTTP {back} for {recovered:.1f} s")
    return f"ready went 503 within {waited:.1f} s and back to 200 within {recovered:.1f} s; liveness stayed 200"


def _check_stall(auditor: _Auditor) -> str:
    faults = getattr(auditor.upstream, "faults", None)
    if faults is None:
        raise _skip("needs an upstream with scripted faults")
    from lab_support.provider import StallMidStream

    limit = auditor.stall_limit_s
    faults.script([StallMidStream(seconds=limit + STALL_EXTRA_S, after_chunks=2)])
    try:
        result = _read_stream(auditor, chat_body(max_tokens=STREAM_MAX_TOKENS), "stream with a stalled upstream",
                              read_limit_s=limit + 1.0)
    finally:
        faults.clear()
    duration = result["duration_s"]
    if result["ended"] == "done":
        raise _fail("the stream ended with a done event although the upstream stalled, so a cut answer looks complete")
    if result["ended"] == "still running" or duration > limit:
        raise _fail(f"the stream was still open {duration:.1f} s after the upstream stalled; the limit is {limit:g} s")
    if result["status"] not in (200, 502, 504):
        raise _fail(f"the request got HTTP {result['status']}, expected a stream that ends with an error event, or 504")
    return f"ended with {result['ended']} after {duration:.1f} s (limit {limit:g} s)"


def _check_pinned_model(auditor: _Auditor) -> str:
    model = auditor.pinned_model or auditor.ready_model
    if model is None:
        raise _fail("the model name is unknown: pass pinned_model= or make readiness report it")
    if not is_pinned(model):
        raise _fail(f"model {model!r} is not pinned")
    if auditor.repo is None:
        return f"model {model!r} is pinned (code not scanned: pass repo=)"
    floating = find_unpinned_models(auditor.repo)
    if floating:
        where = "; ".join(f"{f.path} {f.location}: {f.value!r}" for f in floating[:3])
        raise _fail(f"{len(floating)} floating model name(s) in code: {where}")
    return f"model {model!r} is pinned, and no code under {auditor.repo} names a floating model"


def _secret_annotation(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _check_settings(auditor: _Auditor) -> str:
    settings = auditor.settings
    fields = getattr(type(settings), "model_fields", None)
    if fields is None:
        raise _fail(f"the settings object {type(settings).__name__} is not a pydantic model")
    plain = [name for name, info in fields.items() if SECRET_FIELD.search(name) and not _secret_annotation(info.annotation)]
    if plain:
        raise _fail(f"secret field(s) {', '.join(plain)} are not SecretStr, so repr() and logs would show them")
    shown = repr(settings)
    leaked = [value for value in auditor.secrets if value in shown]
    if leaked:
        raise _fail(f"repr(settings) contains a secret ({mask_secret(leaked[0])})")
    secret_fields = [name for name in fields if SECRET_FIELD.search(name)]
    return f"{len(secret_fields)} secret field(s), all SecretStr: {', '.join(secret_fields) or 'none'}"


def _check_repository(auditor: _Auditor) -> str:
    if auditor.repo is None:
        raise _skip("needs the repository folder")
    report = scan_secrets(auditor.repo)
    if not report.ok:
        first = report.findings[0]
        raise _fail(f"{len(report.findings)} finding(s), first {first.path} {first.location}: {first.rule} {first.preview}")
    return f"{report.files_scanned} files scanned, no secrets; .gitignore keeps .env out"


def _check_no_secrets(auditor: _Auditor) -> str:
    for label, text in auditor.bodies:
        for value in auditor.secrets:
            if value in text:
                raise _fail(f"the {label} contains a secret ({mask_secret(value)})")
        found = find_secrets_in_text(text)
        if found:
            raise _fail(f"the {label} contains a {found[0].rule}: {found[0].preview}")
    return f"{len(auditor.bodies)} responses checked against {len(auditor.secrets)} known secret(s) and the key patterns"


CHECKS: dict[str, _Check] = {
    "liveness": _Check(
        "Liveness: GET /api/health is 200 and fast", "add GET /api/health that returns 200 without calling the upstream",
        _check_liveness),
    "readiness": _Check(
        "Readiness: GET /api/ready is 200 and names the model",
        "add GET /api/ready that asks the upstream for its models and returns 200 with {\"model\": ...} "
        "when the pinned model is listed (add_readiness_route)", _check_readiness),
    "streaming": _Check(
        "POST /api/chat streams Server-Sent Events",
        "return a StreamingResponse with media type text/event-stream, one event per piece of text, "
        "and a done event at the end", _check_streaming),
    "bad-input": _Check(
        "Invalid requests get a 4xx, not a 500",
        "validate the body (pydantic) and answer 400/422 with a message that says what to send", _check_bad_input),
    "concurrency": _Check(
        "Concurrent streams are accepted; liveness stays fast under load",
        "use an async upstream client (httpx.AsyncClient) in async routes, and never call blocking I/O "
        "or time.sleep in them", _check_concurrency),
    "outage": _Check(
        "Upstream down: ready is 503, health stays 200, ready recovers",
        "make readiness call the upstream on each (cached) probe and return 503 when it fails; keep "
        "liveness independent of the upstream", _check_outage),
    "stall": _Check(
        "A stalled upstream ends the stream with an error in time",
        "set a read timeout on the upstream client shorter than the stall limit (RouteTimeouts(read_s=...)) "
        "and send an error event when it fires", _check_stall),
    "pinned-model": _Check(
        "The model version is pinned",
        "use an exact model version (not 'latest') in LAB_MODEL and read it from the settings in code", _check_pinned_model),
    "settings": _Check(
        "Secrets in the settings are SecretStr",
        "declare every key, token and password field as pydantic SecretStr", _check_settings),
    "repository": _Check(
        "No key in the repository; .gitignore keeps .env out",
        "run scan_secrets(repo), remove and revoke each key found, and add .env to .gitignore", _check_repository),
    "no-secrets": _Check(
        "No secret in any response",
        "never put keys, headers or upstream error text in response bodies; log them masked instead", _check_no_secrets),
}


def _show(report: AuditReport) -> None:
    if "IPython" in sys.modules:
        from IPython import get_ipython

        if get_ipython() is not None:
            from IPython.display import display

            display(report)
            return
    print(report.text())


def _known_secrets(secrets: Iterable[str | SecretStr | None], upstream: Any, settings: Any) -> list[str]:
    candidates: list[str | SecretStr | None] = list(secrets)
    upstream_key = getattr(upstream, "api_key", None)
    if upstream_key is not None and hasattr(upstream_key, "get_secret_value"):
        candidates.append(upstream_key.get_secret_value())
    for name in getattr(type(settings), "model_fields", {}):
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            candidates.append(value)
    return secret_values(candidates)


def audit(
    target: Any,
    *,
    upstream: Any = None,
    repo: str | Path | None = None,
    settings: Any = None,
    secrets: Iterable[str | SecretStr | None] = (),
    pinned_model: str | None = None,
    stall_limit_s: float = DEFAULT_STALL_LIMIT_S,
    items: Sequence[str] | None = None,
    chat_path: str = CHAT_PATH,
    health_path: str = HEALTH_PATH,
    ready_path: str = READY_PATH,
    show: bool = True,
) -> AuditReport:
    """Audit an app against the deployment checklist; print the table unless ``show=False``, and return it.

    ``target`` is an ASGI app (served on a free loopback port during the
    audit) or the URL of an app running on this machine. Pass a fresh app
    object, not one that another server is still serving: the app's
    lifespan runs again for the audit's server, and the chat app closes its
    upstream client when that server stops. ``upstream`` is what
    the app forwards to: a provider from ``start_provider`` lets the audit
    take it offline and make it stall. ``repo`` is the repository folder to
    scan for keys and floating model names. ``settings`` defaults to
    ``get_settings()``. ``secrets`` are values that must never appear in a
    response, added to the provider's key and the settings' secrets.
    ``items`` runs only the named checklist items.
    """
    from lab_support.settings import get_settings

    selected = list(ITEM_ORDER if items is None else items)
    unknown = [item for item in selected if item not in CHECKS]
    if unknown:
        raise ValueError(f"unknown audit item(s) {unknown}; choose from {list(ITEM_ORDER)}")
    if not stall_limit_s > 0:
        raise ValueError(f"invalid stall_limit_s {stall_limit_s!r}: use a number of seconds above 0")
    repo_path = None if repo is None else Path(repo).resolve()
    if repo_path is not None and not repo_path.is_dir():
        raise FileNotFoundError(f"repository folder {repo_path} not found; pass repo= with the folder to scan")
    settings = get_settings() if settings is None else settings

    server = None
    if isinstance(target, str):
        url = require_loopback_url(target, purpose="the audit")
    else:
        server = serve_in_background(target)
        url = server.url

    started = time.perf_counter()
    auditor = _Auditor(
        url,
        upstream=upstream,
        settings=settings,
        secrets=_known_secrets(secrets, upstream, settings),
        pinned_model=pinned_model,
        repo=repo_path,
        stall_limit_s=stall_limit_s,
        chat_path=chat_path,
        health_path=health_path,
        ready_path=ready_path,
    )
    report = AuditReport(target=url)
    try:
        for item_id in ITEM_ORDER:
            if item_id not in selected:
                continue
            check = CHECKS[item_id]
            try:
                detail = check.run(auditor)
                status: Status = "pass"
            except _Outcome as outcome:
                status, detail = outcome.status, outcome.detail
            if status == "fail":
                fix = check.fix
            elif status == "skipped":
                fix = _skip_fix(item_id)
            else:
                fix = ""
            report.items.append(AuditItem(item_id, check.title, status, detail, fix))
            logger.info("audit %s: %s: %s", item_id, status, detail)
    finally:
        auditor.close()
        if server is not None:
            server.stop()
    report.duration_s = time.perf_counter() - started
    if show:
        _show(report)
    return report


def _skip_fix(item_id: str) -> str:
    if item_id in ("outage", "stall"):
        return (
            "point the app at a provider (start_provider(upstream=backend, models=PINNED_MODEL)) and pass "
            "upstream=provider, so the audit can take it offline and make it stall"
        )
    if item_id == "repository":
        return "pass repo= with the repository folder"
    return CHECKS[item_id].fix
