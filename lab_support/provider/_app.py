"""The provider's ASGI app: routing, latency, API keys, rate limits and scripted faults.

A ``POST`` request goes through these steps, in order:

1. the simulated network round trip (``Latency.round_trip_s``);
2. body and API key checks (400, 401), then the request's own checks
   (unknown model: 404);
3. the key's budget and rate limits (429, with ``Retry-After`` when a wait helps);
4. the next scripted fault, which may respond in place of the endpoint;
5. the endpoint itself.

A request rejected in steps 2 and 3 consumes no script item.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable

import httpx

from lab_support.provider._chat import ChatCompletions, ChatRequest, parse_chat_request
from lab_support.provider._exchange import BodyTooLarge, Exchange, InvalidRequest
from lab_support.provider._faults import ConnectionRefused, ConnectionReset, Fault, HttpError, SlowFirstByte, StreamFault
from lab_support.provider._keys import ApiKey, AuthFailure
from lab_support.provider._payments import IdempotencyConflict, parse_charge_request, validate_idempotency_key
from lab_support.provider._state import ProviderState
from lab_support.provider._upstream import UpstreamError

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
CHARGES_PATH = "/v1/payments/charges"
MODELS_PATH = "/v1/models"
MODEL_OWNER = "serving-lab"

# Maximum time a response waits for the provider's listener to close when an
# outage starts after it. Stopping uvicorn takes one 0.1 s tick plus the time
# to close its sockets.
LISTENER_CLOSE_TIMEOUT_S = 5.0
LISTENER_PROBE_INTERVAL_S = 0.02

STATUS_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "requests",
}


class ProviderApp:
    """The ASGI app of one provider; it keeps no state of its own beyond the upstream client."""

    def __init__(
        self,
        state: ProviderState,
        *,
        start_outage: Callable[[ConnectionRefused], None],
        listen_address: Callable[[], tuple[str, int]],
    ) -> None:
        self.state = state
        self._start_outage = start_outage
        self._listen_address = listen_address
        self._upstream_client: httpx.AsyncClient | None = None
        self._chat = ChatCompletions(state, self._client)

    def __repr__(self) -> str:
        return f"ProviderApp(models={sorted(self.state.models)}, upstream={self.state.upstream.base_url!r})"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            raise RuntimeError(f"unsupported ASGI scope type {scope['type']!r}: the provider serves HTTP only")

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._upstream_client = self.state.upstream.create_client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._close_upstream_client()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _client(self) -> httpx.AsyncClient:
        if self._upstream_client is None:
            self._upstream_client = self.state.upstream.create_client()
        return self._upstream_client

    async def _close_upstream_client(self) -> None:
        client, self._upstream_client = self._upstream_client, None
        if client is not None:
            await client.aclose()

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        exchange = Exchange(scope, receive, send, request_id="req_" + secrets.token_hex(12))
        started = time.monotonic()
        try:
            route = self._route(exchange)
            if route is None:
                await exchange.read_body()
                await self._send_not_found(exchange)
                return
            if not await exchange.sleep(self.state.latency.round_trip_s):
                return
            await route(exchange)
        except InvalidRequest as error:
            await self._send_invalid(exchange, error)
        except BodyTooLarge as error:
            await exchange.send_error(413, f"The {error}: send a smaller body.", type="invalid_request_error")
        except UpstreamError as error:
            logger.warning("%s: upstream error %d: %s", exchange.request_id, error.status, error.message)
            if not exchange.started:
                await exchange.send_error(error.status, error.message, type=error.type, code=error.code)
        finally:
            # An outage due after this response still starts when no response was sent.
            await exchange.run_before_end()
            await exchange.aclose()
            logger.info(
                "%s %s %s key=%s fault=%s status=%s %.0f ms",
                exchange.request_id,
                exchange.method,
                exchange.path,
                exchange.key_name or "-",
                exchange.fault_text or "-",
                exchange.status if exchange.status is not None else "none (connection cut)",
                (time.monotonic() - started) * 1000,
            )

    def _route(self, exchange: Exchange) -> Callable[[Exchange], Awaitable[None]] | None:
        routes = {
            ("POST", CHAT_PATH): self._chat_completions,
            ("POST", CHARGES_PATH): self._charges,
            ("GET", MODELS_PATH): self._list_models,
        }
        handler = routes.get((exchange.method, exchange.path))
        if handler is not None:
            return handler
        if exchange.method == "GET" and exchange.path.startswith(MODELS_PATH + "/"):
            return self._retrieve_model
        return None

    async def _list_models(self, exchange: Exchange) -> None:
        await exchange.read_body()
        if await self._authenticate(exchange) is None:
            return
        await exchange.send_json(200, {"object": "list", "data": [self._model_object(name) for name in self.state.models]})

    async def _retrieve_model(self, exchange: Exchange) -> None:
        await exchange.read_body()
        if await self._authenticate(exchange) is None:
            return
        name = exchange.path.removeprefix(MODELS_PATH + "/")
        if name not in self.state.models:
            raise InvalidRequest(
                f"The model {name!r} does not exist on this provider. Available models: {', '.join(sorted(self.state.models))}.",
                param="model",
                status=404,
                code="model_not_found",
            )
        await exchange.send_json(200, self._model_object(name))

    def _model_object(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": MODEL_OWNER}

    async def _chat_completions(self, exchange: Exchange) -> None:
        raw_body = await exchange.read_body()
        key = await self._authenticate(exchange)
        if key is None:
            return
        body = _parse_json(raw_body)
        request: ChatRequest = parse_chat_request(body, self.state.models)

        reservation = request.token_reservation(body)
        if not await self._admit(exchange, key, reservation):
            return

        used_tokens = 0
        fault = await self._take_fault(exchange, key)
        try:
            if not await self._apply_fault_before_processing(exchange, fault):
                used_tokens = await self._chat.handle(exchange, key, request, fault)
        finally:
            self.state.limiter.settle(key.name, reservation, used_tokens)

    async def _charges(self, exchange: Exchange) -> None:
        raw_body = await exchange.read_body()
        key = await self._authenticate(exchange)
        if key is None:
            return
        request = parse_charge_request(_parse_json(raw_body))
        idempotency_key = validate_idempotency_key(exchange.headers.get("idempotency-key"))

        if not await self._admit(exchange, key, 0):
            return
        fault = await self._take_fault(exchange, key)
        if isinstance(fault, StreamFault):
            raise InvalidRequest(
                f"The scripted fault '{fault}' applies to streaming chat completions only; "
                "script a different fault for a charge.",
                code="fault_needs_stream",
            )
        if await self._apply_fault_before_processing(exchange, fault):
            return

        outcome = self.state.payments.charge(key.name, request, idempotency_key)
        if isinstance(outcome, IdempotencyConflict):
            await exchange.send_error(outcome.status, outcome.message, type="invalid_request_error", code=outcome.code)
            return
        response, replayed = outcome
        headers = [("idempotent-replayed", "true")] if replayed else []
        if replayed:
            logger.info("%s: replayed the stored response of charge %s", exchange.request_id, response.body["id"])
        else:
            logger.info("%s: applied charge %s for key %r", exchange.request_id, response.body["id"], key.name)

        if isinstance(fault, ConnectionReset):
            await exchange.reset()
        elif isinstance(fault, SlowFirstByte):
            if await exchange.sleep(fault.seconds):
                await exchange.send_json(response.status, response.body, headers)
        else:
            await exchange.send_json(response.status, response.body, headers)

    async def _authenticate(self, exchange: Exchange) -> ApiKey | None:
        result = self.state.keys.authenticate(exchange.headers.get("authorization"))
        if isinstance(result, AuthFailure):
            await exchange.send_error(401, result.message, type="invalid_request_error", code=result.code)
            return None
        exchange.key_name = result.name
        return result

    async def _admit(self, exchange: Exchange, key: ApiKey, estimated_tokens: int) -> bool:
        policy = self.state.keys.policy(key.name)

        if policy.budget_usd is not None:
            spent = self.state.ledger.spent_usd(key.name)
            if spent >= policy.budget_usd:
                await exchange.send_error(
                    429,
                    f"Key {key.name!r} has used its budget of ${policy.budget_usd:.6f} (spent ${spent:.6f}). "
                    "Retrying will not help: issue a key with a larger budget_usd.",
                    type="insufficient_quota",
                    code="insufficient_quota",
                )
                return False

        admission = self.state.limiter.admit(key.name, policy.rate_limits, estimated_tokens)
        exchange.response_headers += admission.headers
        if admission.allowed:
            return True
        headers = []
        if admission.retry_after_s is not None:
            headers.append(("retry-after", str(admission.retry_after_s)))
        logger.info("%s: rate limited key %r on %s", exchange.request_id, key.name, admission.limit_type)
        await exchange.send_error(429, admission.message, type=admission.limit_type or "requests", code="rate_limit_exceeded", headers=headers)
        return False

    async def _take_fault(self, exchange: Exchange, key: ApiKey) -> Fault:
        fault, refused = self.state.faults.take(key_name=key.name, request_id=exchange.request_id, path=exchange.path)
        exchange.fault_text = str(fault)
        if refused is not None:
            exchange.close_connection = True
            exchange.before_end.append(lambda: self._begin_outage(exchange, refused))
        return fault

    async def _apply_fault_before_processing(self, exchange: Exchange, fault: Fault) -> bool:
        """Send the response of a fault that acts before processing, and return whether there was one."""
        if isinstance(fault, HttpError):
            await self._send_scripted_error(exchange, fault)
            return True
        if isinstance(fault, ConnectionReset) and not fault.after_processing:
            await exchange.reset()
            return True
        return False

    async def _send_scripted_error(self, exchange: Exchange, fault: HttpError) -> None:
        headers = []
        if fault.retry_after is not None:
            if fault.retry_after_as_date:
                retry_at = math.ceil(time.time() + fault.retry_after)
                headers.append(("retry-after", email.utils.formatdate(retry_at, usegmt=True)))
            else:
                headers.append(("retry-after", _format_seconds(fault.retry_after)))
        message = fault.message or f"Scripted fault: the provider responds {fault.status}."
        error_type = STATUS_ERROR_TYPES.get(fault.status, "server_error" if fault.status >= 500 else "invalid_request_error")
        code = "rate_limit_exceeded" if fault.status == 429 else f"scripted_{fault.status}"
        await exchange.send_error(fault.status, message, type=error_type, code=code, headers=headers)

    async def _begin_outage(self, exchange: Exchange, refused: ConnectionRefused) -> None:
        logger.info("%s: starting a %.2f s outage after this response", exchange.request_id, refused.seconds)
        self._start_outage(refused)
        host, port = self._listen_address()
        deadline = time.monotonic() + LISTENER_CLOSE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                return
            writer.close()
            await asyncio.sleep(LISTENER_PROBE_INTERVAL_S)
        logger.warning("%s: the listener on port %d was still open %.1f s into the outage", exchange.request_id, port, LISTENER_CLOSE_TIMEOUT_S)

    async def _send_not_found(self, exchange: Exchange) -> None:
        known = f"POST {CHAT_PATH}, POST {CHARGES_PATH}, GET {MODELS_PATH}"
        await exchange.send_error(
            404,
            f"No route for {exchange.method} {exchange.path} on this provider. Routes: {known}.",
            type="invalid_request_error",
            code="unknown_url",
        )

    async def _send_invalid(self, exchange: Exchange, error: InvalidRequest) -> None:
        if exchange.started:
            logger.warning("%s: invalid request after the response started: %s", exchange.request_id, error.message)
            return
        await exchange.send_error(error.status, error.message, type="invalid_request_error", code=error.code, param=error.param)


def _parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError as error:
        raise InvalidRequest(f"The request body is not valid JSON ({error}). Send a JSON object.") from None


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
