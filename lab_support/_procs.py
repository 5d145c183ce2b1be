"""Child processes that never outlive the notebook that started them.

Every engine and server that the labs start goes through :func:`spawn`:

- the child gets its own process group, so :func:`stop_process` reaches the
  engine and anything the engine itself started;
- on Linux the child is started through :mod:`lab_support._child`, which asks
  the kernel to send it SIGTERM when its parent dies, so even a kernel killed
  with SIGKILL leaves no engine behind;
- everything still running at interpreter exit is stopped by an atexit hook.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0

_running: dict[int, subprocess.Popen] = {}
_running_lock = threading.Lock()


def spawn(
    command: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    tied_to_parent: bool = True,
) -> subprocess.Popen:
    """Start ``command`` in a new process group with stdout and stderr appended to ``log_path``.

    With ``tied_to_parent`` (the default) the child is stopped when this
    process exits or dies; without it the child keeps running, as
    ``serving-lab backend start`` needs.

    NOTE: Linux sends the death signal when the *thread* that started the
    child exits, so call this from a thread that lives as long as the child
    (a notebook's cells run on the kernel's main thread).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = list(command)
    if tied_to_parent and sys.platform.startswith("linux"):
        argv = [sys.executable, "-m", "lab_support._child", str(os.getpid()), "--", *argv]

    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )

    if tied_to_parent:
        with _running_lock:
            _running[process.pid] = process
    logger.info("started pid %d: %s (log: %s)", process.pid, " ".join(command), log_path)
    return process


def stop_process(process: subprocess.Popen, *, grace_s: float = STOP_GRACE_S) -> int | None:
    """Stop ``process`` and its process group: SIGTERM, then SIGKILL after ``grace_s``; return the exit code."""
    with _running_lock:
        _running.pop(process.pid, None)

    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d ignored SIGTERM for %.1f s; sending SIGKILL", process.pid, grace_s)
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_s)

    # The engine may have started helpers (Ollama runners) that outlive it.
    _signal_group(process.pid, signal.SIGKILL)
    return process.returncode


def stop_pid(pid: int, *, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop a process group this process did not start (by the leader's pid); return whether it was running."""
    if not pid_is_running(pid):
        return False
    _signal_group(pid, signal.SIGTERM)
    waited = 0.0
    while pid_is_running(pid) and waited < grace_s:
        threading.Event().wait(0.05)
        waited += 0.05
    _signal_group(pid, signal.SIGKILL)
    return True


def pid_is_running(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie."""
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def running_children() -> list[int]:
    """Return the pids this process started with :func:`spawn` that are still running."""
    with _running_lock:
        return [pid for pid, process in _running.items() if process.poll() is None]


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_all() -> None:
    with _running_lock:
        processes = list(_running.values())
    for process in processes:
        stop_process(process, grace_s=2.0)


atexit.register(_stop_all)
