"""Start (or reuse) a local model and get its OpenAI-compatible base URL.

    >>> from lab_support.backend import start_backend
    >>> backend = start_backend()              # engine="auto", device="auto"
    >>> backend.base_url, backend.model, backend.engine, backend.device
    ('http://127.0.0.1:41231/v1', 'smollm2-135m-instruct-q4_1', 'llama.cpp', 'cpu')
    >>> backend.stop()

Engines: ``ollama`` (a running server, else ``ollama serve``) and
``llama.cpp`` (llama-cpp-python's server on the bundled GGUF). ``auto``
takes a backend started by ``serving-lab backend start``, then a running
Ollama, then an installed Ollama, then llama.cpp.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lab_support.backend import _ollama, _state
from lab_support.backend._backend import Backend
from lab_support.backend._errors import BackendError, BackendStartError, EngineNotAvailableError
from lab_support.backend._llamacpp import start_llama_cpp
from lab_support.backend._model import ModelNotFoundError, bundled_model_path, resolve_model_path
from lab_support.settings import DEVICES, ENGINES, get_settings

__all__ = [
    "Backend",
    "BackendError",
    "BackendStartError",
    "EngineNotAvailableError",
    "ModelNotFoundError",
    "bundled_model_path",
    "start_backend",
]

logger = logging.getLogger(__name__)


def start_backend(
    engine: str | None = None,
    device: str | None = None,
    *,
    model: str | None = None,
    model_path: Path | str | None = None,
    timeout_s: float | None = None,
    reuse: bool = True,
    tied_to_parent: bool = True,
) -> Backend:
    """Start or reuse a local model server and return it once it answers.

    Arguments left as None come from the settings (``LAB_ENGINE``,
    ``LAB_DEVICE``, ``LAB_MODEL``, ``LAB_MODEL_PATH``, ``LAB_STARTUP_TIMEOUT_S``).
    ``reuse=False`` ignores a backend started by ``serving-lab backend start``.
    ``tied_to_parent=False`` lets the engine outlive this process.
    """
    settings = get_settings()
    engine = validate_choice("engine", engine or settings.engine, ENGINES)
    device = validate_choice("device", device or settings.device, DEVICES)
    model = model or settings.model
    timeout_s = settings.startup_timeout_s if timeout_s is None else timeout_s

    if reuse:
        shared = _state.load_running(settings.state_dir)
        if shared is not None and engine in ("auto", shared.engine) and device in ("auto", shared.device):
            logger.info("reusing the %s backend started by 'serving-lab backend start' at %s", shared.engine, shared.base_url)
            return shared

    path = resolve_model_path(model_path if model_path is not None else settings.model_path)
    if engine == "auto":
        engine = choose_engine(device)

    if engine == "ollama":
        return _ollama.start_ollama(
            model=model,
            model_path=path,
            device=device,
            state_dir=settings.state_dir,
            timeout_s=timeout_s,
            tied_to_parent=tied_to_parent,
        )
    return start_llama_cpp(
        model_path=path,
        alias=model,
        device=device,
        n_ctx=settings.context_size,
        log_dir=settings.state_dir / "logs",
        timeout_s=timeout_s,
        tied_to_parent=tied_to_parent,
    )


def validate_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise a ValueError listing them."""
    normalized = value.strip().lower()
    if normalized not in choices:
        raise ValueError(f"invalid {name} {value!r}; choose one of: {', '.join(choices)}")
    return normalized


def choose_engine(device: str) -> str:
    """Pick ``ollama`` when a server answers or the binary is installed, else ``llama.cpp``."""
    if device != "cpu" and _ollama.find_running_server(os.environ) is not None:
        return "ollama"
    if _ollama.ollama_binary() is not None:
        return "ollama"
    return "llama.cpp"
