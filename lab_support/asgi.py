"""Run an ASGI app (FastAPI, Starlette) with uvicorn in the background of a notebook.

    >>> server = serve_in_background(app)
    >>> httpx.get(f"{server.url}/api/health")
    >>> server.stop()

The server binds 127.0.0.1 on a free port, runs its own event loop in a
daemon thread so the notebook's cells stay free, and is stopped by
``stop()``, by leaving a ``with`` block, or at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field

import uvicorn

from lab_support._net import LOOPBACK

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 5.0

_servers: weakref.WeakSet[BackgroundServer] = weakref.WeakSet()


@dataclass(eq=False)
class BackgroundServer:
    """A uvicorn server running in a daemon thread; ``url`` has no trailing slash."""

    host: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, *, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop accepting connections, close open ones after ``timeout`` and join the thread."""
        if not self._thread.is_alive():
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Streams still open after the grace period are cut.
            self._server.force_exit = True
            self._thread.join(timeout)
        logger.info("stopped server on %s", self.url)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_in_background(
    app,
    *,
    host: str = LOOPBACK,
    port: int = 0,
    log_level: str = "warning",
    timeout_graceful_shutdown: float = 2.0,
) -> BackgroundServer:
    """Start ``app`` under uvicorn on ``host:port`` (0 picks a free port) and wait until it accepts connections."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {error}; pass port=0 for a free port") from error
    bound_port = sock.getsockname()[1]

    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="auto",
        timeout_graceful_shutdown=timeout_graceful_shutdown,
    )
    server = uvicorn.Server(config)
    startup_error: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as error:  # reported to the caller below
            startup_error.append(error)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"uvicorn-{bound_port}", daemon=True)
    thread.start()

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            detail = repr(startup_error[0]) if startup_error else "no error was raised"
            raise RuntimeError(f"uvicorn did not start on {host}:{bound_port} ({detail}); see the log above")
        time.sleep(0.01)

    background = BackgroundServer(host=host, port=bound_port, _server=server, _thread=thread)
    _servers.add(background)
    logger.info("serving %r on %s", app, background.url)
    return background


def _stop_all() -> None:
    for server in list(_servers):
        server.stop(timeout=1.0)


atexit.register(_stop_all)
