"""The simulated hosted provider against the real local model: API, keys, billing, limits, latency, lifetime.

Fault injection has its own module, test_provider_faults.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import openai
import psutil
import pytest

from lab_support._net import LOOPBACK, port_is_open
from lab_support.provider import (
    DEFAULT_MODEL_NAME,
    ApiKey,
    ConnectionReset,
    Latency,
    Pricing,
    RateLimits,
    SlowFirstByte,
    start_provider,
)
from lab_support.provider._usage import estimate_prompt_tokens

MESSAGES = [{"role": "user", "content": "Say hi"}]
MAX_TOKENS = 6
CLIENT_TIMEOUT_S = 60.0
CHARGE = {"amount": 500, "currency": "usd", "description": "lab order 17"}


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def provider(backend):
    with start_provider(upstream=backend) as running:
        yield running


@pytest.fixture
def client(provider):
    with provider.client(max_retries=0, timeout=CLIENT_TIMEOUT_S) as sdk_client:
        yield sdk_client


def chat(client, **options):
    return client.chat.completions.create(
        model=DEFAULT_MODEL_NAME, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, **options
    )


def post_chat(provider, *, api_key: ApiKey | None = None, headers: dict | None = None, **body) -> httpx.Response:
    key = api_key or provider.api_key
    request_headers = {"authorization": f"Bearer {key.get_secret_value()}", **(headers or {})}
    payload = {"model": provider.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, **body}
    return httpx.post(f"{provider.base_url}/chat/completions", json=payload, headers=request_headers, timeout=CLIENT_TIMEOUT_S)


def post_charge(provider, body: dict, *, idempotency_key: str | None = None, api_key: ApiKey | None = None, timeout=10.0):
    key = api_key or provider.api_key
    headers = {"authorization": f"Bearer {key.get_secret_value()}"}
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    return httpx.post(f"{provider.base_url}/payments/charges", json=body, headers=headers, timeout=timeout)


# The OpenAI-compatible API and real tokens.


def test_models_lists_advertised_name(client, provider, backend):
    models = client.models.list()

    assert [model.id for model in models.data] == [DEFAULT_MODEL_NAME]
    assert provider.model == DEFAULT_MODEL_NAME
    assert backend.model not in [model.id for model in models.data]
    assert client.models.retrieve(DEFAULT_MODEL_NAME).id == DEFAULT_MODEL_NAME


def test_chat_returns_real_tokens_and_usage(client):
    completion = chat(client)

    assert completion.model == DEFAULT_MODEL_NAME
    assert completion.choices[0].message.content.strip()
    assert completion.usage.completion_tokens > 0
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_chat_accepts_max_completion_tokens(client):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME, messages=MESSAGES, max_completion_tokens=3, temperature=0
    )

    assert completion.usage.completion_tokens <= 3


def test_stream_ends_with_usage_chunk(client):
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))

    content_chunks = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert content_chunks
    assert all(chunk.model == DEFAULT_MODEL_NAME for chunk in chunks)
    assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in chunks)
    final = chunks[-1]
    assert final.choices == []
    assert final.usage.completion_tokens == len(content_chunks)
    assert final.usage.prompt_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_omits_unrequested_usage(client):
    chunks = list(chat(client, stream=True))

    assert chunks
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)


def test_several_advertised_models(backend):
    models = {"lab-mini-1": backend.model, "lab-mini-1-fast": backend.model}
    with start_provider(upstream=backend, models=models) as provider, provider.client(max_retries=0) as sdk_client:
        listed = [model.id for model in sdk_client.models.list().data]
        completion = sdk_client.chat.completions.create(model="lab-mini-1-fast", messages=MESSAGES, max_tokens=MAX_TOKENS)

    assert listed == ["lab-mini-1", "lab-mini-1-fast"]
    assert completion.model == "lab-mini-1-fast"


def test_async_client_streams(provider):
    async def stream_text() -> str:
        async with provider.async_client(max_retries=0, timeout=CLIENT_TIMEOUT_S) as async_client:
            stream = await async_client.chat.completions.create(
                model=provider.model, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
            )
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    text = asyncio.run(stream_text())

    assert text
    assert provider.ledger.totals().requests == 1


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-unknown", messages=MESSAGES, max_tokens=MAX_TOKENS)

    assert raised.value.code == "model_not_found"
    assert "gpt-unknown" in raised.value.message
    assert DEFAULT_MODEL_NAME in raised.value.message


def test_invalid_body_is_rejected(provider):
    headers = {"authorization": f"Bearer {provider.api_key.get_secret_value()}"}

    not_json = httpx.post(f"{provider.base_url}/chat/completions", content=b"{not json", headers=headers)
    no_messages = httpx.post(f"{provider.base_url}/chat/completions", json={"model": provider.model}, headers=headers)

    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"


def test_unknown_route_is_not_found(provider):
    response = httpx.get(f"{provider.url}/v1/embeddings")

    assert response.status_code == 404
    assert "/v1/embeddings" in response.json()["error"]["message"]


# API keys.


def test_missing_key_is_401(provider):
    response = httpx.post(f"{provider.base_url}/chat/completions", json={"model": provider.model, "messages": MESSAGES})

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "missing_api_key"
    assert "Authorization: Bearer" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_wrong_key_raises_authentication_error(provider):
    wrong = "sk-lab-this-key-was-never-issued-0000"
    with provider.client(api_key=ApiKey("wrong", wrong), max_retries=0) as sdk_client:
        with pytest.raises(openai.AuthenticationError) as raised:
            chat(sdk_client)

    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"
    assert wrong not in raised.value.response.text
    assert wrong[-4:] not in raised.value.response.text


def test_non_bearer_header_is_401(provider):
    headers = {"authorization": f"Basic {provider.api_key.get_secret_value()}"}

    response = httpx.get(f"{provider.base_url}/models", headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_authorization_header"
    assert provider.api_key.get_secret_value() not in response.text


def test_revoked_key_is_401(provider):
    extra = provider.issue_key("team-b")
    with provider.client(api_key=extra, max_retries=0) as sdk_client:
        assert sdk_client.models.list().data

        provider.revoke_key(extra)
        with pytest.raises(openai.AuthenticationError):
            sdk_client.models.list()

    assert provider.client(max_retries=0).models.list().data


def test_several_keys_are_accepted(provider):
    second = provider.issue_key("team-b")

    first_response = post_chat(provider)
    second_response = post_chat(provider, api_key=second)

    assert first_response.status_code == 200
    assert second_response.status_code == 200
    assert second.get_secret_value() != provider.api_key.get_secret_value()


def test_key_repr_and_str_are_masked(provider):
    secret = provider.api_key.get_secret_value()

    assert secret.startswith("sk-lab-")
    assert secret not in repr(provider.api_key)
    assert secret not in str(provider.api_key)
    assert secret not in repr(provider)
    assert repr(provider.api_key).endswith(f"'sk-lab-...{secret[-4:]}')")


def test_fixed_key_value_is_accepted(backend):
    with start_provider(upstream=backend, api_key="sk-lab-course-key-1234") as fixed:
        assert fixed.api_key.get_secret_value() == "sk-lab-course-key-1234"
        assert httpx.get(f"{fixed.base_url}/models", headers={"authorization": "Bearer sk-lab-course-key-1234"}).status_code == 200


def test_export_env_sets_variables_silently(provider, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    provider.export_env()
    with openai.OpenAI(max_retries=0) as env_client:
        models = env_client.models.list()

    captured = capsys.readouterr()
    assert provider.api_key.get_secret_value() not in captured.out + captured.err
    assert [model.id for model in models.data] == [DEFAULT_MODEL_NAME]


def test_key_never_reaches_logs(provider, caplog):
    caplog.set_level("DEBUG")
    wrong = "sk-lab-wrong-value-for-the-log-test"

    post_chat(provider)
    httpx.get(f"{provider.base_url}/models", headers={"authorization": f"Bearer {wrong}"})

    assert caplog.records
    assert provider.api_key.get_secret_value() not in caplog.text
    assert wrong not in caplog.text


# Usage and billing.


def test_ledger_adds_up_to_reported_usage(provider, client):
    reported = []
    reported.append(chat(client).usage)
    reported.append(chat(client).usage)
    stream = list(chat(client, stream=True, stream_options={"include_usage": True}))
    reported.append(stream[-1].usage)

    totals = provider.ledger.totals()
    assert totals.requests == 3
    assert totals.input_tokens == sum(usage.prompt_tokens for usage in reported)
    assert totals.output_tokens == sum(usage.completion_tokens for usage in reported)
    assert totals.cost_usd == pytest.approx(provider.pricing.cost(totals.input_tokens, totals.output_tokens))
    assert provider.ledger.by_key() == {"default": totals}


def test_cost_follows_configured_prices(backend):
    pricing = Pricing(input_per_million=2_000_000.0, output_per_million=4_000_000.0)
    with start_provider(upstream=backend, pricing=pricing) as priced, priced.client(max_retries=0) as sdk_client:
        usage = chat(sdk_client).usage

        entry = priced.ledger.entries()[0]

    assert entry.cost_usd == pytest.approx(2.0 * usage.prompt_tokens + 4.0 * usage.completion_tokens)
    assert entry.estimated is False


def test_stream_usage_counted_by_provider(provider, client):
    # llama-cpp-python 0.3.36 sends no usage chunk, so the provider counts.
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))

    entry = provider.ledger.entries()[0]
    content_chunks = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert entry.estimated is True
    assert entry.output_tokens == len(content_chunks)
    assert entry.input_tokens == chunks[-1].usage.prompt_tokens


def test_ledger_is_kept_per_key(provider):
    second = provider.issue_key("team-b")

    post_chat(provider)
    post_chat(provider, api_key=second)
    post_chat(provider, api_key=second)

    by_key = provider.ledger.by_key()
    assert by_key["default"].requests == 1
    assert by_key["team-b"].requests == 2
    assert provider.ledger.totals(second).requests == 2


def test_rejected_requests_are_not_billed(provider):
    provider.faults.script(["503"])

    response = post_chat(provider)
    unauthenticated = httpx.post(f"{provider.base_url}/chat/completions", json={"model": provider.model, "messages": MESSAGES})

    assert response.status_code == 503
    assert unauthenticated.status_code == 401
    assert provider.ledger.entries() == []


def test_budget_exhausted_is_insufficient_quota(backend):
    with start_provider(upstream=backend, budget_usd=1e-9) as limited, limited.client(max_retries=0) as sdk_client:
        chat(sdk_client)
        with pytest.raises(openai.RateLimitError) as raised:
            chat(sdk_client)

    assert raised.value.code == "insufficient_quota"
    assert "retry-after" not in raised.value.response.headers


# Rate limits.


def test_requests_per_minute_limit_answers_429(backend):
    # Charges need no model, so this test runs fast; chat completions share the same limiter.
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=2, tokens_per_minute=None)
    with start_provider(upstream=backend, rate_limits=limits, clock=clock) as limited:
        first = post_charge(limited, CHARGE)
        second = post_charge(limited, CHARGE)
        rejected = post_charge(limited, CHARGE)
        clock.advance(30)
        after_wait = post_charge(limited, CHARGE)
        charges = len(limited.charges)

    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "30s"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "x-ratelimit-limit-tokens" not in first.headers

    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "30"
    assert rejected.headers["x-ratelimit-remaining-requests"] == "0"
    assert rejected.json()["error"]["code"] == "rate_limit_exceeded"
    assert rejected.json()["error"]["type"] == "requests"

    assert after_wait.status_code == 200
    assert charges == 3


def test_sdk_rate_limit_error_headers(backend):
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=1, tokens_per_minute=None)
    with start_provider(upstream=backend, rate_limits=limits, clock=clock) as limited:
        with limited.client(max_retries=0) as sdk_client:
            chat(sdk_client)
            with pytest.raises(openai.RateLimitError) as raised:
                chat(sdk_client)

    headers = raised.value.response.headers
    assert headers["retry-after"] == "60"
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"


def test_tokens_per_minute_limit_answers_429(backend):
    clock = FakeClock()
    limit = 60
    reservation = estimate_prompt_tokens(MESSAGES) + MAX_TOKENS
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=limit)
    with start_provider(upstream=backend, rate_limits=limits, clock=clock) as limited:
        first = post_chat(limited)
        second = post_chat(limited)
        rejected = post_chat(limited)

    first_used = first.json()["usage"]["total_tokens"]
    second_used = second.json()["usage"]["total_tokens"]
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == str(limit)
    assert first.headers["x-ratelimit-remaining-tokens"] == str(limit - reservation)
    # After a response the reservation is replaced by the tokens really used.
    assert second.status_code == 200
    assert second.headers["x-ratelimit-remaining-tokens"] == str(max(0, limit - first_used - reservation))

    assert rejected.status_code == 429
    assert rejected.json()["error"]["type"] == "tokens"
    assert rejected.headers["x-ratelimit-remaining-tokens"] == "0"
    # The bucket refills at limit / 60 = 1 token per second.
    assert rejected.headers["retry-after"] == str(reservation - (limit - first_used - second_used))


def test_oversized_request_has_no_retry_after(backend):
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=50)
    with start_provider(upstream=backend, rate_limits=limits, clock=FakeClock()) as limited:
        response = post_chat(limited, max_tokens=500)

    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert "Lower max_tokens" in response.json()["error"]["message"]


def test_rate_limits_are_per_key(backend):
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=1, tokens_per_minute=None)
    with start_provider(upstream=backend, rate_limits=limits, clock=clock) as limited:
        second = limited.issue_key("team-b")
        first_key_statuses = [post_charge(limited, CHARGE).status_code, post_charge(limited, CHARGE).status_code]
        second_key_status = post_charge(limited, CHARGE, api_key=second).status_code

    assert first_key_statuses == [200, 429]
    assert second_key_status == 200


# Latency.


def test_round_trip_delays_every_response(backend):
    with start_provider(upstream=backend, latency=Latency(round_trip_s=0.4)) as slow:
        headers = {"authorization": f"Bearer {slow.api_key.get_secret_value()}"}
        started = time.monotonic()
        response = httpx.get(f"{slow.base_url}/models", headers=headers)
        elapsed = time.monotonic() - started

        slow.latency = Latency(round_trip_s=0.0)
        started = time.monotonic()
        httpx.get(f"{slow.base_url}/models", headers=headers)
        elapsed_without = time.monotonic() - started

    assert response.status_code == 200
    assert elapsed >= 0.4
    assert elapsed_without < 0.4


def test_time_to_first_token_delay(backend):
    with start_provider(upstream=backend, latency=Latency(time_to_first_token_s=0.6)) as slow:
        headers = {"authorization": f"Bearer {slow.api_key.get_secret_value()}"}
        body = {"model": slow.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True}
        started = time.monotonic()
        with httpx.stream("POST", f"{slow.base_url}/chat/completions", json=body, headers=headers, timeout=30) as response:
            headers_at = time.monotonic()
            reads = response.iter_raw()
            first_bytes = next(reads)
            first_chunk_at = time.monotonic()
            rest = b"".join(reads)

    assert first_bytes.startswith(b"data: ")
    assert rest.endswith(b"data: [DONE]\n\n")
    assert first_chunk_at - started >= 0.6
    # The headers come before the delay, as from a hosted API that is still prefilling.
    assert first_chunk_at - headers_at >= 0.5


# Idempotency of a non-idempotent tool call.



def test_charge_without_key_applies_each_time(provider):
    first = post_charge(provider, CHARGE)
    second = post_charge(provider, CHARGE)

    assert first.status_code == 200
    assert second.status_code == 200
    assert first.json()["id"] != second.json()["id"]
    assert len(provider.charges) == 2


def test_idempotency_key_replays_stored_response(provider):
    first = post_charge(provider, CHARGE, idempotency_key="order-17")
    repeat = post_charge(provider, CHARGE, idempotency_key="order-17")

    assert first.status_code == 200
    assert repeat.status_code == 200
    assert repeat.json() == first.json()
    assert repeat.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(provider.charges) == 1


def test_lost_response_retry_charges_twice(provider):
    provider.faults.script([ConnectionReset(after_processing=True)])

    with pytest.raises(httpx.ReadError):
        post_charge(provider, CHARGE)
    retry = post_charge(provider, CHARGE)

    assert retry.status_code == 200
    assert len(provider.charges) == 2


def test_lost_response_keyed_retry_charges_once(provider):
    provider.faults.script([ConnectionReset(after_processing=True)])

    with pytest.raises(httpx.ReadError):
        post_charge(provider, CHARGE, idempotency_key="order-18")
    retry = post_charge(provider, CHARGE, idempotency_key="order-18")

    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert len(provider.charges) == 1
    assert retry.json()["id"] == provider.charges[0].id


def test_timeout_retry_charges_twice(provider):
    provider.faults.script([SlowFirstByte(seconds=2.0)])

    with pytest.raises(httpx.ReadTimeout):
        post_charge(provider, CHARGE, timeout=0.3)
    retry = post_charge(provider, CHARGE)

    assert retry.status_code == 200
    assert len(provider.charges) == 2


def test_error_before_processing_stores_nothing(provider):
    provider.faults.script(["503"])

    failed = post_charge(provider, CHARGE, idempotency_key="order-19")
    retry = post_charge(provider, CHARGE, idempotency_key="order-19")

    assert failed.status_code == 503
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers
    assert len(provider.charges) == 1


def test_reused_idempotency_key_is_422(provider):
    post_charge(provider, CHARGE, idempotency_key="order-20")
    changed = post_charge(provider, {**CHARGE, "amount": 900}, idempotency_key="order-20")

    assert changed.status_code == 422
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    assert len(provider.charges) == 1


def test_idempotency_keys_per_api_key(provider):
    second = provider.issue_key("team-b")

    post_charge(provider, CHARGE, idempotency_key="order-21")
    other = post_charge(provider, CHARGE, idempotency_key="order-21", api_key=second)

    assert "idempotent-replayed" not in other.headers
    assert len(provider.charges) == 2


def test_concurrent_repeats_charge_once(provider):
    results = []

    def charge() -> None:
        results.append(post_charge(provider, CHARGE, idempotency_key="order-22").json()["id"])

    threads = [threading.Thread(target=charge) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(provider.charges) == 1
    assert set(results) == {provider.charges[0].id}


def test_invalid_charge_names_field(provider):
    response = post_charge(provider, {"amount": -5, "currency": "usd"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "amount"
    assert "-5" in response.json()["error"]["message"]
    assert provider.charges == []


# Lifetime.


def test_stop_closes_port_and_upstream_connections(backend):
    provider = start_provider(upstream=backend)
    upstream_port = httpx.URL(backend.base_url).port
    post_chat(provider)
    assert port_is_open(LOOPBACK, provider.port)

    provider.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, provider.port), timeout=1).close()
    open_to_upstream = [
        connection
        for connection in psutil.Process().net_connections(kind="tcp")
        if connection.raddr and connection.raddr.port == upstream_port and connection.status == psutil.CONN_ESTABLISHED
    ]
    assert open_to_upstream == []
    assert not [thread for thread in threading.enumerate() if thread.name == f"uvicorn-{provider.port}"]
    assert provider.running is False


def test_with_block_stops_provider(backend):
    with start_provider(upstream=backend) as provider:
        port = provider.port
        assert port_is_open(LOOPBACK, port)

    assert not port_is_open(LOOPBACK, port)


def test_stop_cuts_a_stalled_stream(backend):
    provider = start_provider(upstream=backend)
    provider.faults.script(["stall:seconds=60,after=1"])
    received = []

    def read_stream() -> None:
        try:
            with provider.client(max_retries=0, timeout=30) as sdk_client:
                for chunk in chat(sdk_client, stream=True):
                    received.append(chunk)
        except openai.APIError as error:
            received.append(error)

    reader = threading.Thread(target=read_stream)
    reader.start()
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)

    started = time.monotonic()
    provider.stop()
    reader.join(10)

    assert time.monotonic() - started < 10
    assert not reader.is_alive()
    assert not port_is_open(LOOPBACK, provider.port)


def test_missing_upstream_is_explained():
    with pytest.raises(ValueError, match="upstream_base_url"):
        start_provider()


def test_unreachable_upstream_is_502(backend):
    free = socket.socket()
    free.bind((LOOPBACK, 0))
    dead_port = free.getsockname()[1]
    free.close()

    with start_provider(upstream_base_url=f"http://{LOOPBACK}:{dead_port}/v1", upstream_model="m") as orphan:
        with orphan.client(max_retries=0) as sdk_client, pytest.raises(openai.InternalServerError) as raised:
            chat(sdk_client)

    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_unavailable"
