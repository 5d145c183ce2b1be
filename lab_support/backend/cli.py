"""``serving-lab backend start|status|stop``: run the local model outside a notebook."""

from __future__ import annotations

import argparse
import signal
import threading

from lab_support._procs import stop_pid
from lab_support.backend import _state, start_backend
from lab_support.backend._backend import Backend
from lab_support.settings import DEVICES, ENGINES, get_settings


def add_command(commands) -> None:
    parser = commands.add_parser("backend", help="start, inspect or stop the local model server")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    start = actions.add_parser("start", help="start the local model and leave it running for notebooks")
    start.add_argument("--engine", choices=ENGINES, default=None, help="model engine (default: LAB_ENGINE or auto)")
    start.add_argument("--device", choices=DEVICES, default=None, help="where the model runs (default: LAB_DEVICE or auto)")
    start.add_argument(
        "--foreground", action="store_true", help="stay attached and stop the engine on Ctrl-C instead of detaching"
    )
    start.set_defaults(handler=run_start)

    status = actions.add_parser("status", help="show the backend started by 'backend start'")
    status.set_defaults(handler=run_status)

    stop = actions.add_parser("stop", help="stop the backend started by 'backend start'")
    stop.set_defaults(handler=run_stop)


def describe(backend: Backend) -> str:
    lines = [
        f"engine:   {backend.engine}",
        f"device:   {backend.device} ({backend.device_detail})",
        f"base URL: {backend.base_url}",
        f"model:    {backend.model}",
    ]
    if backend.pid is not None:
        lines.append(f"pid:      {backend.pid}")
    if backend.log_path is not None:
        lines.append(f"log:      {backend.log_path}")
    return "\n".join(lines)


def run_start(args: argparse.Namespace) -> int:
    state_dir = get_settings().state_dir
    running = _state.load_running(state_dir)
    if running is not None:
        print(f"A backend is already running; stop it with 'serving-lab backend stop'.\n{describe(running)}")
        return 0

    backend = start_backend(args.engine, args.device, reuse=False, tied_to_parent=args.foreground)
    if not args.foreground:
        try:
            path = _state.save(state_dir, backend)
        except BaseException:
            # Without a state file nothing could find the detached engine again.
            stop_pid(backend.pid)
            raise
        print(f"{describe(backend)}\nstate:    {path}\nStop it with: serving-lab backend stop")
        return 0

    print(f"{describe(backend)}\nPress Ctrl-C to stop.")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        backend.stop()
    return 0


def run_status(args: argparse.Namespace) -> int:
    state_dir = get_settings().state_dir
    recorded = _state.load(state_dir)
    if recorded is None:
        print("No backend was started with 'serving-lab backend start'.")
        return 1

    healthy = recorded.is_healthy()
    print(f"{describe(recorded)}\nhealthy:  {'yes' if healthy else 'no (see the log above)'}")
    return 0 if healthy else 1


def run_stop(args: argparse.Namespace) -> int:
    state_dir = get_settings().state_dir
    recorded = _state.load(state_dir)
    if recorded is None:
        print("No backend was started with 'serving-lab backend start'; nothing to stop.")
        return 0

    if recorded.pid is None:
        print(f"The backend at {recorded.base_url} is an Ollama server this tool reused, so it stays running.")
    elif stop_pid(recorded.pid):
        print(f"Stopped {recorded.engine} (pid {recorded.pid}).")
    else:
        print(f"{recorded.engine} (pid {recorded.pid}) was no longer running.")
    _state.clear(state_dir)
    return 0
