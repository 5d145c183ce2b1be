#!/usr/bin/env python3
"""Set up the labs and run them, or run the tests: ``python3 tasks.py lab`` / ``python3 tasks.py test``.

Both commands create ``.venv`` next to this file and install the project into
it the first time (llama-cpp-python compiles from source: about 5 minutes on
2 cores; pip caches the wheel, so later installs take seconds). They reinstall
only when ``pyproject.toml`` changes. Only the Python standard library is used
here, so this works on a fresh machine with nothing installed by hand.
``test`` also installs Debian's Chromium for the page tests when it is
missing and the user is root with apt-get; otherwise it says how to.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".serving-lab-installed"
MIN_PYTHON = (3, 10)
BROWSERS = ("chromium", "chromium-browser")


def venv_python() -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return VENV / scripts / ("python.exe" if os.name == "nt" else "python")


def install_fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_environment() -> Path:
    """Create ``.venv`` and install the project with its test extras unless that is already done."""
    if sys.version_info < MIN_PYTHON:
        sys.exit(f"serving-lab needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer; this is {sys.version.split()[0]}")

    python = venv_python()
    if not python.exists():
        print(f"Creating the virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)

    if STAMP.exists() and STAMP.read_text() == install_fingerprint():
        return python

    print(
        "Installing serving-lab and its dependencies. Unless pip has a cached wheel, "
        "llama-cpp-python compiles from source (about 5 minutes on 2 cores).",
        flush=True,
    )
    run([str(python), "-m", "pip", "install", "--upgrade", "pip"])
    run([str(python), "-m", "pip", "install", "-e", f"{ROOT}[test]"])
    STAMP.write_text(install_fingerprint())
    return python


def run(command: list[str]) -> None:
    completed = subprocess.run(command, cwd=ROOT)
    if completed.returncode != 0:
        sys.exit(f"command failed with exit code {completed.returncode}: {' '.join(command)}")


def lab(extra: list[str]) -> int:
    python = ensure_environment()
    command = [str(python), "-m", "jupyterlab", f"--ServerApp.root_dir={ROOT / 'labs'}", "--ServerApp.ip=127.0.0.1"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # JupyterLab refuses to start as root without this; containers often run as root.
        command.append("--allow-root")
    command += extra
    print("Starting JupyterLab on labs/ (press Ctrl-C twice to stop).", flush=True)
    return subprocess.call(command, cwd=ROOT / "labs")


def ensure_browser() -> None:
    """Install Debian's Chromium for the page tests when it is missing and apt-get can install it."""
    if any(shutil.which(name) for name in BROWSERS) or os.environ.get("LAB_SKIP_BROWSER") == "1":
        return

    can_install = shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0
    if not can_install:
        print(
            "Chromium was not found, so the browser tests will fail. Install it "
            "(Debian/Ubuntu: sudo apt-get install -y chromium) or set LAB_SKIP_BROWSER=1 to skip them.",
            flush=True,
        )
        return

    print("Installing Chromium for the browser tests (apt-get) ...", flush=True)
    run(["apt-get", "update", "-q"])
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"])


def test(extra: list[str]) -> int:
    python = ensure_environment()
    ensure_browser()
    return subprocess.call([str(python), "-m", "pytest", *extra], cwd=ROOT)


def main(argv: list[str]) -> int:
    commands = {"lab": lab, "test": test}
    if not argv or argv[0] not in commands:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python3 tasks.py lab [JUPYTER ARGS...] | test [PYTEST ARGS...]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
