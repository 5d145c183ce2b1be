"""The Ollama path: host parsing, command and environment, import, reuse, clean-up.

Ollama cannot be installed on the CI machines, so the process-level tests run
``tests/fakes/ollama``, a stand-in that records how it was started. The last
test runs the whole path against the real Ollama wherever ``ollama`` is on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lab_support._net import LOOPBACK, free_port, port_is_open, wait_for_port_closed
from lab_support.backend import EngineNotAvailableError, bundled_model_path, start_backend
from lab_support.backend import _ollama
from lab_support.backend._ollama import (
    CHATML_TEMPLATE,
    STOP_TOKENS,
    build_modelfile,
    build_serve_env,
    describe_placement,
    parse_ollama_host,
)
from lab_support.settings import get_settings

FAKES = Path(__file__).parent / "fakes"
MODEL = "smollm2-135m-instruct-q4_1"


@pytest.mark.parametrize(
    ("value", "url"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("localhost:9000", "http://localhost:9000"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        (":8080", "http://127.0.0.1:8080"),
        ("[::]:11434", "http://[::1]:11434"),
        ("[::1]:5000", "http://[::1]:5000"),
        ("http://127.0.0.1", "http://127.0.0.1:80"),
        ("https://models.internal", "https://models.internal:443"),
        ("http://127.0.0.1:11435/", "http://127.0.0.1:11435"),
    ],
)
def test_parse_ollama_host(value, url):
    assert parse_ollama_host(value).url == url


def test_parse_ollama_host_rejects_bad_values():
    with pytest.raises(ValueError, match="scheme must be http or https"):
        parse_ollama_host("ftp://127.0.0.1")
    with pytest.raises(ValueError, match="invalid OLLAMA_HOST"):
        parse_ollama_host("127.0.0.1:notaport")


def test_modelfile_has_template_and_stop_tokens(tmp_path):
    text = build_modelfile(tmp_path / "model.gguf")

    assert text.startswith(f"FROM {tmp_path / 'model.gguf'}\n")
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in text
    for token in STOP_TOKENS:
        assert f'PARAMETER stop "{token}"' in text
    assert "<|im_start|>assistant" in CHATML_TEMPLATE


def test_serve_env_for_cpu_hides_gpus(tmp_path):
    env = build_serve_env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0"}, port=4321, models_dir=tmp_path, device="cpu")

    assert env["OLLAMA_HOST"] == "127.0.0.1:4321"
    assert env["OLLAMA_MODELS"] == str(tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "-1"
    assert env["PATH"] == "/bin"


def test_serve_env_for_auto_keeps_gpus(tmp_path):
    env = build_serve_env({"CUDA_VISIBLE_DEVICES": "0"}, port=4321, models_dir=tmp_path, device="auto")

    assert env["CUDA_VISIBLE_DEVICES"] == "0"


def test_placement_from_api_ps():
    assert describe_placement((0, 100))[0] == "cpu"
    device, detail = describe_placement((50 * 2**20, 100 * 2**20))
    assert device == "gpu"
    assert "50%" in detail
    assert describe_placement(None)[0] == "cpu"


@pytest.fixture
def fake_ollama(tmp_path, monkeypatch):
    """Put the stand-in ollama first on PATH, with a private state dir and no server on the default port."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(FAKES / "ollama", bin_dir / "ollama")
    record = tmp_path / "record"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_OLLAMA_RECORD", str(record))
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(_ollama, "parse_ollama_host", _no_default_port(parse_ollama_host))
    get_settings.cache_clear()
    yield record
    get_settings.cache_clear()


def _no_default_port(parse):
    # A real Ollama on this machine's default port must not leak into these tests.
    def parse_without_default(value):
        if not value:
            return parse(f"127.0.0.1:{free_port()}")
        return parse(value)

    return parse_without_default


def test_starts_ollama_serve_and_imports_model(fake_ollama, tmp_path):
    backend = start_backend(engine="ollama", device="cpu", reuse=False)
    try:
        serve = json.loads((fake_ollama / "serve.json").read_text())
        create = json.loads((fake_ollama / "create.json").read_text())

        assert serve["argv"][1:] == ["serve"]
        assert serve["env"]["OLLAMA_MODELS"] == str(tmp_path / "state" / "ollama-models")
        assert serve["env"]["CUDA_VISIBLE_DEVICES"] == "-1"
        host, port = serve["env"]["OLLAMA_HOST"].split(":")
        assert host == LOOPBACK
        assert backend.base_url == f"http://127.0.0.1:{port}/v1"

        assert create["argv"][1:3] == ["create", MODEL]
        assert create["modelfile"].startswith(f"FROM {bundled_model_path()}")
        assert backend.started is True
        assert backend.engine == "ollama"
        assert backend.device == "cpu"
        assert "0 bytes in GPU memory" in backend.device_detail
    finally:
        backend.stop()

    assert wait_for_port_closed(LOOPBACK, int(port))


def test_reports_gpu_from_api_ps(fake_ollama, monkeypatch):
    monkeypatch.setenv("FAKE_OLLAMA_VRAM", str(100_000_000))

    with start_backend(engine="ollama", device="gpu", reuse=False) as backend:
        assert backend.device == "gpu"
        assert "100% of the model" in backend.device_detail


def test_gpu_requested_but_model_on_cpu_is_an_error(fake_ollama):
    with pytest.raises(EngineNotAvailableError, match="placed .* on the CPU"):
        start_backend(engine="ollama", device="gpu", reuse=False)


def test_reuses_running_server_without_stopping_it(fake_ollama):
    port = int(os.environ["OLLAMA_HOST"].split(":")[1])
    env = dict(os.environ)
    server = subprocess.Popen([sys.executable, str(FAKES / "ollama"), "serve"], env=env)
    try:
        _wait_for(lambda: port_is_open(LOOPBACK, port))

        backend = start_backend(engine="ollama", reuse=False)
        assert backend.started is False
        assert backend.base_url == f"http://127.0.0.1:{port}/v1"
        assert json.loads((fake_ollama / "create.json").read_text())["argv"][2] == MODEL

        backend.stop()
        assert httpx.get(f"http://127.0.0.1:{port}/api/version").status_code == 200
    finally:
        server.terminate()
        server.wait(5)


def test_ollama_not_installed_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setattr(_ollama, "parse_ollama_host", _no_default_port(parse_ollama_host))

    with pytest.raises(EngineNotAvailableError, match="ollama.com/download or use engine='llama.cpp'"):
        start_backend(engine="ollama", reuse=False)


def _wait_for(condition, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.ollama
@pytest.mark.skipif(shutil.which("ollama") is None, reason="ollama is not on PATH; the real-Ollama test runs where it is installed")
def test_real_ollama_streams_a_completion(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()

    with start_backend(engine="ollama", reuse=False) as backend:
        client = backend.client()
        stream = client.chat.completions.create(
            model=backend.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, stream=True
        )
        chunks = list(stream)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert text.strip()
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert backend.device in ("cpu", "gpu")
    get_settings.cache_clear()
