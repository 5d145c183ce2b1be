"""Per-key billing: requests, input and output tokens, and their cost in USD."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from lab_support.provider._keys import key_name_of

TOKENS_PER_MILLION = 1_000_000

# Prices in USD per million tokens, of the order of a small hosted model.
DEFAULT_INPUT_PRICE_PER_MILLION = 0.15
DEFAULT_OUTPUT_PRICE_PER_MILLION = 0.60


@dataclass(frozen=True)
class Pricing:
    """Prices in USD per million input (prompt) and output (completion) tokens."""

    input_per_million: float = DEFAULT_INPUT_PRICE_PER_MILLION
    output_per_million: float = DEFAULT_OUTPUT_PRICE_PER_MILLION

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"invalid {name} {value!r}: use a price in USD >= 0")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """Return the cost in USD of ``input_tokens`` and ``output_tokens``."""
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / TOKENS_PER_MILLION


@dataclass(frozen=True)
class LedgerEntry:
    """One billed request.

    ``estimated`` is true when the upstream reported no usage and the
    provider counted the tokens itself (see ``_usage.py``).
    """

    request_id: str
    key_name: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    estimated: bool
    time: float


@dataclass(frozen=True)
class UsageTotals:
    """Sums over ledger entries; ``cost_usd`` is the sum of the entries' costs."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, entry: LedgerEntry) -> UsageTotals:
        return UsageTotals(
            requests=self.requests + 1,
            input_tokens=self.input_tokens + entry.input_tokens,
            output_tokens=self.output_tokens + entry.output_tokens,
            cost_usd=self.cost_usd + entry.cost_usd,
        )


class Ledger:
    """Every billed request, in order; safe to read from a notebook while requests are served.

    A request is billed once the provider has sent it upstream: a completed
    response, a stream the client or a fault cut short (its prompt and the
    tokens relayed until then), and a response lost to
    ``ConnectionReset(after_processing=True)``. Requests rejected before
    they reach the model (401, 429, scripted HTTP errors, an upstream error
    response) cost nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LedgerEntry] = []

    def record(
        self,
        *,
        request_id: str,
        key_name: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        pricing: Pricing,
        estimated: bool,
    ) -> LedgerEntry:
        """Append and return the entry for one billed request."""
        entry = LedgerEntry(
            request_id=request_id,
            key_name=key_name,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=pricing.cost(input_tokens, output_tokens),
            estimated=estimated,
            time=time.time(),
        )
        with self._lock:
            self._entries.append(entry)
        return entry

    def entries(self, key: object = None) -> list[LedgerEntry]:
        """Return the entries of ``key`` (an ApiKey or key name), or of every key, oldest first."""
        key_name = key_name_of(key)
        with self._lock:
            return [entry for entry in self._entries if key_name is None or entry.key_name == key_name]

    def totals(self, key: object = None) -> UsageTotals:
        """Return the sums for ``key`` (an ApiKey or key name), or for every key."""
        totals = UsageTotals()
        for entry in self.entries(key):
            totals = totals + entry
        return totals

    def by_key(self) -> dict[str, UsageTotals]:
        """Return the sums of each key that has been billed."""
        result: dict[str, UsageTotals] = {}
        for entry in self.entries():
            result[entry.key_name] = result.get(entry.key_name, UsageTotals()) + entry
        return result

    def spent_usd(self, key_name: str) -> float:
        """Return what ``key_name`` has spent so far, in USD."""
        return self.totals(key_name).cost_usd

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __repr__(self) -> str:
        totals = self.totals()
        return (
            f"Ledger(requests={totals.requests}, input_tokens={totals.input_tokens}, "
            f"output_tokens={totals.output_tokens}, cost_usd={totals.cost_usd:.6f})"
        )
