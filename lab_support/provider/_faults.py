"""Scripted faults: what the next requests get, as typed objects or short strings.

Every fault is a frozen dataclass. A script is a list of faults (or their
short string forms) that requests consume in order, one item per request to
``POST /v1/chat/completions`` or ``POST /v1/payments/charges``. A request
with nothing scripted gets :class:`Ok`. ``GET /v1/models`` never consumes
an item, so listing models does not shift a script.

Short string forms, parsed by :func:`parse_fault`::

    ok
    429  429:retry-after=1  429:retry-after=0  429:retry-after-date=2
    500  502  503  504  (any status from 400 to 599)
    reset  reset:after-processing
    refused  refused:seconds=2
    slow-first-byte:seconds=10
    stall:seconds=30,after=3
    drip:interval=2
    error-in-stream:after=3
    truncate:after=3  truncate:after=3,close-connection
    split-utf8:after=3  split-data-line:after=3,pause=0.2  crlf  ping:every=1
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from lab_support.provider._keys import key_name_of

DEFAULT_AFTER_CHUNKS = 3
DEFAULT_REFUSED_S = 1.0
DEFAULT_DRIP_INTERVAL_S = 2.0
DEFAULT_SPLIT_TEXT = "€"
DEFAULT_KEEPALIVE_COMMENT = "ping"

# The pause between the two writes of a split, so that the client's reads
# see them apart. TCP may still merge them when the client reads late.
DEFAULT_SPLIT_PAUSE_S = 0.05


@dataclass(frozen=True)
class Fault:
    """One scripted behaviour for one request; see the subclasses."""

    name: ClassVar[str] = ""

    # Maps the parameter names of the short string form to field names.
    string_params: ClassVar[dict[str, str]] = {}

    def __str__(self) -> str:
        params = []
        for text_name, field_name in self.string_params.items():
            value = getattr(self, field_name)
            if value is False or value == _field_default(type(self), field_name):
                continue
            params.append(text_name if value is True else f"{text_name}={_format_number(value)}")
        return self.name + (":" + ",".join(params) if params else "")


@dataclass(frozen=True)
class StreamFault(Fault):
    """A fault that shapes a streamed response; a non-streaming request that meets one gets 400."""


@dataclass(frozen=True)
class Ok(Fault):
    """Serve the request normally."""

    name: ClassVar[str] = "ok"


@dataclass(frozen=True)
class HttpError(Fault):
    """Respond with ``status`` and an OpenAI-shaped error body, before any processing.

    ``retry_after`` (seconds) adds a ``Retry-After`` header: delta-seconds by
    default, or an HTTP date that many seconds ahead when
    ``retry_after_as_date`` is true. HTTP dates have one-second resolution, so
    the date is rounded up to the next whole second. None sends no header.
    A fractional delay such as 1.5 is sent as written, although RFC 9110
    allows only whole delta-seconds; the openai SDK parses it as a float.
    """

    status: int = 500
    retry_after: float | None = None
    retry_after_as_date: bool = False
    message: str | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"invalid HTTP error status {self.status!r}: use a status from 400 to 599")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"invalid retry_after {self.retry_after!r}: use seconds >= 0, or None for no header")
        if self.retry_after_as_date and self.retry_after is None:
            raise ValueError("retry_after_as_date=True needs retry_after in seconds")

    def __str__(self) -> str:
        text = str(self.status)
        if self.retry_after is None:
            return text
        key = "retry-after-date" if self.retry_after_as_date else "retry-after"
        return f"{text}:{key}={_format_number(self.retry_after)}"


@dataclass(frozen=True)
class RateLimited(HttpError):
    """Respond 429 ``rate_limit_exceeded``; see :class:`HttpError` for ``retry_after``."""

    status: int = 429

    def __post_init__(self) -> None:
        if self.status != 429:
            raise ValueError(f"invalid status {self.status!r} for RateLimited: use HttpError({self.status}) instead")
        super().__post_init__()


@dataclass(frozen=True)
class ConnectionReset(Fault):
    """Reset the TCP connection (RST, through ``SO_LINGER`` 0) before any response byte.

    The client sees ``ConnectionResetError`` on its read: ``httpx.ReadError``,
    or ``openai.APIConnectionError``. With ``after_processing`` the provider
    first does the work (a chat completion is generated and billed, a charge
    is applied), so a retry repeats work that already happened.
    """

    name: ClassVar[str] = "reset"
    string_params: ClassVar[dict[str, str]] = {"after-processing": "after_processing"}

    after_processing: bool = False


@dataclass(frozen=True)
class ConnectionRefused(Fault):
    """Stop listening for ``seconds``, so that new connections are refused by the kernel.

    A listening socket cannot refuse one chosen connection, so this fault is a
    time window, not a request count. It starts when it reaches the head of
    the global script: at once when scripted first, otherwise just before the
    response to the request that consumed the previous item ends (that
    response carries ``Connection: close``). The provider then stops its
    server, which closes idle keep-alive connections and cuts streams still
    open after its graceful-shutdown timeout, and starts it again on the same
    port when the window ends. Every connection attempt in the window gets
    ``ECONNREFUSED``: ``httpx.ConnectError``, or ``openai.APIConnectionError``.
    The next script item applies to the first request after the window.
    """

    name: ClassVar[str] = "refused"
    string_params: ClassVar[dict[str, str]] = {"seconds": "seconds"}

    seconds: float = DEFAULT_REFUSED_S

    def __post_init__(self) -> None:
        _require_positive("seconds", self.seconds)


@dataclass(frozen=True)
class SlowFirstByte(Fault):
    """Wait ``seconds`` before the status line, so a shorter client timeout fires first.

    A chat completion goes upstream only after the wait, and only if the
    client is still connected. A charge is applied at once, before the wait,
    as a slow server would still do the work.
    """

    name: ClassVar[str] = "slow-first-byte"
    string_params: ClassVar[dict[str, str]] = {"seconds": "seconds"}

    seconds: float = 10.0

    def __post_init__(self) -> None:
        _require_positive("seconds", self.seconds)


@dataclass(frozen=True)
class StallMidStream(StreamFault):
    """Relay ``after_chunks`` chunks, then send nothing for ``seconds``, then resume."""

    name: ClassVar[str] = "stall"
    string_params: ClassVar[dict[str, str]] = {"seconds": "seconds", "after": "after_chunks"}

    seconds: float = 30.0
    after_chunks: int = DEFAULT_AFTER_CHUNKS

    def __post_init__(self) -> None:
        _require_positive("seconds", self.seconds)
        _require_count("after_chunks", self.after_chunks)


@dataclass(frozen=True)
class Drip(StreamFault):
    """Wait ``interval_s`` before every chunk after the first, so tokens drip in slowly."""

    name: ClassVar[str] = "drip"
    string_params: ClassVar[dict[str, str]] = {"interval": "interval_s"}

    interval_s: float = DEFAULT_DRIP_INTERVAL_S

    def __post_init__(self) -> None:
        _require_positive("interval_s", self.interval_s)


@dataclass(frozen=True)
class ErrorInStream(StreamFault):
    """After ``after_chunks`` chunks, send ``data: {"error": {...}}`` and end the stream without ``[DONE]``."""

    name: ClassVar[str] = "error-in-stream"
    string_params: ClassVar[dict[str, str]] = {"after": "after_chunks"}

    after_chunks: int = DEFAULT_AFTER_CHUNKS
    message: str = "The model server failed while generating this response."
    type: str = "server_error"
    code: str | None = "stream_interrupted"

    def __post_init__(self) -> None:
        _require_count("after_chunks", self.after_chunks)


@dataclass(frozen=True)
class TruncatedStream(StreamFault):
    """End the stream after ``after_chunks`` chunks, with no finish reason and no ``[DONE]``.

    By default the HTTP body ends cleanly (the terminating zero-length chunk
    is sent), so an SSE client simply runs out of events. With
    ``close_connection`` the provider closes the TCP connection in the middle
    of the chunked body, which HTTP clients report as an incomplete read.
    """

    name: ClassVar[str] = "truncate"
    string_params: ClassVar[dict[str, str]] = {"after": "after_chunks", "close-connection": "close_connection"}

    after_chunks: int = DEFAULT_AFTER_CHUNKS
    close_connection: bool = False

    def __post_init__(self) -> None:
        _require_count("after_chunks", self.after_chunks)


@dataclass(frozen=True)
class SplitUtf8(StreamFault):
    """Insert a chunk whose content is ``text`` after ``after_chunks`` chunks, written in two writes.

    The split falls after the first byte of the first multi-byte character
    of ``text``, so neither write is valid UTF-8 on its own, and the writes
    are ``pause_s`` apart. The client's final text contains ``text`` at that
    place; the inserted chunk is not billed.
    """

    name: ClassVar[str] = "split-utf8"
    string_params: ClassVar[dict[str, str]] = {"after": "after_chunks", "pause": "pause_s"}

    after_chunks: int = DEFAULT_AFTER_CHUNKS
    text: str = DEFAULT_SPLIT_TEXT
    pause_s: float = DEFAULT_SPLIT_PAUSE_S

    def __post_init__(self) -> None:
        _require_count("after_chunks", self.after_chunks)
        _require_positive("pause_s", self.pause_s)
        if not any(len(character.encode("utf-8")) > 1 for character in self.text):
            raise ValueError(f"invalid text {self.text!r}: it needs a character that takes more than one byte in UTF-8")


@dataclass(frozen=True)
class SplitDataLine(StreamFault):
    """Write the chunk after ``after_chunks`` chunks in two writes ``pause_s`` apart, split inside its ``data:`` line."""

    name: ClassVar[str] = "split-data-line"
    string_params: ClassVar[dict[str, str]] = {"after": "after_chunks", "pause": "pause_s"}

    after_chunks: int = DEFAULT_AFTER_CHUNKS
    pause_s: float = DEFAULT_SPLIT_PAUSE_S

    def __post_init__(self) -> None:
        _require_count("after_chunks", self.after_chunks)
        _require_positive("pause_s", self.pause_s)


@dataclass(frozen=True)
class CrlfLineEndings(StreamFault):
    """End every SSE line with CRLF, writing each event's first CR and the LF after it in writes ``pause_s`` apart."""

    name: ClassVar[str] = "crlf"
    string_params: ClassVar[dict[str, str]] = {"pause": "pause_s"}

    pause_s: float = DEFAULT_SPLIT_PAUSE_S

    def __post_init__(self) -> None:
        _require_positive("pause_s", self.pause_s)


@dataclass(frozen=True)
class KeepAliveComments(StreamFault):
    """Send an SSE comment line (``: ping``) as its own write before every ``every_chunks``-th chunk."""

    name: ClassVar[str] = "ping"
    string_params: ClassVar[dict[str, str]] = {"every": "every_chunks"}

    every_chunks: int = 1
    comment: str = DEFAULT_KEEPALIVE_COMMENT

    def __post_init__(self) -> None:
        if self.every_chunks < 1:
            raise ValueError(f"invalid every_chunks {self.every_chunks!r}: use 1 or more")
        if "\n" in self.comment or "\r" in self.comment:
            raise ValueError(f"invalid comment {self.comment!r}: it must fit on one line")


FAULT_TYPES: tuple[type[Fault], ...] = (
    Ok,
    ConnectionReset,
    ConnectionRefused,
    SlowFirstByte,
    StallMidStream,
    Drip,
    ErrorInStream,
    TruncatedStream,
    SplitUtf8,
    SplitDataLine,
    CrlfLineEndings,
    KeepAliveComments,
)
_TYPES_BY_NAME = {fault_type.name: fault_type for fault_type in FAULT_TYPES}


def parse_fault(text: str) -> Fault:
    """Parse one short string form such as ``"429:retry-after=1"`` or ``"stall:seconds=5,after=2"``."""
    name, _, param_text = text.strip().partition(":")
    name = name.strip().lower()
    params = [param.strip() for param in param_text.split(",") if param.strip()]

    if name.isdigit():
        return _parse_http_error(text, int(name), params)

    fault_type = _TYPES_BY_NAME.get(name)
    if fault_type is None:
        known = ", ".join(["<status>", *sorted(_TYPES_BY_NAME)])
        raise ValueError(f"unknown fault {text!r}: use one of {known}")

    values: dict[str, object] = {}
    for param in params:
        key, has_value, raw_value = param.partition("=")
        field_name = fault_type.string_params.get(key.strip())
        if field_name is None:
            allowed = ", ".join(fault_type.string_params) or "none"
            raise ValueError(f"unknown parameter {key.strip()!r} in fault {text!r}: parameters for {name!r} are {allowed}")
        field_type = _field_type(fault_type, field_name)
        if field_type == "bool":
            if has_value:
                raise ValueError(f"parameter {key.strip()!r} in fault {text!r} is a flag: write it without '='")
            values[field_name] = True
        elif not has_value:
            raise ValueError(f"parameter {key.strip()!r} in fault {text!r} needs a value, as in {key.strip()}=2")
        else:
            values[field_name] = _convert(text, key.strip(), raw_value.strip(), field_type)
    return fault_type(**values)


def to_fault(item: Fault | str) -> Fault:
    """Return ``item`` if it is a fault, else parse it as a short string form."""
    if isinstance(item, Fault):
        return item
    if isinstance(item, str):
        return parse_fault(item)
    raise TypeError(f"invalid script item {item!r}: use a Fault object such as RateLimited(retry_after=1) or a string such as '503'")


@dataclass(frozen=True)
class AppliedFault:
    """A consumed script item; an outage (:class:`ConnectionRefused`) has no request, so its ids are None."""

    fault: Fault
    scripted: bool
    request_id: str | None
    key_name: str | None
    path: str | None


class FaultScript:
    """The queues of scripted faults: one global queue and one per API key name.

    A request takes the head of its key's queue when that queue is not empty,
    otherwise the head of the global queue, otherwise :class:`Ok`. Methods
    are safe to call from a notebook while the server thread consumes items.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._global: deque[Fault] = deque()
        self._per_key: dict[str, deque[Fault]] = {}
        self._history: list[AppliedFault] = []
        self._on_refused_at_head: Callable[[ConnectionRefused], None] | None = None

    def script(self, items: Iterable[Fault | str], *, key: object = None) -> None:
        """Replace the queue (global, or of ``key``: an ApiKey or key name) with ``items``."""
        faults = [to_fault(item) for item in items]
        key_name = key_name_of(key)
        _validate_outages(faults, key_name)
        with self._lock:
            queue = self._queue_for(key_name)
            queue.clear()
            queue.extend(faults)
        self._start_refused_at_head()

    def extend(self, items: Iterable[Fault | str], *, key: object = None) -> None:
        """Append ``items`` to the queue (global, or of ``key``)."""
        faults = [to_fault(item) for item in items]
        key_name = key_name_of(key)
        with self._lock:
            queue = self._queue_for(key_name)
            _validate_outages([*queue, *faults], key_name)
            queue.extend(faults)
        self._start_refused_at_head()

    def clear(self) -> None:
        """Empty every queue; the history stays."""
        with self._lock:
            self._global.clear()
            self._per_key.clear()

    def pending(self, *, key: object = None) -> list[Fault]:
        """Return the faults still queued (global, or of ``key``), next first."""
        with self._lock:
            return list(self._queue_for(key_name_of(key)))

    @property
    def history(self) -> list[AppliedFault]:
        """Every script item consumed so far, and the :class:`Ok` of unscripted requests, oldest first."""
        with self._lock:
            return list(self._history)

    def take(self, *, key_name: str, request_id: str, path: str) -> tuple[Fault, ConnectionRefused | None]:
        """Consume the next fault for a request and return it with the outage that now starts, if any.

        The second value is the :class:`ConnectionRefused` that the consumed
        item uncovered at the head of the global queue, or None. The caller
        must start that outage before its response ends.
        """
        with self._lock:
            key_queue = self._per_key.get(key_name)
            if key_queue:
                fault, scripted = key_queue.popleft(), True
            elif self._global:
                fault, scripted = self._global.popleft(), True
            else:
                fault, scripted = Ok(), False
            self._history.append(AppliedFault(fault, scripted, request_id, key_name, path))
            refused = self._pop_refused_at_head()
        return fault, refused

    def set_outage_handler(self, handler: Callable[[ConnectionRefused], None]) -> None:
        """Set the callable that starts an outage for a :class:`ConnectionRefused` scripted first."""
        self._on_refused_at_head = handler

    def _start_refused_at_head(self) -> None:
        with self._lock:
            refused = self._pop_refused_at_head()
        if refused is not None and self._on_refused_at_head is not None:
            self._on_refused_at_head(refused)

    def _pop_refused_at_head(self) -> ConnectionRefused | None:
        if self._global and isinstance(self._global[0], ConnectionRefused):
            refused = self._global.popleft()
            self._history.append(AppliedFault(refused, True, None, None, None))
            return refused
        return None

    def _queue_for(self, key_name: str | None) -> deque[Fault]:
        if key_name is None:
            return self._global
        return self._per_key.setdefault(key_name, deque())


def _validate_outages(faults: Sequence[Fault], key_name: str | None) -> None:
    refused = [isinstance(fault, ConnectionRefused) for fault in faults]
    if key_name is not None and any(refused):
        raise ValueError(
            "ConnectionRefused closes the listener for every client, so it cannot be scripted per key: "
            "script it without key="
        )
    for index in range(1, len(refused)):
        if refused[index] and refused[index - 1]:
            raise ValueError(
                f"script items {index - 1} and {index} are both ConnectionRefused: "
                "merge them into one ConnectionRefused(seconds=...) with the total time"
            )


def _field_default(fault_type: type[Fault], field_name: str) -> object:
    for field in dataclasses.fields(fault_type):
        if field.name == field_name:
            return field.default
    raise AssertionError(f"{fault_type.__name__} has no field {field_name}")



def _parse_http_error(text: str, status: int, params: Sequence[str]) -> HttpError:
    retry_after: float | None = None
    as_date = False
    for param in params:
        key, has_value, raw_value = param.partition("=")
        key = key.strip()
        if key not in ("retry-after", "retry-after-date") or not has_value:
            raise ValueError(
                f"invalid parameter {param!r} in fault {text!r}: use retry-after=SECONDS, "
                "retry-after=none or retry-after-date=SECONDS"
            )
        value = raw_value.strip().lower()
        if key == "retry-after" and value == "none":
            retry_after = None
            continue
        retry_after = float(_convert(text, key, value, "float"))
        as_date = key == "retry-after-date"
    fault_type = RateLimited if status == 429 else HttpError
    return fault_type(status=status, retry_after=retry_after, retry_after_as_date=as_date)


def _field_type(fault_type: type[Fault], field_name: str) -> str:
    for field in dataclasses.fields(fault_type):
        if field.name == field_name:
            return str(field.type)
    raise AssertionError(f"{fault_type.__name__} has no field {field_name}")


def _convert(text: str, key: str, raw_value: str, field_type: str) -> object:
    converter = int if field_type == "int" else float
    try:
        return converter(raw_value)
    except ValueError:
        kind = "a whole number" if converter is int else "a number of seconds"
        raise ValueError(f"invalid value {raw_value!r} for {key!r} in fault {text!r}: use {kind}") from None


def _require_positive(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"invalid {name} {value!r}: use seconds >= 0")


def _require_count(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"invalid {name} {value!r}: use a count >= 0")


def _format_number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
