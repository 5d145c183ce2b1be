"""The state file that lets ``serving-lab backend start`` share one backend with notebooks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lab_support._procs import pid_is_running
from lab_support.backend._backend import Backend

STATE_FILE = "backend.json"
FIELDS = ("engine", "device", "device_detail", "base_url", "model", "log_path", "pid", "command")


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def save(state_dir: Path, backend: Backend) -> Path:
    """Write the backend's address and pid atomically, so a reader never sees half a file."""
    record = {key: getattr(backend, key) for key in FIELDS}
    record["log_path"] = str(backend.log_path) if backend.log_path else None
    record["command"] = list(backend.command)

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(state_dir)
    with tempfile.NamedTemporaryFile("w", dir=state_dir, delete=False, suffix=".tmp") as handle:
        json.dump(record, handle, indent=2)
    os.replace(handle.name, path)
    return path


def load(state_dir: Path) -> Backend | None:
    """Return the recorded backend (not started by this process), or None if there is no valid record."""
    path = state_path(state_dir)
    try:
        record = json.loads(path.read_text())
        return Backend(
            engine=record["engine"],
            device=record["device"],
            device_detail=record["device_detail"],
            base_url=record["base_url"],
            model=record["model"],
            started=False,
            log_path=Path(record["log_path"]) if record.get("log_path") else None,
            pid=record.get("pid"),
            command=tuple(record.get("command", ())),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_running(state_dir: Path) -> Backend | None:
    """Return the recorded backend if its process still runs and it answers; clear a stale record."""
    backend = load(state_dir)
    if backend is None:
        return None
    if backend.pid is not None and not pid_is_running(backend.pid):
        clear(state_dir)
        return None
    return backend if backend.is_healthy() else None


def clear(state_dir: Path) -> None:
    state_path(state_dir).unlink(missing_ok=True)
