"""A bounded load test of a streaming chat route: N concurrent clients for a fixed time.

    >>> result = run_load_test(server.url, clients=4, duration_s=10)
    >>> print(result)              # p50/p95 time to first token, tokens per second, errors
    >>> plot_load_test(result)

Each client sends one streaming request, reads it to the end, and sends the
next, until ``duration_s`` has passed or ``max_requests`` were sent. No
request starts after that, and requests still running at ``duration_s +
request_timeout_s`` are cancelled and counted as errors, so the test always
stops by itself. Only loopback URLs are accepted.

Tokens are counted as Server-Sent Events that carry text, which is one token
per event for llama.cpp, Ollama and vLLM streams. When the stream also
reports ``usage.completion_tokens``, that count is recorded next to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from lab_support.deploy._loopback import require_loopback_url
from lab_support.deploy._table import text_table

CHAT_PATH = "/api/chat"
DEFAULT_PROMPT = "Give three short tips for writing clear error messages."
DEFAULT_MAX_TOKENS = 32
DEFAULT_CLIENTS = 4
DEFAULT_DURATION_S = 10.0
DEFAULT_REQUEST_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 5.0
PROBE_INTERVAL_S = 0.2
PROBE_TIMEOUT_S = 10.0
# Bounds that keep a typo from turning a lab exercise into a flood.
MAX_CLIENTS = 64
MAX_DURATION_S = 300.0
MAX_REQUESTS = 10_000
DONE_DATA = "[DONE]"
DONE_EVENTS = frozenset({"done", "end"})


def chat_body(prompt: str = DEFAULT_PROMPT, max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """Return a request body for the app's ``POST /api/chat``: one user message and a token limit."""
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}


def openai_chat_body(model: str, prompt: str = DEFAULT_PROMPT, max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """Return a streaming body for an OpenAI-compatible ``POST /v1/chat/completions``."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass(frozen=True)
class StreamEvent:
    """The meaning of one Server-Sent Event of a chat stream: its text, the end, or an error."""

    text: str = ""
    done: bool = False
    error: str | None = None
    usage_tokens: int | None = None


def interpret_event(event: ServerSentEvent) -> StreamEvent:
    """Read one event of an OpenAI-style chunk stream or of a simple ``{"text": ...}`` stream."""
    data = event.data.strip()
    if data == DONE_DATA or event.event in DONE_EVENTS:
        return StreamEvent(done=True)
    try:
        payload = json.loads(data) if data else {}
    except json.JSONDecodeError:
        payload = data
    if event.event == "error":
        message = payload.get("message") if isinstance(payload, dict) else None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            message = payload["error"].get("message")
        return StreamEvent(error=str(message or payload or "error event"))
    if isinstance(payload, str):
        return StreamEvent(text=payload)
    if not isinstance(payload, dict):
        return StreamEvent()
    if "error" in payload:
        error = payload["error"]
        message = error.get("message") if isinstance(error, dict) else error
        return StreamEvent(error=str(message))

    usage = payload.get("usage")
    usage_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    choices = payload.get("choices")
    if isinstance(choices, list):
        delta = (choices[0].get("delta") or {}) if choices else {}
        return StreamEvent(text=delta.get("content") or "", usage_tokens=usage_tokens)
    for key in ("text", "token", "content", "delta"):
        if isinstance(payload.get(key), str):
            return StreamEvent(text=payload[key], usage_tokens=usage_tokens)
    return StreamEvent(usage_tokens=usage_tokens)


@dataclass(frozen=True)
class RequestRecord:
    """One streamed request of a load test, in seconds.

    ``start_s`` and ``token_times_s`` (when each text event arrived) count
    from the start of the test; ``ttft_s``, ``headers_s`` and ``duration_s``
    from the start of this request.
    """

    client: int
    start_s: float
    duration_s: float
    ttft_s: float | None
    tokens: int
    usage_tokens: int | None = None
    error: str | None = None
    headers_s: float | None = None
    token_times_s: tuple[float, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first, divided by the time after the first token; None below 2 tokens."""
        if self.ttft_s is None or self.tokens < 2 or self.duration_s <= self.ttft_s:
            return None
        return (self.tokens - 1) / (self.duration_s - self.ttft_s)


@dataclass(frozen=True)
class ProbeSample:
    """One liveness request sent while the load ran: when, how long it took, and its status (0 on error)."""

    at_s: float
    latency_s: float
    status: int


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) with linear interpolation, as ``numpy.percentile`` does by default."""
    if not values:
        raise ValueError("no values to take a percentile of; did every request fail?")
    if not 0 <= q <= 100:
        raise ValueError(f"invalid percentile {q!r}: use a number from 0 to 100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower, upper = math.floor(position), math.ceil(position)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@dataclass
class LoadTestResult:
    """Every request and probe of one load test, with the summary numbers as properties."""

    url: str
    clients: int
    duration_s: float
    wall_s: float
    records: list[RequestRecord] = field(default_factory=list)
    probes: list[ProbeSample] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def errors(self) -> int:
        return sum(1 for record in self.records if not record.ok)

    @property
    def ttfts(self) -> list[float]:
        """Time to first token of every request that received a token."""
        return [record.ttft_s for record in self.records if record.ttft_s is not None]

    @property
    def ttft_p50_s(self) -> float | None:
        return percentile(self.ttfts, 50) if self.ttfts else None

    @property
    def ttft_p95_s(self) -> float | None:
        return percentile(self.ttfts, 95) if self.ttfts else None

    @property
    def tokens(self) -> int:
        return sum(record.tokens for record in self.records)

    @property
    def tokens_per_s(self) -> float:
        """Tokens streamed by all clients together per second of the test's wall time."""
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_p50_tokens_per_s(self) -> float | None:
        """The median decode rate of one stream, as one user sees it."""
        rates = [r.decode_tokens_per_s for r in self.records if r.decode_tokens_per_s is not None]
        return percentile(rates, 50) if rates else None

    @property
    def max_probe_latency_s(self) -> float | None:
        return max((probe.latency_s for probe in self.probes), default=None)

    def summary(self) -> dict[str, Any]:
        """Return the headline numbers as a dict (seconds, tokens, tokens per second)."""
        return {
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "ttft_p50_s": self.ttft_p50_s,
            "ttft_p95_s": self.ttft_p95_s,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "decode_p50_tokens_per_s": self.decode_p50_tokens_per_s,
            "wall_s": self.wall_s,
            "max_probe_latency_s": self.max_probe_latency_s,
        }

    def __str__(self) -> str:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f} s"

        rows = [
            ("clients", self.clients),
            ("requests (errors)", f"{self.requests} ({self.errors})"),
            ("time to first token p50", seconds(self.ttft_p50_s)),
            ("time to first token p95", seconds(self.ttft_p95_s)),
            ("tokens streamed", self.tokens),
            ("tokens per second, all clients", f"{self.tokens_per_s:.1f}"),
            ("tokens per second, one stream p50",
             "-" if self.decode_p50_tokens_per_s is None else f"{self.decode_p50_tokens_per_s:.1f}"),
            ("wall time", seconds(self.wall_s)),
        ]
        if self.probes:
            rows.append(("slowest liveness probe", seconds(self.max_probe_latency_s)))
        errors = sorted({record.error for record in self.records if record.error})
        text = f"Load test of {self.url}\n" + text_table(("METRIC", "VALUE"), rows)
        if errors:
            text += "\nErrors seen: " + "; ".join(errors)
        return text


def _validate(clients: int, duration_s: float, max_requests: int | None, request_timeout_s: float) -> None:
    if not isinstance(clients, int) or not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"invalid clients {clients!r}: use a whole number from 1 to {MAX_CLIENTS}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"invalid duration_s {duration_s!r}: use more than 0 and at most {MAX_DURATION_S:g} seconds")
    if max_requests is not None and not 1 <= max_requests <= MAX_REQUESTS:
        raise ValueError(f"invalid max_requests {max_requests!r}: use None or 1 to {MAX_REQUESTS}")
    if not request_timeout_s > 0:
        raise ValueError(f"invalid request_timeout_s {request_timeout_s!r}: use a number of seconds above 0")


@dataclass
class _Progress:
    """The progress of one request, kept when the request fails halfway."""

    headers_s: float | None = None
    ttft_s: float | None = None
    tokens: int = 0
    usage_tokens: int | None = None
    token_times: list[float] = field(default_factory=list)


async def _stream_once(
    client: httpx.AsyncClient, url: str, body: Mapping[str, Any], started: float, progress: _Progress
) -> str | None:
    """Send one streaming request and read it to the end; return an error text, or None on success."""
    async with client.stream("POST", url, json=dict(body)) as response:
        progress.headers_s = time.perf_counter() - started
        if response.status_code >= 400:
            await response.aread()
            return f"HTTP {response.status_code}"
        async for event in EventSource(response).aiter_sse():
            meaning = interpret_event(event)
            if meaning.error is not None:
                return f"error event: {meaning.error}"
            if meaning.usage_tokens is not None:
                progress.usage_tokens = meaning.usage_tokens
            if meaning.text:
                now = time.perf_counter()
                progress.tokens += 1
                progress.token_times.append(now)
                if progress.ttft_s is None:
                    progress.ttft_s = now - started
            if meaning.done:
                return None
    return "the stream ended without a done event"


async def _request(
    client: httpx.AsyncClient, number: int, url: str, body: Mapping[str, Any], test_start: float, timeout_s: float
) -> RequestRecord:
    started = time.perf_counter()
    progress = _Progress()
    try:
        error = await asyncio.wait_for(_stream_once(client, url, body, started, progress), timeout_s)
    except asyncio.TimeoutError:
        error = f"timed out after {timeout_s:g} s"
    except httpx.HTTPError as failure:
        error = f"{type(failure).__name__}: {failure}"
    return RequestRecord(
        client=number,
        start_s=started - test_start,
        duration_s=time.perf_counter() - started,
        ttft_s=progress.ttft_s,
        tokens=progress.tokens,
        usage_tokens=progress.usage_tokens,
        error=error,
        headers_s=progress.headers_s,
        token_times_s=tuple(stamp - test_start for stamp in progress.token_times),
    )


async def run_load_test_async(
    url: str,
    *,
    path: str = CHAT_PATH,
    body: Mapping[str, Any] | None = None,
    clients: int = DEFAULT_CLIENTS,
    duration_s: float = DEFAULT_DURATION_S,
    max_requests: int | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    probe_path: str | None = None,
) -> LoadTestResult:
    """Run the load test in the current event loop; see :func:`run_load_test`."""
    root = require_loopback_url(url, purpose="the load test")
    _validate(clients, duration_s, max_requests, request_timeout_s)
    target = root + path
    body = chat_body() if body is None else body
    budget = {"left": MAX_REQUESTS if max_requests is None else max_requests}
    records: list[RequestRecord] = []
    probes: list[ProbeSample] = []
    test_start = time.perf_counter()
    stop_at = test_start + duration_s
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    timeout = httpx.Timeout(request_timeout_s, connect=CONNECT_TIMEOUT_S)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def user(number: int) -> None:
            while time.perf_counter() < stop_at and budget["left"] > 0:
                budget["left"] -= 1
                records.append(await _request(client, number, target, body, test_start, request_timeout_s))

        async def probe(done: asyncio.Event) -> None:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as probe_client:
                while not done.is_set():
                    sent = time.perf_counter()
                    try:
                        status = (await probe_client.get(root + probe_path)).status_code
                    except httpx.HTTPError:
                        status = 0
                    probes.append(ProbeSample(sent - test_start, time.perf_counter() - sent, status))
                    try:
                        await asyncio.wait_for(done.wait(), PROBE_INTERVAL_S)
                    except asyncio.TimeoutError:
                        pass

        done = asyncio.Event()
        probe_task = asyncio.create_task(probe(done)) if probe_path else None
        users = [asyncio.create_task(user(number)) for number in range(clients)]
        # Each request stops itself at request_timeout_s; this outer limit is only a backstop.
        finished, pending = await asyncio.wait(users, timeout=duration_s + request_timeout_s + CONNECT_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        done.set()
        if probe_task is not None:
            await probe_task
        for task in finished:
            task.result()

    wall_s = time.perf_counter() - test_start
    return LoadTestResult(url=target, clients=clients, duration_s=duration_s, wall_s=wall_s,
                          records=sorted(records, key=lambda r: r.start_s), probes=probes)


def run_load_test(
    url: str,
    *,
    path: str = CHAT_PATH,
    body: Mapping[str, Any] | None = None,
    clients: int = DEFAULT_CLIENTS,
    duration_s: float = DEFAULT_DURATION_S,
    max_requests: int | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    probe_path: str | None = None,
) -> LoadTestResult:
    """Stream from ``url + path`` with ``clients`` concurrent clients for ``duration_s`` seconds.

    ``body`` is the JSON request body (default: :func:`chat_body`). Pass
    ``path="/v1/chat/completions"`` and ``body=openai_chat_body(model)`` to
    load an OpenAI-compatible server directly. ``probe_path`` (such as
    ``"/api/health"``) is requested every 0.2 s during the test, to measure
    whether the app stays responsive under load. Works inside Jupyter, whose
    event loop is already running, by running the test in a worker thread.
    """
    coroutine = run_load_test_async(
        url, path=path, body=body, clients=clients, duration_s=duration_s, max_requests=max_requests,
        request_timeout_s=request_timeout_s, probe_path=probe_path,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-test") as pool:
        return pool.submit(asyncio.run, coroutine).result()
