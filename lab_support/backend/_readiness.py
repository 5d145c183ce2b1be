"""Wait for a started engine to answer, and explain why when it does not."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lab_support.backend._errors import BackendStartError

POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 20
KEEP_LOGS = 30


def log_tail(log_path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of an engine log, or a note saying why there are none."""
    if log_path is None:
        return "(no log: this process did not start the engine)"
    try:
        text = log_path.read_text(errors="replace")
    except OSError as error:
        return f"(could not read {log_path}: {error})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the log is empty)"


def prune_logs(log_dir: Path, keep: int = KEEP_LOGS) -> list[Path]:
    """Delete all but the ``keep`` newest engine logs in ``log_dir``; return the deleted paths.

    Every engine start writes a new log, so without pruning they pile up.
    """
    logs = sorted(log_dir.glob("*.log"), key=lambda path: path.stat().st_mtime, reverse=True)
    removed = []
    for path in logs[keep:]:
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def wait_until_ready(
    is_ready: Callable[[], bool],
    *,
    engine: str,
    command: Sequence[str],
    port: int,
    log_path: Path,
    process: subprocess.Popen,
    timeout_s: float,
) -> float:
    """Poll ``is_ready`` until it returns True; return the seconds waited.

    Raises :class:`BackendStartError` naming the engine, the command, the
    port and the end of the log when the process exits or ``timeout_s`` passes.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        if is_ready():
            return time.monotonic() - started

        exit_code = process.poll()
        if exit_code is not None:
            reason = f"exited with code {exit_code} before it was ready"
            break
        if time.monotonic() > deadline:
            reason = f"did not answer within {timeout_s:.0f} s (set LAB_STARTUP_TIMEOUT_S to wait longer)"
            break
        time.sleep(POLL_INTERVAL_S)

    raise BackendStartError(
        f"{engine} on 127.0.0.1:{port} {reason}.\n"
        f"command: {' '.join(command)}\n"
        f"log: {log_path}\n"
        f"last lines of the log:\n{log_tail(log_path)}"
    )
