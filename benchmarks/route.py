"""Benchmark the chat route's overhead: time to first token and throughput, direct versus through the route.

A scripted upstream streams a fixed answer (a fixed wait before the first
token, then one token every ``--interval-ms``), so every difference comes
from what sits between the client and it. Each level of concurrency (1, 8
and 32 streams by default) runs against the upstream directly and through
``python -m lab_support.chat_app`` in its own process, alternating so that
drift in machine load hits both alike. With ``--litellm PATH`` it also runs
through LiteLLM's proxy (the ``litellm`` command of ``litellm[proxy]``) as a
peer.

    python benchmarks/route.py                   # writes benchmarks/results/route.json
    python benchmarks/route.py --rounds 5 --tokens 200
    python benchmarks/route.py --litellm /path/to/venv/bin/litellm

Each process binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from httpx_sse import aconnect_sse

from lab_support._net import LOOPBACK, free_port, port_is_open
from lab_support.sse import aiter_chat_chunks

RESULTS = Path(__file__).parent / "results" / "route.json"
MODEL = "scripted"
PROMPT = [{"role": "user", "content": "Tell me a story."}]
DEFAULT_LEVELS = (1, 8, 32)
DEFAULT_TOKENS = 100
DEFAULT_INTERVAL_MS = 10.0
DEFAULT_FIRST_TOKEN_MS = 50.0
DEFAULT_ROUNDS = 3
STARTUP_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = 120.0
# The targets this benchmark checks: the route adds under 5 ms to the median
# time to first token and keeps at least 95 % of direct throughput.
MAX_ADDED_TTFT_MS = 5.0
MIN_THROUGHPUT_RATIO = 0.95


# The scripted upstream, run in its own process by --serve-upstream.


def upstream_app(tokens: int, interval_s: float, first_token_s: float):
    """Return an ASGI app that serves ``POST /v1/chat/completions`` as an OpenAI stream of ``tokens`` chunks."""

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/v1/models":
            body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        await asyncio.sleep(first_token_s)
        for index in range(tokens):
            if index:
                await asyncio.sleep(interval_s)
            chunk = {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": f" t{index}"}, "finish_reason": None}],
            }
            await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True})
        final = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "model": MODEL,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        }
        await send({"type": "http.response.body", "body": f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode()})

    return app


def serve_upstream(port: int, tokens: int, interval_s: float, first_token_s: float) -> None:
    import uvicorn

    app = upstream_app(tokens, interval_s, first_token_s)
    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", lifespan="off")


# Clients: one stream, then a level of concurrent streams.


@dataclass(frozen=True)
class StreamResult:
    """One stream's time to first token and decode rate, in seconds and tokens per second."""

    ttft_s: float
    tokens: int
    decode_tokens_per_s: float


async def stream_openai(client: httpx.AsyncClient, base_url: str, model: str, tokens: int) -> StreamResult:
    """Stream one chat completion from an OpenAI-compatible base URL."""
    body = {"model": model, "messages": PROMPT, "max_tokens": tokens, "stream": True}
    started = time.perf_counter()
    stamps = []
    async with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        async for chunk in aiter_chat_chunks(response):
            if chunk.text:
                stamps.append(time.perf_counter())
    return _result(started, stamps)


async def stream_route(client: httpx.AsyncClient, url: str, model: str, tokens: int) -> StreamResult:
    """Stream one answer from the chat route's ``POST /api/chat``."""
    body = {"messages": PROMPT, "max_tokens": tokens}
    started = time.perf_counter()
    stamps = []
    async with aconnect_sse(client, "POST", f"{url}/api/chat", json=body) as source:
        async for event in source.aiter_sse():
            if event.event == "message":
                stamps.append(time.perf_counter())
            elif event.event != "done":
                raise RuntimeError(f"the route ended the stream with {event.event}: {event.data}")
    return _result(started, stamps)


def _result(started: float, stamps: list[float]) -> StreamResult:
    if not stamps:
        raise RuntimeError("a stream ended without text")
    decode_s = stamps[-1] - stamps[0]
    rate = (len(stamps) - 1) / decode_s if decode_s > 0 else 0.0
    return StreamResult(ttft_s=stamps[0] - started, tokens=len(stamps), decode_tokens_per_s=rate)


async def run_level(
    client: httpx.AsyncClient, stream, target: str, concurrency: int, tokens: int
) -> tuple[list[StreamResult], float]:
    """Start ``concurrency`` streams at once and return their results and the level's aggregate tokens per second."""
    started = time.perf_counter()
    results = await asyncio.gather(*(stream(client, target, MODEL, tokens) for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    return list(results), sum(result.tokens for result in results) / wall_s


async def measure(paths: dict, levels: list[int], rounds: int, tokens: int) -> dict:
    """Measure every path at every level, in alternating rounds after one unmeasured warm-up round.

    Each path has one client whose connections stay open between rounds, so
    the numbers are those of a warm server with keep-alive connections, not
    of connection setup or a process's first request.
    """
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    clients = {
        name: httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits, headers=path.headers)
        for name, path in paths.items()
    }
    report = {}
    try:
        for concurrency in levels:
            collected = {name: ([], [], 0.0) for name in paths}
            for round_index in range(rounds + 1):
                for name, path in paths.items():
                    cpu_before = cpu_seconds(path.server)
                    results, aggregate = await run_level(clients[name], path.stream, path.target, concurrency, tokens)
                    if round_index > 0:
                        runs, aggregates, cpu_s = collected[name]
                        cpu_s += cpu_seconds(path.server) - cpu_before
                        collected[name] = (runs + results, aggregates + [aggregate], cpu_s)
            level = {name: summarize_path(*collected[name]) for name in paths}
            for name in paths:
                if name != "direct":
                    level[name]["added_ttft_ms_median"] = level[name]["ttft_ms_median"] - level["direct"]["ttft_ms_median"]
                    level[name]["throughput_ratio"] = (
                        level[name]["aggregate_tokens_per_s_median"] / level["direct"]["aggregate_tokens_per_s_median"]
                    )
            level["route"]["meets_targets"] = (
                level["route"]["added_ttft_ms_median"] < MAX_ADDED_TTFT_MS
                and level["route"]["throughput_ratio"] >= MIN_THROUGHPUT_RATIO
            )
            report[str(concurrency)] = level
            print(f"{concurrency:3d} streams: " + json.dumps(level), flush=True)
    finally:
        for client in clients.values():
            await client.aclose()
    return report


@dataclass(frozen=True)
class Target:
    """One way to reach the scripted upstream: how to stream, where to, the server process, and client headers."""

    stream: Callable[..., Awaitable[StreamResult]]
    target: str
    server: psutil.Process
    headers: dict[str, str] = field(default_factory=dict)


def summarize_path(results: list[StreamResult], aggregates: list[float], server_cpu_s: float) -> dict:
    ttfts = sorted(result.ttft_s * 1000 for result in results)
    tokens = sum(result.tokens for result in results)
    return {
        "streams": len(results),
        "ttft_ms_median": statistics.median(ttfts),
        "ttft_ms_p90": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
        "decode_tokens_per_s_median": statistics.median(result.decode_tokens_per_s for result in results),
        "aggregate_tokens_per_s_median": statistics.median(aggregates),
        # CPU time (user and system) of the process the client talks to, per token it delivered.
        "server_cpu_us_per_token": server_cpu_s / tokens * 1e6,
    }


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# Processes under test.


def start_process(command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` with its output in ``log_path`` and wait until it listens on ``port``.

    A file, not a pipe: a pipe that is never read fills up and blocks the process.
    """
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not port_is_open(LOOPBACK, port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"{' '.join(command)} did not listen on port {port}:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    return process


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_litellm(litellm: str, upstream_base_url: str, port: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    """Start LiteLLM's proxy for the scripted upstream; return the process and the master key its clients send."""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream_base_url}\n"
        "      api_key: not-used\n"
    )
    # Offline mode stops the requests LiteLLM makes on its own, such as
    # downloading its model price list at start (LiteLLM's "Outbound Requests
    # and Offline Mode" page).
    master_key = "sk-bench-" + secrets.token_hex(16)
    env = {
        **os.environ,
        "LITELLM_OFFLINE_MODE": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "true",
        "LITELLM_MASTER_KEY": master_key,
    }
    command = [litellm, "--config", str(config), "--host", LOOPBACK, "--port", str(port)]
    return start_process(command, port, workdir / "litellm.log", env), master_key


def litellm_version(litellm: str) -> str:
    """Return the version line of LiteLLM's command, such as ``LiteLLM: Current Version = 1.108.7``."""
    output = subprocess.run([litellm, "--version"], capture_output=True, text=True, timeout=60).stdout
    lines = [line.strip() for line in output.splitlines() if "Version" in line]
    return lines[-1] if lines else "unknown"


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=list(DEFAULT_LEVELS), help="concurrent streams per level")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="tokens per stream")
    parser.add_argument("--interval-ms", type=float, default=DEFAULT_INTERVAL_MS, help="upstream gap between tokens, ms")
    parser.add_argument("--first-token-ms", type=float, default=DEFAULT_FIRST_TOKEN_MS, help="upstream wait before the first token, ms")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds per level and path")
    parser.add_argument("--litellm", help="path of LiteLLM's litellm command, to add its proxy as a peer")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file to write (default: {RESULTS})")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.tokens, args.interval_ms / 1000, args.first_token_ms / 1000)
        return 0

    upstream_port, route_port = free_port(), free_port()
    upstream_url = f"http://{LOOPBACK}:{upstream_port}/v1"
    processes = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            processes.append(
                start_process(
                    [sys.executable, __file__, "--serve-upstream", str(upstream_port), "--tokens", str(args.tokens),
                     "--interval-ms", str(args.interval_ms), "--first-token-ms", str(args.first_token_ms)],
                    upstream_port,
                    Path(workdir) / "upstream.log",
                )
            )
            route_env = {**os.environ, "LAB_CHAT_UPSTREAM_BASE_URL": upstream_url, "LAB_CHAT_MODEL": MODEL}
            processes.append(
                start_process(
                    [sys.executable, "-m", "lab_support.chat_app", "--port", str(route_port)],
                    route_port,
                    Path(workdir) / "route.log",
                    route_env,
                )
            )
            paths = {
                "direct": Target(stream_openai, upstream_url, psutil.Process(processes[0].pid)),
                "route": Target(stream_route, f"http://{LOOPBACK}:{route_port}", psutil.Process(processes[1].pid)),
            }
            if args.litellm:
                litellm_port = free_port()
                litellm_process, master_key = start_litellm(args.litellm, upstream_url, litellm_port, Path(workdir))
                processes.append(litellm_process)
                paths["litellm_proxy"] = Target(
                    stream_openai,
                    f"http://{LOOPBACK}:{litellm_port}/v1",
                    psutil.Process(litellm_process.pid),
                    {"Authorization": f"Bearer {master_key}"},
                )

            levels = asyncio.run(measure(paths, args.levels, args.rounds, args.tokens))
        finally:
            for process in reversed(processes):
                stop_process(process)

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "levels": args.levels,
            "tokens_per_stream": args.tokens,
            "upstream_interval_ms": args.interval_ms,
            "upstream_first_token_ms": args.first_token_ms,
            "rounds": args.rounds,
            "route_command": "python -m lab_support.chat_app (one uvicorn process, access log on)",
            "uvicorn_http": "h11" if not _installed("httptools") else "httptools",
            "connections": "keep-alive, one client per path, after one unmeasured warm-up round per level",
            "litellm": litellm_version(args.litellm) if args.litellm else None,
        },
        "targets": {"max_added_ttft_ms": MAX_ADDED_TTFT_MS, "min_throughput_ratio": MIN_THROUGHPUT_RATIO},
        "levels": levels,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
