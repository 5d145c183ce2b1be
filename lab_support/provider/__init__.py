"""A simulated hosted LLM provider on a loopback port, in front of the local model.

It plays a paid, OpenAI-compatible API: bearer API keys, per-key rate
limits and budgets, per-token billing, network latency, and outages and
other faults on demand, while the tokens come from the real local model.

    >>> from lab_support import start_backend
    >>> from lab_support.provider import RateLimited, start_provider
    >>> provider = start_provider(upstream=start_backend())
    >>> provider.api_key                                   # masked in every repr
    ApiKey(name='default', value='sk-lab-...x3Qa')
    >>> provider.export_env()                              # sets OPENAI_BASE_URL and OPENAI_API_KEY
    >>> client = provider.client(max_retries=0)            # an openai.OpenAI
    >>> reply = client.chat.completions.create(model=provider.model, messages=[{"role": "user", "content": "Hi"}])
    >>> provider.faults.script([RateLimited(retry_after=1), "503", "ok"])
    >>> provider.ledger.totals()                           # requests, tokens and cost in USD
    >>> provider.stop()

Routes: ``POST /v1/chat/completions`` (streaming or not), ``GET /v1/models``,
``GET /v1/models/{id}`` and ``POST /v1/payments/charges``, a non-idempotent
tool call that honours ``Idempotency-Key``. Errors have the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``, so the ``openai``
package raises its usual exceptions. Each fault class documents what a
client gets, as in ``help(ConnectionReset)``.
"""

from lab_support.provider._faults import (
    AppliedFault,
    ConnectionRefused,
    ConnectionReset,
    CrlfLineEndings,
    Drip,
    ErrorInStream,
    Fault,
    FaultScript,
    HttpError,
    KeepAliveComments,
    Ok,
    RateLimited,
    SlowFirstByte,
    SplitDataLine,
    SplitUtf8,
    StallMidStream,
    StreamFault,
    TruncatedStream,
    parse_fault,
)
from lab_support.provider._keys import ApiKey
from lab_support.provider._ledger import Ledger, LedgerEntry, Pricing, UsageTotals
from lab_support.provider._payments import Charge
from lab_support.provider._provider import DEFAULT_MODEL_NAME, Provider, start_provider
from lab_support.provider._ratelimit import RateLimits
from lab_support.provider._state import Latency

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ApiKey",
    "AppliedFault",
    "Charge",
    "ConnectionRefused",
    "ConnectionReset",
    "CrlfLineEndings",
    "Drip",
    "ErrorInStream",
    "Fault",
    "FaultScript",
    "HttpError",
    "KeepAliveComments",
    "Latency",
    "Ledger",
    "LedgerEntry",
    "Ok",
    "Pricing",
    "Provider",
    "RateLimited",
    "RateLimits",
    "SlowFirstByte",
    "SplitDataLine",
    "SplitUtf8",
    "StallMidStream",
    "StreamFault",
    "TruncatedStream",
    "UsageTotals",
    "parse_fault",
    "start_provider",
]
