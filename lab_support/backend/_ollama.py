"""The Ollama engine: reuse a running server or start ``ollama serve``, import the bundled GGUF offline."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from lab_support._net import LOOPBACK, free_port
from lab_support._procs import spawn
from lab_support.backend._backend import Backend
from lab_support.backend._errors import BackendError, EngineNotAvailableError
from lab_support.backend._readiness import log_tail, prune_logs, wait_until_ready

logger = logging.getLogger(__name__)

ENGINE = "ollama"
DEFAULT_PORT = 11434
PROBE_TIMEOUT_S = 1.0
CREATE_TIMEOUT_S = 300.0
LOAD_TIMEOUT_S = 120.0
INSTALL_HINT = "Ollama is not installed; install it from https://ollama.com/download or use engine='llama.cpp'"

# SmolLM2-Instruct speaks ChatML. The template is written out instead of
# read from the GGUF so the import works with any Ollama version, offline.
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{- end }}<|im_start|>assistant
"""
STOP_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class OllamaHost:
    """The address of an Ollama server, parsed from an ``OLLAMA_HOST`` value."""

    scheme: str
    host: str
    port: int

    @property
    def dial_host(self) -> str:
        """The host to connect to: a wildcard bind (0.0.0.0, ::) is reached on loopback."""
        if self.host in ("0.0.0.0", ""):
            return LOOPBACK
        if self.host == "::":
            return "::1"
        return self.host

    @property
    def url(self) -> str:
        host = self.dial_host
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"


def parse_ollama_host(value: str | None) -> OllamaHost:
    """Parse ``OLLAMA_HOST`` the way people write it.

    Accepts ``host``, ``host:port``, ``:port``, ``0.0.0.0:11434``, ``[::1]:11434``
    and full URLs. Without a scheme the port defaults to 11434; with
    ``http://`` or ``https://`` and no port it defaults to 80 or 443.
    """
    text = (value or "").strip().rstrip("/")
    port = DEFAULT_PORT
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "http", text
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443
    else:
        raise ValueError(f"invalid OLLAMA_HOST {value!r}: the scheme must be http or https")

    split = urllib.parse.urlsplit(f"{scheme}://{rest}")
    try:
        parsed_port = split.port
    except ValueError as error:
        raise ValueError(f"invalid OLLAMA_HOST {value!r}: {error}") from error

    host = split.hostname if split.hostname is not None else LOOPBACK
    return OllamaHost(scheme=scheme, host=host, port=parsed_port or port)


def build_modelfile(model_path: Path) -> str:
    """Return a Modelfile that imports ``model_path`` with an explicit ChatML template and stop tokens."""
    lines = [f"FROM {model_path}", f'TEMPLATE """{CHATML_TEMPLATE}"""']
    lines += [f'PARAMETER stop "{token}"' for token in STOP_TOKENS]
    return "\n".join(lines) + "\n"


def build_serve_env(
    base_env: Mapping[str, str], *, port: int, models_dir: Path, device: str
) -> dict[str, str]:
    """Return the environment for ``ollama serve`` on loopback ``port`` with its own models directory."""
    env = dict(base_env)
    env["OLLAMA_HOST"] = f"{LOOPBACK}:{port}"
    env["OLLAMA_MODELS"] = str(models_dir)
    if device == "cpu":
        # Ollama runs on the CPU when every GPU is hidden from it.
        env["CUDA_VISIBLE_DEVICES"] = "-1"
        env["HIP_VISIBLE_DEVICES"] = "-1"
        env["ROCR_VISIBLE_DEVICES"] = "-1"
    return env


def ollama_binary() -> str | None:
    return shutil.which("ollama")


def server_answers(root_url: str) -> bool:
    """Return whether an Ollama server responds to ``GET /api/version`` at ``root_url``."""
    try:
        response = httpx.get(f"{root_url}/api/version", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and "version" in response.text


def find_running_server(environ: Mapping[str, str]) -> str | None:
    """Return the root URL of an Ollama server that responds at OLLAMA_HOST or the default port."""
    candidates = []
    if environ.get("OLLAMA_HOST"):
        candidates.append(parse_ollama_host(environ["OLLAMA_HOST"]).url)
    candidates.append(parse_ollama_host(None).url)

    for root_url in dict.fromkeys(candidates):
        if server_answers(root_url):
            return root_url
    return None


def has_model(root_url: str, model: str) -> bool:
    """Return whether the server has ``model`` (a tag without ``:latest`` matches ``model:latest``)."""
    response = httpx.get(f"{root_url}/api/tags", timeout=10)
    response.raise_for_status()
    names = {entry.get("name") for entry in response.json().get("models", [])}
    return model in names or f"{model}:latest" in names


def create_model(root_url: str, model: str, model_path: Path, *, work_dir: Path) -> None:
    """Import ``model_path`` into the server as ``model`` with ``ollama create``, offline."""
    binary = ollama_binary()
    if binary is None:
        raise EngineNotAvailableError(
            f"the Ollama server at {root_url} does not have {model!r}, and importing it needs "
            f"the ollama command; {INSTALL_HINT}"
        )

    work_dir.mkdir(parents=True, exist_ok=True)
    modelfile = work_dir / "Modelfile"
    modelfile.write_text(build_modelfile(model_path))
    env = dict(os.environ, OLLAMA_HOST=root_url)
    command = [binary, "create", model, "-f", str(modelfile)]
    logger.info("importing %s into Ollama at %s as %r", model_path.name, root_url, model)
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CREATE_TIMEOUT_S)
    if completed.returncode != 0:
        raise BackendError(
            f"'{' '.join(command)}' failed with code {completed.returncode} against {root_url}: "
            f"{completed.stderr.strip()[-2000:]}"
        )


def load_model(root_url: str, model: str) -> None:
    """Load ``model`` into memory (an empty generate request), so ``/api/ps`` shows where it runs."""
    response = httpx.post(
        f"{root_url}/api/generate",
        json={"model": model, "prompt": "", "stream": False},
        timeout=LOAD_TIMEOUT_S,
    )
    if response.status_code != 200:
        raise BackendError(f"Ollama at {root_url} could not load {model!r}: HTTP {response.status_code} {response.text[:500]}")


def gpu_placement(root_url: str, model: str) -> tuple[int, int] | None:
    """Return ``(size_vram, size)`` in bytes for ``model`` from ``GET /api/ps``, or None if not loaded."""
    response = httpx.get(f"{root_url}/api/ps", timeout=10)
    response.raise_for_status()
    for entry in response.json().get("models", []):
        if entry.get("name") in (model, f"{model}:latest") or entry.get("model") in (model, f"{model}:latest"):
            return int(entry.get("size_vram", 0)), int(entry.get("size", 0))
    return None


def describe_placement(placement: tuple[int, int] | None) -> tuple[str, str]:
    """Return ``(device, detail)`` from an ``/api/ps`` placement."""
    if placement is None:
        return "cpu", "the model is not loaded, so /api/ps reports no placement"
    size_vram, size = placement
    if size_vram <= 0:
        return "cpu", "/api/ps: 0 bytes in GPU memory"
    share = 100 * size_vram / size if size else 100
    return "gpu", f"/api/ps: {size_vram / 2**20:.0f} MiB in GPU memory ({share:.0f}% of the model)"


def start_ollama(
    *,
    model: str,
    model_path: Path,
    device: str,
    state_dir: Path,
    timeout_s: float,
    environ: Mapping[str, str] | None = None,
    tied_to_parent: bool = True,
) -> Backend:
    """Reuse a running Ollama (unless ``device='cpu'``), else start ``ollama serve``; make sure it has ``model``."""
    environ = os.environ if environ is None else environ
    process = None
    command: list[str] = []
    log_path = None
    startup_s = None

    # A running server has its own GPU settings; forcing the CPU needs our own server.
    root_url = find_running_server(environ) if device != "cpu" else None

    if root_url is None:
        binary = ollama_binary()
        if binary is None:
            raise EngineNotAvailableError(INSTALL_HINT)
        port = free_port()
        command = [binary, "serve"]
        env = build_serve_env(environ, port=port, models_dir=state_dir / "ollama-models", device=device)
        log_path = state_dir / "logs" / f"ollama-{port}.log"
        if log_path.parent.is_dir():
            prune_logs(log_path.parent)
        process = spawn(command, log_path=log_path, env=env, tied_to_parent=tied_to_parent)
        root_url = f"http://{LOOPBACK}:{port}"
        startup_s = wait_until_ready(
            lambda: server_answers(root_url),
            engine=ENGINE,
            command=command,
            port=port,
            log_path=log_path,
            process=process,
            timeout_s=timeout_s,
        )
    else:
        logger.info("reusing the Ollama server that responds at %s", root_url)

    try:
        if not has_model(root_url, model):
            create_model(root_url, model, model_path, work_dir=state_dir / "ollama-import")
        load_model(root_url, model)
        chosen_device, detail = describe_placement(gpu_placement(root_url, model))
    except Exception as error:
        if process is not None:
            from lab_support._procs import stop_process

            stop_process(process)
        tail = f"\nlast lines of {log_path}:\n{log_tail(log_path)}" if log_path else ""
        raise BackendError(f"Ollama at {root_url} is running but {model!r} is not usable: {error}{tail}") from error

    backend = Backend(
        engine=ENGINE,
        device=chosen_device,
        device_detail=detail,
        base_url=f"{root_url}/v1",
        model=model,
        started=process is not None,
        log_path=log_path,
        pid=process.pid if process else None,
        command=tuple(command),
        startup_s=startup_s,
        _process=process,
    )
    if device == "gpu" and chosen_device != "gpu":
        backend.stop()
        raise EngineNotAvailableError(
            f"device='gpu' was requested but Ollama at {root_url} placed {model!r} on the CPU ({detail}); "
            "check the GPU driver (nvidia-smi) or use device='cpu'"
        )
    return backend
