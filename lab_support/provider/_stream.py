"""Server-sent events for a streamed chat completion, shaped by the request's fault.

Without a stream fault each event is ``data: <json>\\n\\n`` in one write,
and the stream ends with ``data: [DONE]``. A fault that acts "after N
chunks" acts before the chunk at index N, counting from 0 with the role
chunk included. If the stream is shorter, it acts before the chunk that
carries the finish reason, so it always acts before the model's last word.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging

from lab_support.provider._exchange import Exchange, error_body
from lab_support.provider._faults import (
    CrlfLineEndings,
    Drip,
    ErrorInStream,
    Fault,
    KeepAliveComments,
    SplitDataLine,
    SplitUtf8,
    StallMidStream,
    TruncatedStream,
)

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]


def encode_json(payload: object) -> str:
    """Serialize compactly, keeping non-ASCII characters as UTF-8 rather than \\u escapes."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class SseWriter:
    """Writes the events of one stream to an exchange, applying one fault."""

    def __init__(self, exchange: Exchange, fault: Fault) -> None:
        self.exchange = exchange
        self.fault = fault
        self.chunks_sent = 0
        self.ended = False
        self._events_sent = 0
        self._triggered = False
        self._line_ending = "\r\n" if isinstance(fault, CrlfLineEndings) else "\n"

    async def send_chunk(self, chunk: dict) -> bool:
        """Send one ``chat.completion.chunk``; return False once the stream must stop."""
        fault = self.fault
        if not await self._before_event():
            return False

        if self._fault_acts_now(chunk):
            self._triggered = True
            logger.info("%s: applying %s before chunk %d", self.exchange.request_id, fault, self.chunks_sent)

            if isinstance(fault, StallMidStream):
                if not await self.exchange.sleep(fault.seconds):
                    return False
            elif isinstance(fault, ErrorInStream):
                error = error_body(fault.message, type=fault.type, code=fault.code)
                await self._write_event(encode_json(error))
                await self._end()
                return False
            elif isinstance(fault, TruncatedStream):
                if fault.close_connection:
                    self.ended = True
                    await self.exchange.close_transport()
                else:
                    await self._end()
                return False
            elif isinstance(fault, SplitUtf8):
                await self._write_split_utf8(chunk, fault.text, fault.pause_s)
            elif isinstance(fault, SplitDataLine):
                await self._write_split_data_line(encode_json(chunk), fault.pause_s)
                self.chunks_sent += 1
                return True

        await self._write_event(encode_json(chunk))
        self.chunks_sent += 1
        return True

    async def send_usage(self, chunk: dict) -> bool:
        """Send the final usage chunk (empty ``choices``); return False once the stream must stop."""
        if not await self._before_event():
            return False
        await self._write_event(encode_json(chunk))
        return True

    async def send_error(self, error: dict) -> None:
        """Send an error event and end the stream without ``[DONE]``."""
        await self._write_event(encode_json(error))
        await self._end()

    async def finish(self) -> None:
        """Send ``data: [DONE]`` and end the response."""
        if self.ended:
            return
        if not await self._before_event():
            return
        await self._write_event("[DONE]")
        await self._end()

    async def _before_event(self) -> bool:
        fault = self.fault
        if isinstance(fault, Drip) and self._events_sent > 0:
            if not await self.exchange.sleep(fault.interval_s):
                return False
        if isinstance(fault, KeepAliveComments) and self._events_sent % fault.every_chunks == 0:
            await self.exchange.write(f": {fault.comment}{self._line_ending}{self._line_ending}".encode())
        self._events_sent += 1
        return True

    def _fault_acts_now(self, chunk: dict) -> bool:
        after_chunks = getattr(self.fault, "after_chunks", None)
        if after_chunks is None or self._triggered:
            return False
        has_finish_reason = any(choice.get("finish_reason") for choice in chunk.get("choices") or [])
        return self.chunks_sent >= after_chunks or has_finish_reason

    async def _write_event(self, data: str) -> None:
        event = f"data: {data}{self._line_ending}{self._line_ending}".encode()
        if isinstance(self.fault, CrlfLineEndings):
            # The CR that ends the data line goes in this write, its LF in the next.
            split_at = event.index(b"\r") + 1
            await self._write_in_two(event, split_at, self.fault.pause_s)
        else:
            await self.exchange.write(event)

    async def _write_split_utf8(self, template: dict, text: str, pause_s: float) -> None:
        inserted = copy.deepcopy(template)
        for choice in inserted.get("choices") or [{}]:
            choice["delta"] = {"content": text}
            choice["finish_reason"] = None
        event = f"data: {encode_json(inserted)}{self._line_ending}{self._line_ending}".encode()

        character = next(character for character in text if len(character.encode()) > 1)
        split_at = event.index(character.encode()) + 1
        await self._write_in_two(event, split_at, pause_s)

    async def _write_split_data_line(self, data: str, pause_s: float) -> None:
        event = f"data: {data}{self._line_ending}{self._line_ending}".encode()
        split_at = len(b"data: ") + len(data.encode()) // 2
        # Step back to a character boundary, so only the line is split, not a character.
        while split_at > 0 and 0x80 <= event[split_at] <= 0xBF:
            split_at -= 1
        await self._write_in_two(event, split_at, pause_s)

    async def _write_in_two(self, event: bytes, split_at: int, pause_s: float) -> None:
        await self.exchange.write(event[:split_at])
        await asyncio.sleep(pause_s)
        await self.exchange.write(event[split_at:])

    async def _end(self) -> None:
        self.ended = True
        await self.exchange.end()
