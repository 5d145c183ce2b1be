"""Units of the simulated provider that need no server: fault parsing, scripts, keys, buckets, prices, counts."""

from __future__ import annotations

import os

import pytest

from lab_support.provider import (
    ApiKey,
    ConnectionRefused,
    ConnectionReset,
    CrlfLineEndings,
    Drip,
    ErrorInStream,
    HttpError,
    KeepAliveComments,
    Ok,
    Pricing,
    RateLimited,
    RateLimits,
    SlowFirstByte,
    SplitDataLine,
    SplitUtf8,
    StallMidStream,
    TruncatedStream,
    parse_fault,
)
from lab_support.provider._faults import FaultScript
from lab_support.provider._keys import AuthFailure, KeyPolicy, KeyRing
from lab_support.provider._payments import IDEMPOTENCY_TTL_S, IdempotencyConflict, Payments, parse_charge_request
from lab_support.provider._ratelimit import RateLimiter, format_duration
from lab_support.provider._usage import chunk_token_count, estimate_prompt_tokens, requested_output_tokens


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Fault strings.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ok", Ok()),
        ("429", RateLimited()),
        ("429:retry-after=1", RateLimited(retry_after=1)),
        ("429:retry-after=0", RateLimited(retry_after=0)),
        ("429:retry-after=none", RateLimited()),
        ("429:retry-after-date=2", RateLimited(retry_after=2, retry_after_as_date=True)),
        ("503", HttpError(503)),
        ("500", HttpError(500)),
        ("reset", ConnectionReset()),
        ("reset:after-processing", ConnectionReset(after_processing=True)),
        ("refused:seconds=2", ConnectionRefused(seconds=2)),
        ("slow-first-byte:seconds=10", SlowFirstByte(seconds=10)),
        ("stall:seconds=30,after=3", StallMidStream(seconds=30, after_chunks=3)),
        ("drip:interval=2", Drip(interval_s=2)),
        ("error-in-stream:after=1", ErrorInStream(after_chunks=1)),
        ("truncate:after=3,close-connection", TruncatedStream(after_chunks=3, close_connection=True)),
        ("split-utf8:after=2", SplitUtf8(after_chunks=2)),
        ("split-data-line:after=1,pause=0.2", SplitDataLine(after_chunks=1, pause_s=0.2)),
        ("crlf", CrlfLineEndings()),
        ("ping:every=2", KeepAliveComments(every_chunks=2)),
        ("  STALL : seconds=1 ", StallMidStream(seconds=1)),
    ],
)
def test_parse_fault_strings(text, expected):
    assert parse_fault(text) == expected


@pytest.mark.parametrize(
    "fault",
    [
        RateLimited(retry_after=1),
        RateLimited(retry_after=2, retry_after_as_date=True),
        HttpError(504),
        ConnectionReset(after_processing=True),
        StallMidStream(seconds=5, after_chunks=1),
        TruncatedStream(close_connection=True),
        KeepAliveComments(every_chunks=3),
        Ok(),
    ],
)
def test_fault_str_parses_back(fault):
    assert parse_fault(str(fault)) == fault


@pytest.mark.parametrize(
    ("text", "message_part"),
    [
        ("teapot", "unknown fault 'teapot'"),
        ("stall:speed=3", "unknown parameter 'speed'"),
        ("stall:seconds=soon", "invalid value 'soon'"),
        ("reset:after-processing=yes", "is a flag"),
        ("stall:seconds", "needs a value"),
        ("429:wait=1", "retry-after=SECONDS"),
        ("302", "from 400 to 599"),
        ("drip:interval=-1", "interval_s -1.0"),
    ],
)
def test_parse_fault_rejects_bad_strings(text, message_part):
    with pytest.raises(ValueError, match=message_part.replace("(", r"\(")):
        parse_fault(text)


def test_split_utf8_needs_multibyte_text():
    with pytest.raises(ValueError, match="more than one byte"):
        SplitUtf8(text="abc")


# Scripts.


def test_script_consumes_key_queue_before_global():
    script = FaultScript()
    script.script(["500", "502"])
    script.script(["503"], key="team-b")

    taken = [script.take(key_name=name, request_id=str(index), path="/")[0] for index, name in enumerate(["team-b", "team-b", "default", "default"])]

    assert taken == [HttpError(503), HttpError(500), HttpError(502), Ok()]


def test_script_replaces_and_extends():
    script = FaultScript()
    script.script(["500", "502"])
    script.script(["503"])
    script.extend([Ok(), "504"])

    assert script.pending() == [HttpError(503), Ok(), HttpError(504)]


def test_script_rejects_bad_items():
    script = FaultScript()

    with pytest.raises(TypeError, match="invalid script item 503"):
        script.script([503])
    with pytest.raises(ValueError, match="merge them"):
        script.script(["refused", "refused"])


def test_refused_uncovered_by_take_is_returned():
    script = FaultScript()
    started = []
    script.set_outage_handler(started.append)
    script.script(["503", ConnectionRefused(seconds=2), "ok"])

    fault, refused = script.take(key_name="default", request_id="r1", path="/")

    assert started == []
    assert fault == HttpError(503)
    assert refused == ConnectionRefused(seconds=2)
    assert script.pending() == [Ok()]


def test_refused_first_starts_outage_at_once():
    script = FaultScript()
    started = []
    script.set_outage_handler(started.append)

    script.script([ConnectionRefused(seconds=1), "ok"])

    assert started == [ConnectionRefused(seconds=1)]
    assert script.pending() == [Ok()]
    assert script.history[0].request_id is None


# Keys.


def test_api_key_masks_value():
    key = ApiKey("default", "sk-lab-abcdefghijklmnop1234")

    assert repr(key) == "ApiKey(name='default', value='sk-lab-...1234')"
    assert str(key) == "sk-lab-...1234"
    assert f"{key}" == "sk-lab-...1234"
    assert key.get_secret_value() == "sk-lab-abcdefghijklmnop1234"


def test_short_key_shows_no_characters():
    assert ApiKey("short", "sk-lab-abc").masked == "sk-lab-..."


def test_api_key_export_sets_variable(monkeypatch):
    monkeypatch.delenv("LAB_TEST_KEY", raising=False)

    ApiKey("default", "sk-lab-exported-value-9999").export("LAB_TEST_KEY")

    assert os.environ["LAB_TEST_KEY"] == "sk-lab-exported-value-9999"


def test_key_ring_authenticates_bearer_keys():
    ring = KeyRing()
    policy = KeyPolicy(rate_limits=RateLimits())
    first = ring.issue("default", policy)
    second = ring.issue("team-b", policy)

    assert ring.authenticate(f"Bearer {first.get_secret_value()}") is first
    assert ring.authenticate(f"bearer  {second.get_secret_value()} ") is second
    assert isinstance(ring.authenticate(None), AuthFailure)
    assert ring.authenticate("Bearer sk-lab-nope").code == "invalid_api_key"
    assert ring.authenticate(first.get_secret_value()).code == "invalid_authorization_header"


def test_key_ring_rejects_duplicates():
    ring = KeyRing()
    policy = KeyPolicy(rate_limits=RateLimits())
    ring.add(ApiKey("default", "sk-lab-same-value-0000"), policy)

    with pytest.raises(ValueError, match="already exists"):
        ring.issue("default", policy)
    with pytest.raises(ValueError, match="already in use"):
        ring.add(ApiKey("other", "sk-lab-same-value-0000"), policy)


# Rate limits.


def test_bucket_refills_continuously():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limits = RateLimits(requests_per_minute=3, tokens_per_minute=None)

    decisions = [limiter.admit("k", limits, 0).allowed for _ in range(4)]
    clock.advance(19.9)
    still_empty = limiter.admit("k", limits, 0)
    clock.advance(0.1)
    refilled = limiter.admit("k", limits, 0)

    assert decisions == [True, True, True, False]
    assert still_empty.allowed is False
    assert still_empty.retry_after_s == 1
    assert refilled.allowed is True


def test_retry_after_covers_both_limits():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limits = RateLimits(requests_per_minute=60, tokens_per_minute=600)

    limiter.admit("k", limits, 600)
    rejected = limiter.admit("k", limits, 100)

    assert rejected.allowed is False
    assert rejected.limit_type == "tokens"
    assert rejected.retry_after_s == 10


def test_settle_replaces_reservation_with_usage():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=1000)

    limiter.admit("k", limits, 500)
    limiter.settle("k", reserved_tokens=500, used_tokens=100)
    after = limiter.admit("k", limits, 0)

    assert dict(after.headers)["x-ratelimit-remaining-tokens"] == "900"


def test_rate_limits_validate():
    with pytest.raises(ValueError, match="requests_per_minute 0"):
        RateLimits(requests_per_minute=0)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.02, "20ms"), (0.0, "0ms"), (1.0, "1s"), (1.5, "1.5s"), (30.0, "30s"), (60.0, "1m0s"), (360.0, "6m0s"), (90.4, "1m30s")],
)
def test_format_duration(seconds, expected):
    assert format_duration(seconds) == expected


# Prices and token counts.


def test_pricing_cost_per_million():
    pricing = Pricing(input_per_million=0.15, output_per_million=0.60)

    assert pricing.cost(1_000_000, 0) == pytest.approx(0.15)
    assert pricing.cost(2_000, 1_000) == pytest.approx(0.0003 + 0.0006)


def test_pricing_rejects_negative():
    with pytest.raises(ValueError, match="input_per_million -1"):
        Pricing(input_per_million=-1)


def test_prompt_estimate_counts_messages_and_text():
    one = estimate_prompt_tokens([{"role": "user", "content": "abcd" * 10}])
    two = estimate_prompt_tokens([{"role": "system", "content": ""}, {"role": "user", "content": "abcd" * 10}])
    parts = estimate_prompt_tokens([{"role": "user", "content": [{"type": "text", "text": "abcd" * 10}]}])

    assert one == 3 + 4 + 10
    assert two == one + 4
    assert parts == one


def test_output_reservation_sources():
    assert requested_output_tokens({"max_completion_tokens": 7, "max_tokens": 9}) == 7
    assert requested_output_tokens({"max_tokens": 9}) == 9
    assert requested_output_tokens({}) == 256


def test_chunk_count_skips_empty_deltas():
    assert chunk_token_count({"choices": [{"delta": {"role": "assistant"}}]}) == 0
    assert chunk_token_count({"choices": [{"delta": {"content": "Hi"}}]}) == 1
    assert chunk_token_count({"choices": [{"delta": {}, "finish_reason": "stop"}]}) == 0


# Payments.


def test_payments_replay_and_expiry():
    clock = FakeClock()
    payments = Payments(clock)
    request = parse_charge_request({"amount": 500, "currency": "USD"})

    first, first_replayed = payments.charge("default", request, "order-1")
    repeat, repeat_replayed = payments.charge("default", request, "order-1")
    clock.advance(IDEMPOTENCY_TTL_S + 1)
    expired, expired_replayed = payments.charge("default", request, "order-1")

    assert (first_replayed, repeat_replayed, expired_replayed) == (False, True, False)
    assert repeat == first
    assert expired.body["id"] != first.body["id"]
    assert len(payments.charges) == 2
    assert payments.charges[0].currency == "usd"


def test_payments_conflict_on_changed_body():
    payments = Payments(FakeClock())
    payments.charge("default", parse_charge_request({"amount": 500, "currency": "usd"}), "order-2")

    outcome = payments.charge("default", parse_charge_request({"amount": 600, "currency": "usd"}), "order-2")

    assert isinstance(outcome, IdempotencyConflict)
    assert outcome.status == 422
