"""``POST /v1/chat/completions``: forwarded to the upstream, relayed, billed."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from httpx_sse import EventSource, SSEError

from lab_support.provider._exchange import Exchange, InvalidRequest, error_body
from lab_support.provider._faults import ConnectionReset, Fault, SlowFirstByte, StreamFault
from lab_support.provider._keys import ApiKey
from lab_support.provider._state import ProviderState
from lab_support.provider._stream import SSE_HEADERS, SseWriter
from lab_support.provider._upstream import UpstreamError, error_from_exception, error_from_response
from lab_support.provider._usage import (
    chunk_token_count,
    completion_text,
    estimate_prompt_tokens,
    estimate_text_tokens,
    read_usage,
    requested_output_tokens,
    usage_object,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request and the body to send upstream."""

    model: str
    messages: list[dict]
    stream: bool
    include_usage: bool
    upstream_body: dict

    @property
    def prompt_estimate(self) -> int:
        return estimate_prompt_tokens(self.messages)

    def token_reservation(self, body: dict) -> int:
        """Return the tokens to reserve against the tokens-per-minute limit: prompt estimate plus max output."""
        return self.prompt_estimate + requested_output_tokens(body)


def parse_chat_request(body: object, models: dict[str, str]) -> ChatRequest:
    """Validate a request body and map its model name to the upstream's, raising InvalidRequest."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object with 'model' and 'messages'.")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Missing 'model': set it to one of " + ", ".join(sorted(models)) + ".", param="model")
    if model not in models:
        raise InvalidRequest(
            f"The model {model!r} does not exist on this provider. Available models: {', '.join(sorted(models))}.",
            param="model",
            status=404,
            code="model_not_found",
        )

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(message, dict) for message in messages):
        raise InvalidRequest("'messages' must be a non-empty list of message objects.", param="messages")

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest(f"Invalid 'stream' {stream!r}: use true or false.", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidRequest("'stream_options' must be an object such as {\"include_usage\": true}.", param="stream_options")
    include_usage = bool(stream_options.get("include_usage", False))

    upstream_body = dict(body)
    upstream_body["model"] = models[model]
    max_completion_tokens = upstream_body.pop("max_completion_tokens", None)
    if max_completion_tokens is not None and "max_tokens" not in upstream_body:
        upstream_body["max_tokens"] = max_completion_tokens
    if stream:
        # Asked for every stream, so the provider can bill upstreams that support it.
        upstream_body["stream_options"] = {"include_usage": True}
    else:
        upstream_body.pop("stream_options", None)

    return ChatRequest(model, messages, stream, include_usage, upstream_body)


class ChatCompletions:
    """Serves chat completions through the upstream client of the running server."""

    def __init__(self, state: ProviderState, upstream_client: Callable[[], httpx.AsyncClient]) -> None:
        self._state = state
        self._upstream_client = upstream_client

    async def handle(self, exchange: Exchange, key: ApiKey, request: ChatRequest, fault: Fault) -> int:
        """Serve one request shaped by ``fault`` and return the tokens billed (0 if none)."""
        if isinstance(fault, StreamFault) and not request.stream:
            raise InvalidRequest(
                f"The scripted fault '{fault}' applies to streaming requests only. "
                "Send stream=true, or script a different fault for this request.",
                code="fault_needs_stream",
            )
        if isinstance(fault, SlowFirstByte) and not await exchange.sleep(fault.seconds):
            logger.info("%s: client left during the slow first byte, so nothing was sent upstream", exchange.request_id)
            return 0

        if request.stream:
            return await self._stream(exchange, key, request, fault)
        return await self._complete(exchange, key, request, fault)

    async def _complete(self, exchange: Exchange, key: ApiKey, request: ChatRequest, fault: Fault) -> int:
        if not await exchange.sleep(self._state.latency.time_to_first_token_s):
            return 0

        try:
            response = await self._upstream_client().post("chat/completions", json=request.upstream_body)
        except httpx.HTTPError as error:
            raise error_from_exception(error, self._state.upstream.base_url) from error
        if response.status_code != 200:
            raise error_from_response(response.status_code, response.content)
        try:
            payload = response.json()
        except ValueError as error:
            raise UpstreamError(
                502, "The model server sent a response that is not JSON.", type="server_error", code="upstream_invalid_response"
            ) from error

        payload["model"] = request.model
        usage = read_usage(payload.get("usage"))
        estimated = usage is None
        if usage is None:
            usage = (request.prompt_estimate, estimate_text_tokens(completion_text(payload)))
            payload["usage"] = usage_object(*usage)
        self._bill(exchange, key, request, usage, estimated)

        if isinstance(fault, ConnectionReset):
            await exchange.reset()
            return sum(usage)
        headers = [("x-usage-estimated", "true")] if estimated else []
        await exchange.send_json(200, payload, headers)
        return sum(usage)

    async def _stream(self, exchange: Exchange, key: ApiKey, request: ChatRequest, fault: Fault) -> int:
        writer = SseWriter(exchange, fault)
        relay = not isinstance(fault, ConnectionReset)
        tally = _StreamTally(prompt_estimate=request.prompt_estimate)
        last_chunk: dict = {}

        async def bill() -> None:
            if not tally.billed:
                tally.billed = True
                self._bill(exchange, key, request, tally.usage(), estimated=tally.upstream_usage is None)

        # Billed before the response ends, so a client that reads the ledger afterwards finds the entry.
        exchange.before_end.insert(0, bill)
        try:
            async with self._upstream_client().stream("POST", "chat/completions", json=request.upstream_body) as response:
                if response.status_code != 200:
                    tally.billed = True
                    raise error_from_response(response.status_code, await response.aread())

                if relay:
                    await exchange.start(200, SSE_HEADERS)
                    if not await exchange.sleep(self._state.latency.time_to_first_token_s):
                        return sum(tally.usage())

                async for event in EventSource(response).aiter_sse():
                    if exchange.disconnected.is_set():
                        logger.info("%s: client disconnected mid-stream", exchange.request_id)
                        break
                    if event.data.strip() == "[DONE]":
                        tally.completed = True
                        break
                    chunk = _parse_chunk(exchange.request_id, event.data)
                    if chunk is None:
                        continue
                    if "error" in chunk:
                        logger.warning("%s: the upstream sent an error mid-stream: %s", exchange.request_id, chunk["error"])
                        if relay:
                            await writer.send_error(chunk)
                        break

                    usage = read_usage(chunk.pop("usage", None))
                    if usage is not None:
                        tally.upstream_usage = usage
                    if not chunk.get("choices"):
                        continue
                    chunk["model"] = request.model
                    last_chunk = chunk
                    if relay and not await writer.send_chunk(chunk):
                        break
                    # Counted once relayed: a chunk that a fault or the client's leaving kept back is not billed.
                    tally.counted_tokens += chunk_token_count(chunk)
                else:
                    logger.warning("%s: the upstream stream ended without [DONE]", exchange.request_id)
        except httpx.HTTPError as error:
            upstream_error = error_from_exception(error, self._state.upstream.base_url)
            if not exchange.started:
                tally.billed = True
                raise upstream_error from error
            logger.warning("%s: upstream failed mid-stream: %s", exchange.request_id, error)
            if not writer.ended:
                await writer.send_error(error_body(upstream_error.message, type=upstream_error.type, code=upstream_error.code))
            return sum(tally.usage())
        except SSEError as error:
            tally.billed = True
            raise UpstreamError(
                502, f"The model server did not send an event stream: {error}", type="server_error", code="upstream_invalid_response"
            ) from error
        finally:
            # Covers the ends without a final write: the client left, or the server is stopping.
            await bill()

        if not relay:
            await exchange.reset()
        elif tally.completed and not writer.ended and not exchange.disconnected.is_set():
            if request.include_usage:
                await writer.send_usage(
                    {
                        "id": last_chunk.get("id"),
                        "object": "chat.completion.chunk",
                        "created": last_chunk.get("created"),
                        "model": request.model,
                        "choices": [],
                        "usage": usage_object(*tally.usage()),
                    }
                )
            await writer.finish()
        elif not writer.ended and not exchange.disconnected.is_set():
            await exchange.end()
        return sum(tally.usage())

    def _bill(self, exchange: Exchange, key: ApiKey, request: ChatRequest, usage: tuple[int, int], estimated: bool) -> None:
        entry = self._state.ledger.record(
            request_id=exchange.request_id,
            key_name=key.name,
            model=request.model,
            input_tokens=usage[0],
            output_tokens=usage[1],
            pricing=self._state.pricing,
            estimated=estimated,
        )
        logger.info(
            "%s: billed key %r for %d input and %d output tokens ($%.6f%s)",
            exchange.request_id,
            key.name,
            entry.input_tokens,
            entry.output_tokens,
            entry.cost_usd,
            ", estimated" if estimated else "",
        )


@dataclass
class _StreamTally:
    """Token counts of one stream so far; ``billed`` turns true once it is billed or found unbillable."""

    prompt_estimate: int
    counted_tokens: int = 0
    upstream_usage: tuple[int, int] | None = None
    completed: bool = False
    billed: bool = False

    def usage(self) -> tuple[int, int]:
        """Return ``(prompt_tokens, completion_tokens)``, the upstream's where it sent usage."""
        prompt_tokens = self.upstream_usage[0] if self.upstream_usage else self.prompt_estimate
        # The upstream's count covers the whole generation, so it is used only for a stream relayed to the end.
        completion_tokens = self.upstream_usage[1] if self.upstream_usage and self.completed else self.counted_tokens
        return prompt_tokens, completion_tokens


def _parse_chunk(request_id: str, data: str) -> dict | None:
    try:
        chunk = json.loads(data)
    except ValueError:
        logger.warning("%s: skipped an upstream event that is not JSON: %.200r", request_id, data)
        return None
    if not isinstance(chunk, dict):
        logger.warning("%s: skipped an upstream event that is not an object: %.200r", request_id, data)
        return None
    return chunk
