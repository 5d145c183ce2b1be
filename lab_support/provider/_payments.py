"""A non-idempotent tool endpoint, ``POST /v1/payments/charges``, with ``Idempotency-Key`` support.

Each request without an ``Idempotency-Key`` header applies a new charge, so
a client that retries after a lost response charges twice. With the header,
the first request that gets as far as applying the charge stores its
response under (API key, idempotency key). A repeat with the same body gets
the stored response again with ``Idempotent-Replayed: true`` and applies
nothing, and a repeat with a different body gets 422. The check and the
charge happen in one step, so two concurrent repeats cannot both charge.
Requests that fail
before the charge (401, 429, scripted HTTP errors, a reset before
processing) store nothing, so their retry is processed normally. Stored
responses expire after ``IDEMPOTENCY_TTL_S`` on the provider's clock.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lab_support.provider._exchange import InvalidRequest

IDEMPOTENCY_TTL_S = 24 * 3600.0
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 500


@dataclass(frozen=True)
class Charge:
    """One applied charge; ``amount`` is in the currency's smallest unit (cents for USD)."""

    id: str
    key_name: str
    amount: int
    currency: str
    description: str | None
    idempotency_key: str | None
    created: int

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "object": "charge",
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
            "status": "succeeded",
            "created": self.created,
        }


@dataclass(frozen=True)
class ChargeRequest:
    """A validated request body."""

    amount: int
    currency: str
    description: str | None

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(
            {"amount": self.amount, "currency": self.currency, "description": self.description}, sort_keys=True
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict


@dataclass(frozen=True)
class IdempotencyConflict:
    """The error response for a request whose ``Idempotency-Key`` cannot be used."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class _IdempotencyRecord:
    fingerprint: str
    created: float
    response: StoredResponse


def parse_charge_request(body: object) -> ChargeRequest:
    """Validate a charge body, raising InvalidRequest that names the bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object such as {\"amount\": 500, \"currency\": \"usd\"}.")
    amount = body.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidRequest(
            f"Invalid amount {amount!r}: use a whole number > 0 in the currency's smallest unit (500 is $5.00).",
            param="amount",
        )
    currency = body.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise InvalidRequest(
            f"Invalid currency {currency!r}: use a three-letter ISO 4217 code such as 'usd'.", param="currency"
        )
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH):
        raise InvalidRequest(
            f"Invalid description: use a string of at most {MAX_DESCRIPTION_LENGTH} characters, or leave it out.",
            param="description",
        )
    return ChargeRequest(amount=amount, currency=currency.lower(), description=description)


def validate_idempotency_key(value: str | None) -> str | None:
    """Return the header value, or raise InvalidRequest if it is empty or too long."""
    if value is None:
        return None
    if not value.strip() or len(value) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidRequest(
            f"Invalid Idempotency-Key header: use 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters, "
            "for example a UUID generated once per logical operation.",
            param="Idempotency-Key",
        )
    return value


class Payments:
    """The charges applied so far and the stored responses of idempotent requests."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._charges: list[Charge] = []
        self._records: dict[tuple[str, str], _IdempotencyRecord] = {}

    @property
    def charges(self) -> list[Charge]:
        """Every charge applied, oldest first."""
        with self._lock:
            return list(self._charges)

    def charge(
        self, key_name: str, request: ChargeRequest, idempotency_key: str | None
    ) -> tuple[StoredResponse, bool] | IdempotencyConflict:
        """Apply a charge, or replay the stored response for ``idempotency_key``.

        Returns ``(response, replayed)``, or the conflict to send when the
        idempotency key was used with a different body.
        """
        with self._lock:
            now = self._clock()
            record_key = (key_name, idempotency_key)
            record = self._records.get(record_key) if idempotency_key is not None else None
            if record is not None and now - record.created > IDEMPOTENCY_TTL_S:
                record = None
            if record is not None:
                if record.fingerprint != request.fingerprint:
                    return IdempotencyConflict(
                        422,
                        "idempotency_key_reused",
                        "This Idempotency-Key was already used with a different request body. "
                        "Use a new key for a new operation.",
                    )
                return record.response, True

            charge = Charge(
                id="ch_" + secrets.token_hex(12),
                key_name=key_name,
                amount=request.amount,
                currency=request.currency,
                description=request.description,
                idempotency_key=idempotency_key,
                created=int(time.time()),
            )
            response = StoredResponse(200, charge.to_json())
            self._charges.append(charge)
            if idempotency_key is not None:
                self._records[record_key] = _IdempotencyRecord(request.fingerprint, now, response)
            return response, False
