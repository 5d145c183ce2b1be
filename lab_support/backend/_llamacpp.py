"""The bundled engine: llama-cpp-python's OpenAI-compatible server on the bundled GGUF."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import httpx

from lab_support._net import LOOPBACK, free_port
from lab_support._procs import spawn
from lab_support.backend._backend import Backend
from lab_support.backend._errors import EngineNotAvailableError
from lab_support.backend._gpu import detect_nvidia_gpus, llama_cpp_supports_gpu
from lab_support.backend._readiness import prune_logs, wait_until_ready

logger = logging.getLogger(__name__)

ENGINE = "llama.cpp"
READY_POLL_TIMEOUT_S = 1.0
GPU_REINSTALL_HINT = (
    "reinstall it with CUDA: CMAKE_ARGS='-DGGML_CUDA=on' pip install --force-reinstall "
    "--no-cache-dir 'llama-cpp-python[server]==0.3.36'"
)
OFFLOAD_LINE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def default_thread_count() -> int:
    """Return the physical cores this process may use, the decode thread count that measured fastest.

    llama-cpp-python defaults to half the logical CPUs, which on 2 cores
    leaves one idle: decode ran at about 65 tokens/s with 1 thread and 90
    with 2 on a 2-core x86_64 VM (see benchmarks/RESULTS.md).
    """
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = psutil.cpu_count(logical=False) or usable
    return max(1, min(usable, physical))


def build_command(
    model_path: Path,
    *,
    port: int,
    alias: str,
    n_gpu_layers: int,
    n_ctx: int,
    n_threads: int | None = None,
    host: str = LOOPBACK,
) -> list[str]:
    """Return the argv that starts ``llama_cpp.server`` for one model."""
    threads = n_threads or default_thread_count()
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", alias,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_gpu_layers", str(n_gpu_layers),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        # The server defaults to keeping logits for every position, which only
        # logprobs need; in-process llama-cpp-python defaults to not keeping them.
        "--logits_all", "False",
        # With the default (True), any second request, a /v1/models health
        # poll included, ends a running stream early (llama-cpp-python 0.3.36).
        "--interrupt_requests", "False",
    ]


def choose_device(requested: str) -> tuple[str, str]:
    """Return ``(device, reason)`` for llama.cpp given ``auto``, ``gpu`` or ``cpu``."""
    if requested == "cpu":
        return "cpu", "CPU requested"

    gpus = detect_nvidia_gpus()
    apple_gpu = sys.platform == "darwin"
    has_gpu = gpus.present or apple_gpu
    gpu_build = has_gpu and llama_cpp_supports_gpu()

    if requested == "gpu":
        if not has_gpu:
            raise EngineNotAvailableError(
                f"device='gpu' was requested but no usable GPU was found ({gpus.detail}); use device='cpu' or 'auto'"
            )
        if not gpu_build:
            raise EngineNotAvailableError(
                "device='gpu' was requested but llama-cpp-python was built for the CPU only; "
                f"{GPU_REINSTALL_HINT}, or use device='cpu'"
            )
        return "gpu", gpus.detail if gpus.present else "Apple GPU (Metal)"

    if gpu_build:
        return "gpu", gpus.detail if gpus.present else "Apple GPU (Metal)"
    if has_gpu:
        return "cpu", f"{gpus.detail} found, but llama-cpp-python was built for the CPU only; {GPU_REINSTALL_HINT}"
    return "cpu", f"no GPU: {gpus.detail}"


def gpu_offload_from_log(log_text: str) -> tuple[int, int] | None:
    """Return ``(offloaded, total)`` layers from the server's load log, if it printed them."""
    match = OFFLOAD_LINE.search(log_text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def start_llama_cpp(
    *,
    model_path: Path,
    alias: str,
    device: str,
    n_ctx: int,
    log_dir: Path,
    timeout_s: float,
    tied_to_parent: bool = True,
) -> Backend:
    """Start ``llama_cpp.server`` on a free loopback port and wait until it serves ``alias``."""
    chosen_device, reason = choose_device(device)
    port = free_port()
    command = build_command(
        model_path,
        port=port,
        alias=alias,
        n_gpu_layers=-1 if chosen_device == "gpu" else 0,
        n_ctx=n_ctx,
    )
    log_path = log_dir / f"llama-cpp-{port}.log"
    if log_dir.is_dir():
        prune_logs(log_dir)
    process = spawn(command, log_path=log_path, tied_to_parent=tied_to_parent)
    base_url = f"http://{LOOPBACK}:{port}/v1"

    def serves_model() -> bool:
        try:
            response = httpx.get(f"{base_url}/models", timeout=READY_POLL_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and alias in response.text

    startup_s = wait_until_ready(
        serves_model,
        engine=ENGINE,
        command=command,
        port=port,
        log_path=log_path,
        process=process,
        timeout_s=timeout_s,
    )

    detail = reason
    if chosen_device == "gpu":
        offload = gpu_offload_from_log(log_path.read_text(errors="replace"))
        if offload is not None:
            detail = f"offloaded {offload[0]}/{offload[1]} layers to GPU; {reason}"
            if offload[0] == 0:
                chosen_device = "cpu"
        else:
            detail = f"GPU layers requested; the engine log did not report the offload; {reason}"

    backend = Backend(
        engine=ENGINE,
        device=chosen_device,
        device_detail=detail,
        base_url=base_url,
        model=alias,
        started=True,
        log_path=log_path,
        pid=process.pid,
        command=tuple(command),
        startup_s=startup_s,
        _process=process,
    )
    logger.info("llama.cpp ready at %s in %.2f s on %s (%s)", base_url, startup_s, chosen_device, detail)
    return backend
