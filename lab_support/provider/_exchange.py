"""One HTTP request and its response at the ASGI level, with control below the response framing.

Every ``write()`` becomes its own ``http.response.body`` message, which
uvicorn writes to the transport at once as one HTTP/1.1 chunk, so a fault
decides where the network writes split. ``reset()`` and ``close_transport()``
go below ASGI to the connection's transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576
DISCONNECT_WAIT_S = 2.0
JSON_CONTENT_TYPE = "application/json"


class BodyTooLarge(Exception):
    """The request body is larger than ``MAX_BODY_BYTES``."""


class InvalidRequest(Exception):
    """A request the provider rejects with an ``invalid_request_error``; ``param`` names the bad field."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


class Exchange:
    """One request and its response: body reading, sleeps that end on disconnect, raw writes, resets."""

    def __init__(self, scope: dict, receive: Callable, send: Callable, request_id: str) -> None:
        self.scope = scope
        self.request_id = request_id
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[str, str] = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }

        # Sent with every response of this exchange: x-request-id, rate-limit headers.
        self.response_headers: list[tuple[str, str]] = [("x-request-id", request_id)]
        self.close_connection = False
        # Awaited once each, in order, just before the response ends (final write, reset or close).
        self.before_end: list[Callable[[], Awaitable[None]]] = []

        # For the request log line: the authenticated key's name and the fault applied.
        self.key_name: str | None = None
        self.fault_text: str | None = None
        self.status: int | None = None
        self.started = False
        self.ended = False
        self.disconnected = asyncio.Event()
        self._receive = receive
        self._send = send
        self._watcher: asyncio.Task | None = None

    async def read_body(self) -> bytes:
        """Read the whole request body, then start watching for the client's disconnect."""
        chunks = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BodyTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self._watcher = asyncio.create_task(self._watch_disconnect())
        return b"".join(chunks)

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; return False at once if the client disconnects first."""
        if seconds <= 0:
            return not self.disconnected.is_set()
        try:
            await asyncio.wait_for(self.disconnected.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return True
        return False

    async def start(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send the status line and headers."""
        all_headers = [*headers, *self.response_headers]
        if self.close_connection:
            all_headers.append(("connection", "close"))
        self.status = status
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in all_headers],
            }
        )

    async def write(self, data: bytes) -> None:
        """Send ``data`` as one body message, which becomes one network write."""
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        """Send the last body message, after running the ``before_end`` hooks."""
        await self.run_before_end()
        self.ended = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def send_json(self, status: int, payload: object, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a complete JSON response."""
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        await self.start(
            status,
            [("content-type", JSON_CONTENT_TYPE), ("content-length", str(len(body))), *headers],
        )
        await self.end(body)

    async def send_error(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Send an error in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``."""
        await self.send_json(status, error_body(message, type=type, code=code, param=param), headers)

    async def reset(self) -> None:
        """Reset the connection (RST) and wait until uvicorn has seen it close.

        ``SO_LINGER`` with a zero timeout makes the kernel send RST instead
        of FIN when the socket closes, and anything still buffered is dropped.
        """
        await self.run_before_end()
        transport = self._transport()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        self.ended = True
        await self._wait_disconnected()

    async def close_transport(self) -> None:
        """Close the connection (FIN) after the bytes already written, without ending the HTTP body."""
        await self.run_before_end()
        self._transport().close()
        self.ended = True
        await self._wait_disconnected()

    async def aclose(self) -> None:
        """Stop watching for the disconnect."""
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return

    async def _wait_disconnected(self) -> None:
        # uvicorn logs an error, or responds with 500, when the app returns before
        # it has noticed the closed connection, so wait for its disconnect message.
        try:
            await asyncio.wait_for(self.disconnected.wait(), timeout=DISCONNECT_WAIT_S)
        except asyncio.TimeoutError:
            logger.warning("%s: connection not reported closed %.1f s after it was closed", self.request_id, DISCONNECT_WAIT_S)

    async def run_before_end(self) -> None:
        """Await the ``before_end`` hooks that have not run yet."""
        hooks, self.before_end = self.before_end, []
        for hook in hooks:
            await hook()

    def _transport(self) -> asyncio.Transport:
        # NOTE: ASGI gives an app no transport. uvicorn's send callable is a
        # method of its request-response cycle, which has a transport attribute
        # (read in uvicorn 0.55, both the h11 and the httptools protocol).
        cycle = getattr(self._send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if not isinstance(transport, asyncio.BaseTransport):
            raise RuntimeError(
                "this fault needs the connection's transport, which only uvicorn's HTTP/1.1 protocols expose: "
                "serve the provider with start_provider() or serve_in_background()"
            )
        return transport


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict:
    """Return an OpenAI error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
