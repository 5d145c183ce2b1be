"""``serving-lab doctor`` and ``serving-lab backend start|status|stop`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import psutil
import pytest

from lab_support.backend import _state, start_backend
from lab_support.settings import get_settings


def serving_lab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lab_support.cli", *args], capture_output=True, text=True, env=env, timeout=180
    )


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield dict(os.environ)
    get_settings.cache_clear()


def test_doctor_reports_engines_model_and_gpu(cli_env):
    completed = serving_lab("doctor", env=cli_env)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "python" in out and sys.version.split()[0] in out
    assert "llama-cpp-python 0.3.36" in out
    assert "llama.cpp (bundled)" in out
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in out
    assert "gpu" in out
    assert "Ready for the labs." in out


def test_backend_start_status_stop(cli_env, tmp_path):
    started = serving_lab("backend", "start", "--engine", "llama.cpp", env=cli_env)
    assert started.returncode == 0, started.stdout + started.stderr
    recorded = _state.load(tmp_path / "state")
    assert recorded is not None
    try:
        assert f"base URL: {recorded.base_url}" in started.stdout
        assert httpx.get(f"{recorded.base_url}/models").status_code == 200

        status = serving_lab("backend", "status", env=cli_env)
        assert status.returncode == 0
        assert "healthy:  yes" in status.stdout

        shared = start_backend()
        assert shared.started is False
        assert shared.base_url == recorded.base_url
        shared.stop()
        assert httpx.get(f"{recorded.base_url}/models").status_code == 200
    finally:
        stopped = serving_lab("backend", "stop", env=cli_env)

    assert stopped.returncode == 0
    assert f"Stopped llama.cpp (pid {recorded.pid})" in stopped.stdout
    assert not psutil.pid_exists(recorded.pid) or psutil.Process(recorded.pid).status() == psutil.STATUS_ZOMBIE
    assert serving_lab("backend", "status", env=cli_env).returncode == 1


def test_backend_start_rejects_unknown_engine(cli_env):
    completed = serving_lab("backend", "start", "--engine", "vllm", env=cli_env)

    assert completed.returncode == 2
    assert "invalid choice: 'vllm'" in completed.stderr


def test_backend_stop_without_backend(cli_env):
    completed = serving_lab("backend", "stop", env=cli_env)

    assert completed.returncode == 0
    assert "nothing to stop" in completed.stdout


def test_doctor_reports_invalid_setting(cli_env):
    completed = serving_lab("doctor", env=dict(cli_env, LAB_DEVICE="tpu"))

    assert completed.returncode == 1
    assert "LAB_DEVICE='tpu': choose one of: auto, gpu, cpu" in completed.stdout
    assert "Traceback" not in completed.stderr


def test_setting_choice_ignores_case(cli_env):
    completed = serving_lab("doctor", env=dict(cli_env, LAB_DEVICE="CPU", LAB_ENGINE="Llama.cpp"))

    assert completed.returncode == 0, completed.stdout
    assert "engine=llama.cpp, device=cpu" in completed.stdout


def test_backend_error_is_one_line(cli_env, monkeypatch, tmp_path):
    env = dict(cli_env, PATH=f"{tmp_path}:{os.path.dirname(sys.executable)}", OLLAMA_HOST="127.0.0.1:9")
    completed = serving_lab("backend", "start", "--engine", "ollama", env=env)

    assert completed.returncode == 1
    assert completed.stderr.startswith("error: Ollama is not installed")
    assert "Traceback" not in completed.stderr
