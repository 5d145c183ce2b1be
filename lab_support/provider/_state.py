"""State shared by the provider's app and its notebook object: settings, keys, ledger, limits, faults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lab_support.provider._faults import FaultScript
from lab_support.provider._keys import KeyRing
from lab_support.provider._ledger import Ledger, Pricing
from lab_support.provider._payments import Payments
from lab_support.provider._ratelimit import RateLimiter
from lab_support.provider._upstream import Upstream


@dataclass(frozen=True)
class Latency:
    """Simulated network and model delays, in seconds.

    ``round_trip_s`` delays every response by one network round trip before
    the provider does anything else. ``time_to_first_token_s`` is added after
    that: before the first streamed chunk (the headers are already sent), or
    before the upstream call of a non-streaming request.
    """

    round_trip_s: float = 0.0
    time_to_first_token_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("round_trip_s", "time_to_first_token_s"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"invalid {name} {value!r}: use seconds >= 0")


@dataclass
class ProviderState:
    """The provider's state, shared by the ASGI app (server thread) and ``Provider`` (notebook thread).

    ``pricing`` and ``latency`` are frozen objects that the notebook may
    replace at any time; a request reads each of them once.
    """

    models: dict[str, str]
    upstream: Upstream
    keys: KeyRing
    ledger: Ledger
    limiter: RateLimiter
    faults: FaultScript
    payments: Payments
    pricing: Pricing
    latency: Latency
    clock: Callable[[], float]
