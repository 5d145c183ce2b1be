"""Run a function in a daemon thread with a wall-clock limit, and stop it when the limit passes."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Time a thread gets to unwind after the first stop request, in seconds.
STOP_GRACE_S = 1.0


class TimeLimitExceeded(BaseException):
    """Raised inside a thread to stop it.

    It derives from BaseException so that ``except Exception`` in the learner's
    code does not catch it.
    """


@dataclass
class Outcome:
    """Result of a time-limited call.

    ``finished`` is False when the limit passed. ``stopped`` is then True when
    the thread ended and False when it still runs in the background.
    """

    finished: bool
    value: Any = None
    error: BaseException | None = None
    stopped: bool = True


def run_with_time_limit(function: Callable[[], Any], limit_s: float, name: str = "time-limited") -> Outcome:
    """Call ``function()`` in a daemon thread and wait at most ``limit_s`` seconds for it.

    A KeyboardInterrupt while waiting stops the thread too and is re-raised.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            try:
                box["value"] = function()
            except BaseException as error:  # handed to the caller, which reports it
                box["error"] = error
        except TimeLimitExceeded:
            # A stop request that arrived after the function returned; nothing to report.
            pass

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        thread.join(limit_s)
    except KeyboardInterrupt:
        stop_thread(thread)
        raise

    if thread.is_alive():
        return Outcome(finished=False, stopped=stop_thread(thread))
    error = box.get("error")
    if isinstance(error, TimeLimitExceeded):
        # The function finished just as the limit passed and caught the stop request.
        return Outcome(finished=False, stopped=True)
    return Outcome(finished=True, value=box.get("value"), error=error)


def stop_thread(thread: threading.Thread, grace_s: float = STOP_GRACE_S) -> bool:
    """Raise TimeLimitExceeded in ``thread`` until it ends; return whether it ended within ``grace_s``.

    The exception is delivered only when the thread runs Python bytecode, so a
    thread blocked in C code (``time.sleep``, a socket read without timeout)
    keeps running until that call returns.
    """
    deadline = time.monotonic() + grace_s
    while thread.is_alive() and time.monotonic() < deadline:
        if thread.ident is None:
            break
        _set_async_exception(thread.ident, TimeLimitExceeded)
        # Repeated because learner code with a bare ``except:`` can swallow one request.
        thread.join(0.05)
    return not thread.is_alive()


def _set_async_exception(thread_id: int, exception: type[BaseException] | None) -> None:
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    modified = set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None)
    if modified > 1:
        # CPython documents that a result above 1 needs undoing with a NULL exception.
        set_async_exc(ctypes.c_ulong(thread_id), None)
        raise SystemError(f"PyThreadState_SetAsyncExc changed {modified} threads for id {thread_id}")
