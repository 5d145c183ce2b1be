"""Benchmark the bundled engine: cold start, time to first token, and server decode speed.

Decode speed through the server (streamed over HTTP, parsed as SSE) is
compared with in-process llama-cpp-python on the same model, prompt,
``max_tokens``, greedy sampling and thread count. Runs alternate between the
two so that drift in machine load hits both alike; medians are reported.

    python benchmarks/engine.py                  # writes benchmarks/results/engine.json
    python benchmarks/engine.py --runs 3 --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lab_support import sse
from lab_support._net import free_port
from lab_support.backend import bundled_model_path, start_backend
from lab_support.backend._llamacpp import build_command, default_thread_count
from lab_support.metrics import summarize

PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
RESULTS = Path(__file__).parent / "results" / "engine.json"


def bare_server_start_s(model_path: Path) -> float:
    """Seconds from spawning ``llama_cpp.server`` directly to its first 200 on /v1/models."""
    port = free_port()
    command = build_command(model_path, port=port, alias="bench", n_gpu_layers=0, n_ctx=2048)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(10)


def backend_start_s() -> float:
    """Seconds ``start_backend(engine="llama.cpp")`` takes to return a healthy backend."""
    started = time.perf_counter()
    backend = start_backend(engine="llama.cpp", device="cpu", reuse=False)
    elapsed = time.perf_counter() - started
    backend.stop()
    return elapsed


def stream_through_server(client: httpx.Client, base_url: str, model: str, max_tokens: int):
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "seed": 1, "stream": True}
    start = time.perf_counter()
    events = []
    with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        for chunk in sse.iter_chat_chunks(response):
            events.append((time.perf_counter(), chunk.text))
    return summarize(start, events)


def stream_in_process(llm, max_tokens: int):
    start = time.perf_counter()
    events = []
    for chunk in llm.create_chat_completion(messages=PROMPT, max_tokens=max_tokens, temperature=0, seed=1, stream=True):
        events.append((time.perf_counter(), chunk["choices"][0]["delta"].get("content") or ""))
    return summarize(start, events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs of each kind (default 5)")
    parser.add_argument("--max-tokens", type=int, default=200, help="tokens generated per decode run (default 200)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()

    from llama_cpp import Llama

    model_path = bundled_model_path()
    bare = [bare_server_start_s(model_path) for _ in range(args.runs)]
    cold = [backend_start_s() for _ in range(args.runs)]

    backend = start_backend(engine="llama.cpp", device="cpu", reuse=False)
    threads = default_thread_count()
    llm = Llama(
        model_path=str(model_path), n_ctx=2048, n_gpu_layers=0, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    server_runs, local_runs = [], []
    with httpx.Client(timeout=120) as client:
        stream_through_server(client, backend.base_url, backend.model, 8)
        stream_in_process(llm, 8)
        for _ in range(args.runs):
            server_runs.append(stream_through_server(client, backend.base_url, backend.model, args.max_tokens))
            local_runs.append(stream_in_process(llm, args.max_tokens))
    backend.stop()

    server_rate = statistics.median(run.decode_tokens_per_s for run in server_runs)
    local_rate = statistics.median(run.decode_tokens_per_s for run in local_runs)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"runs": args.runs, "max_tokens": args.max_tokens, "n_threads": llm.n_threads, "command": backend.command},
        "bare_server_start_s": statistics.median(bare),
        "cold_start_to_healthy_s": statistics.median(cold),
        "server_ttft_s": statistics.median(run.ttft_s for run in server_runs),
        "in_process_ttft_s": statistics.median(run.ttft_s for run in local_runs),
        "server_decode_tokens_per_s": server_rate,
        "in_process_decode_tokens_per_s": local_rate,
        "server_to_in_process_decode_ratio": server_rate / local_rate,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"bare server start to healthy   {results['bare_server_start_s']:.2f} s")
    print(f"start_backend() to healthy     {results['cold_start_to_healthy_s']:.2f} s   (target <= 1.5 s)")
    print(f"time to first token            server {results['server_ttft_s'] * 1000:.0f} ms, in-process {results['in_process_ttft_s'] * 1000:.0f} ms")
    print(f"decode tokens/s                server {server_rate:.1f}, in-process {local_rate:.1f}")
    print(f"server / in-process decode     {results['server_to_in_process_decode_ratio']:.1%}   (target >= 90%)")
    print(f"results written to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
