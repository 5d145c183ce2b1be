"""Each scripted fault of the provider, driven with the openai SDK, httpx or a plain socket against the real model."""

from __future__ import annotations

import email.utils
import json
import socket
import time

import httpx
import openai
import pytest

from lab_support._net import LOOPBACK, port_is_open
from lab_support.provider import (
    DEFAULT_MODEL_NAME,
    ConnectionRefused,
    ConnectionReset,
    CrlfLineEndings,
    Drip,
    ErrorInStream,
    HttpError,
    KeepAliveComments,
    Ok,
    RateLimited,
    SlowFirstByte,
    SplitDataLine,
    SplitUtf8,
    StallMidStream,
    TruncatedStream,
    start_provider,
)

MESSAGES = [{"role": "user", "content": "Say hi"}]
MAX_TOKENS = 6
REOPEN_TIMEOUT_S = 10.0
# Per-read client timeout for the stream faults: longer than a token takes on
# a busy 2-core machine, shorter than the stalls and drips it must catch.
READ_TIMEOUT_S = 3.0
# The split faults' pause for tests that look at socket reads, so a test
# process that is scheduled late still reads the two writes apart.
OBSERVABLE_PAUSE_S = 0.2


@pytest.fixture
def provider(backend):
    with start_provider(upstream=backend) as running:
        yield running


@pytest.fixture
def client(provider):
    with provider.client(max_retries=0, timeout=30.0) as sdk_client:
        yield sdk_client


def chat(client, **options):
    options = {"max_tokens": MAX_TOKENS, "temperature": 0, **options}
    return client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=MESSAGES, **options)


def collect(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return text, chunks


def finish_reasons(chunks) -> list[str]:
    return [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]


def raw_stream(provider) -> list[bytes]:
    """Send a streaming request over a plain socket and return each ``recv()`` result."""
    payload = json.dumps(
        {"model": provider.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    ).encode()
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {LOOPBACK}:{provider.port}\r\n"
        f"Authorization: Bearer {provider.api_key.get_secret_value()}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + payload

    reads = []
    with socket.create_connection((LOOPBACK, provider.port), timeout=30) as sock:
        sock.sendall(request)
        while data := sock.recv(65536):
            reads.append(data)
    return reads


def chunk_payloads(reads: list[bytes]) -> list[bytes]:
    """Return the payloads of the HTTP/1.1 chunks in a raw response: one per provider write."""
    _, _, body = b"".join(reads).partition(b"\r\n\r\n")
    payloads = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        payloads.append(rest[:size])
        body = rest[size + 2 :]
    return payloads


def wait_until_listening(port: int) -> float:
    deadline = time.monotonic() + REOPEN_TIMEOUT_S
    while not port_is_open(LOOPBACK, port):
        assert time.monotonic() < deadline, f"port {port} did not listen again within {REOPEN_TIMEOUT_S} s"
        time.sleep(0.02)
    return time.monotonic()


# HTTP errors.


def test_429_retry_after_seconds(provider, client):
    provider.faults.script(["429:retry-after=1"])

    with pytest.raises(openai.RateLimitError) as raised:
        chat(client)

    assert raised.value.response.headers["retry-after"] == "1"
    assert raised.value.code == "rate_limit_exceeded"


def test_sdk_retry_waits_for_retry_after(provider):
    provider.faults.script([RateLimited(retry_after=1), "ok"])

    started = time.monotonic()
    with provider.client(max_retries=1, timeout=30) as retrying:
        completion = chat(retrying)
    elapsed = time.monotonic() - started

    assert completion.choices[0].message.content
    assert elapsed >= 1.0
    assert [applied.fault for applied in provider.faults.history] == [RateLimited(retry_after=1), Ok()]


def test_429_retry_after_http_date(provider, client):
    provider.faults.script(["429:retry-after-date=2"])
    sent_after = time.time()

    with pytest.raises(openai.RateLimitError) as raised:
        chat(client)

    retry_at = email.utils.parsedate_to_datetime(raised.value.response.headers["retry-after"]).timestamp()
    assert raised.value.response.headers["retry-after"].endswith(" GMT")
    assert sent_after + 1 <= retry_at <= time.time() + 3


def test_429_retry_after_zero(provider, client):
    provider.faults.script([RateLimited(retry_after=0)])

    with pytest.raises(openai.RateLimitError) as raised:
        chat(client)

    assert raised.value.response.headers["retry-after"] == "0"


def test_429_without_retry_after(provider, client):
    provider.faults.script(["429"])

    with pytest.raises(openai.RateLimitError) as raised:
        chat(client)

    assert "retry-after" not in raised.value.response.headers


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_raise_internal_server_error(provider, client, status):
    provider.faults.script([HttpError(status)])

    with pytest.raises(openai.InternalServerError) as raised:
        chat(client)

    assert raised.value.status_code == status
    assert raised.value.type == "server_error"
    assert raised.value.body["message"]
    assert provider.ledger.entries() == []


def test_script_is_consumed_in_order(provider, client):
    provider.faults.script(["503", "ok", "500"])

    outcomes = []
    for _ in range(4):
        try:
            chat(client)
            outcomes.append(200)
        except openai.APIStatusError as error:
            outcomes.append(error.status_code)

    assert outcomes == [503, 200, 500, 200]
    assert provider.faults.pending() == []
    assert [applied.scripted for applied in provider.faults.history] == [True, True, True, False]


def test_models_list_consumes_no_fault(provider, client):
    provider.faults.script(["503"])

    client.models.list()

    assert provider.faults.pending() == [HttpError(503)]


def test_per_key_script_is_isolated(provider, client):
    team_b = provider.issue_key("team-b")
    provider.faults.script(["503"], key=team_b)

    completion = chat(client)
    with provider.client(api_key=team_b, max_retries=0) as team_b_client:
        with pytest.raises(openai.InternalServerError):
            chat(team_b_client)

    assert completion.choices[0].message.content
    assert provider.faults.pending(key=team_b) == []


def test_per_key_script_comes_before_global(provider, client):
    provider.faults.script(["500"])
    provider.faults.script(["502"], key=provider.api_key)

    statuses = []
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as raised:
            chat(client)
        statuses.append(raised.value.status_code)

    assert statuses == [502, 500]


# Connection faults.


def test_reset_raises_connection_error(provider, client):
    provider.faults.script([ConnectionReset()])

    with pytest.raises(openai.APIConnectionError) as raised:
        chat(client)

    assert not isinstance(raised.value, openai.APITimeoutError)
    assert provider.ledger.entries() == []


def test_reset_is_rst_before_any_byte(provider):
    provider.faults.script(["reset"])
    payload = json.dumps({"model": provider.model, "messages": MESSAGES}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {provider.api_key.get_secret_value()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload

    with socket.create_connection((LOOPBACK, provider.port), timeout=10) as sock:
        sock.sendall(request)
        # A FIN would read as b""; only an RST raises ConnectionResetError.
        with pytest.raises(ConnectionResetError):
            sock.recv(65536)


def test_reset_after_processing_still_bills(provider, client):
    provider.faults.script([ConnectionReset(after_processing=True)])

    with pytest.raises(openai.APIConnectionError):
        chat(client)

    entries = provider.ledger.entries()
    assert len(entries) == 1
    assert entries[0].output_tokens > 0


def test_refused_first_in_script(provider, client):
    scripted_at = time.monotonic()
    provider.faults.script([ConnectionRefused(seconds=0.5), "ok"])

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, provider.port), timeout=1).close()
    with pytest.raises(openai.APIConnectionError) as raised:
        chat(client)
    reopened_at = wait_until_listening(provider.port)
    completion = chat(client)

    assert isinstance(raised.value.__cause__, Exception)
    assert "refused" in repr(raised.value.__cause__).lower()
    assert reopened_at - scripted_at >= 0.5
    assert completion.choices[0].message.content
    assert provider.faults.pending() == []


def test_refused_after_previous_item(provider):
    provider.faults.script(["503", ConnectionRefused(seconds=0.5)])
    headers = {"authorization": f"Bearer {provider.api_key.get_secret_value()}"}
    body = {"model": provider.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}

    with httpx.Client(timeout=10) as http:
        failed = http.post(f"{provider.base_url}/chat/completions", json=body, headers=headers)
        with pytest.raises(httpx.ConnectError):
            http.post(f"{provider.base_url}/chat/completions", json=body, headers=headers)
        wait_until_listening(provider.port)
        recovered = http.post(f"{provider.base_url}/chat/completions", json=body, headers=headers)

    assert failed.status_code == 503
    assert failed.headers["connection"] == "close"
    assert recovered.status_code == 200


def test_offline_block_refuses_connections(provider, client):
    with provider.offline():
        assert not port_is_open(LOOPBACK, provider.port)
        with pytest.raises(openai.APIConnectionError):
            client.models.list()

    assert port_is_open(LOOPBACK, provider.port)
    assert client.models.list().data


def test_refused_cannot_be_scripted_per_key(provider):
    with pytest.raises(ValueError, match="without key="):
        provider.faults.script(["refused"], key=provider.api_key)


def test_slow_first_byte_times_out_client(provider):
    provider.faults.script([SlowFirstByte(seconds=3.0)])

    started = time.monotonic()
    with provider.client(max_retries=0, timeout=0.5) as impatient, pytest.raises(openai.APITimeoutError):
        chat(impatient)
    elapsed = time.monotonic() - started

    assert 0.5 <= elapsed < 3.0
    # The client left before the wait ended, so nothing went upstream.
    time.sleep(0.2)
    assert provider.ledger.entries() == []


def test_slow_first_byte_within_timeout_succeeds(provider, client):
    provider.faults.script([SlowFirstByte(seconds=0.5)])

    started = time.monotonic()
    completion = chat(client)

    assert time.monotonic() - started >= 0.5
    assert completion.choices[0].message.content


# Stream faults.


def test_stall_times_out_mid_stream(provider):
    # The timeout leaves room for a slow model on a busy CPU, and the stall is far longer.
    provider.faults.script([StallMidStream(seconds=30.0, after_chunks=2)])
    received = []

    with provider.client(max_retries=0, timeout=READ_TIMEOUT_S) as impatient, pytest.raises(openai.APITimeoutError):
        for chunk in chat(impatient, stream=True):
            received.append(chunk)

    assert len(received) == 2
    assert not finish_reasons(received)


def test_stall_shorter_than_timeout_completes(provider, client):
    provider.faults.script([StallMidStream(seconds=0.4, after_chunks=1)])

    started = time.monotonic()
    text, chunks = collect(chat(client, stream=True))

    assert time.monotonic() - started >= 0.4
    assert text
    assert finish_reasons(chunks)


def test_drip_outlasts_read_timeout(provider):
    interval_s = 0.5
    provider.faults.script([Drip(interval_s=interval_s)])
    arrivals = []

    started = time.monotonic()
    with provider.client(max_retries=0, timeout=READ_TIMEOUT_S) as client:
        for chunk in chat(client, stream=True, max_tokens=8):
            arrivals.append((time.monotonic(), chunk))
    elapsed = time.monotonic() - started

    times = [arrived for arrived, _ in arrivals]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert len(arrivals) >= 7
    # A late read shortens one gap, so each gap gets slack and the whole span little.
    assert all(gap >= interval_s / 2 for gap in gaps)
    assert times[-1] - times[0] >= interval_s * len(gaps) - 0.2
    # Each read waits less than the timeout, so the whole stream can take longer than it.
    assert elapsed > READ_TIMEOUT_S
    assert finish_reasons([chunk for _, chunk in arrivals])


def test_drip_slower_than_read_timeout_fails(provider):
    provider.faults.script([Drip(interval_s=30.0)])
    received = []

    with provider.client(max_retries=0, timeout=READ_TIMEOUT_S) as impatient, pytest.raises(openai.APITimeoutError):
        for chunk in chat(impatient, stream=True):
            received.append(chunk)

    # The first chunk is not delayed; the second would come 30 s later.
    assert len(received) == 1


def test_error_in_stream_raises(provider, client):
    provider.faults.script([ErrorInStream(after_chunks=2)])
    received = []

    with pytest.raises(openai.APIError) as raised:
        for chunk in chat(client, stream=True):
            received.append(chunk)

    assert not isinstance(raised.value, openai.APIStatusError)
    assert raised.value.message == ErrorInStream().message
    assert raised.value.code == "stream_interrupted"
    assert len(received) == 2


def test_error_inside_stream_raw_event(provider):
    provider.faults.script(["error-in-stream:after=1"])

    reads = raw_stream(provider)
    payloads = chunk_payloads(reads)

    assert reads[0].startswith(b"HTTP/1.1 200 OK")
    assert payloads[-1].startswith(b'data: {"error":')
    assert not any(b"[DONE]" in payload for payload in payloads)


def test_truncated_stream_ends_quietly(provider, client):
    provider.faults.script([TruncatedStream(after_chunks=3)])

    text, chunks = collect(chat(client, stream=True))

    # The SDK raises nothing: only the missing finish reason shows the cut.
    assert len(chunks) == 3
    assert finish_reasons(chunks) == []
    assert provider.ledger.entries()[0].output_tokens == len([chunk for chunk in chunks if chunk.choices[0].delta.content])


def test_truncated_stream_has_no_done_marker(provider):
    provider.faults.script(["truncate:after=2"])

    payloads = chunk_payloads(raw_stream(provider))

    assert len(payloads) == 2
    assert not any(b"[DONE]" in payload or b'"finish_reason":"' in payload for payload in payloads)


def test_truncated_stream_with_closed_connection_raises(provider, client):
    provider.faults.script([TruncatedStream(after_chunks=2, close_connection=True)])
    received = []

    with pytest.raises(openai.APIConnectionError):
        for chunk in chat(client, stream=True):
            received.append(chunk)

    assert len(received) == 2


def test_stream_fault_needs_stream(provider, client):
    provider.faults.script(["stall:seconds=1"])

    with pytest.raises(openai.BadRequestError) as raised:
        chat(client)

    assert raised.value.code == "fault_needs_stream"
    assert "stream=true" in raised.value.message


# Writes split below the SSE framing.


def test_split_utf8_character_reaches_sdk_whole(provider, client):
    provider.faults.script([SplitUtf8(after_chunks=2, text="€")])

    text, chunks = collect(chat(client, stream=True))

    assert "€" in text
    assert chunks[2].choices[0].delta.content == "€"
    assert finish_reasons(chunks)


def test_split_utf8_in_two_writes(provider):
    provider.faults.script([SplitUtf8(after_chunks=1, text="€", pause_s=OBSERVABLE_PAUSE_S)])
    euro = "€".encode()

    reads = raw_stream(provider)
    payloads = chunk_payloads(reads)

    split = [index for index, payload in enumerate(payloads) if payload.endswith(euro[:1])]
    assert len(split) == 1
    assert payloads[split[0] + 1].startswith(euro[1:])
    # NOTE: the pause between the writes keeps them in separate reads on loopback.
    # A client that reads later than the pause gets both in one read, because TCP merges them.
    assert any(
        earlier.endswith(euro[:1] + b"\r\n") and euro[1:] in later[:12] for earlier, later in zip(reads, reads[1:])
    )


def test_split_data_line_reaches_sdk_whole(provider, client):
    provider.faults.script([SplitDataLine(after_chunks=2)])

    text, chunks = collect(chat(client, stream=True))

    assert text
    assert finish_reasons(chunks)
    assert all(chunk.model == DEFAULT_MODEL_NAME for chunk in chunks)


def test_split_data_line_in_two_writes(provider):
    provider.faults.script([SplitDataLine(after_chunks=1, pause_s=OBSERVABLE_PAUSE_S)])

    reads = raw_stream(provider)
    payloads = chunk_payloads(reads)

    halves = [index for index, payload in enumerate(payloads) if payload.startswith(b"data: {") and not payload.endswith(b"\n\n")]
    assert len(halves) == 1
    joined = payloads[halves[0]] + payloads[halves[0] + 1]
    assert joined.endswith(b"\n\n")
    assert json.loads(joined.removeprefix(b"data: "))["object"] == "chat.completion.chunk"
    first_half, second_half = payloads[halves[0]], payloads[halves[0] + 1]
    assert any(
        earlier.endswith(first_half + b"\r\n") and second_half in later for earlier, later in zip(reads, reads[1:])
    )


def test_crlf_line_endings_reach_sdk_whole(provider, client):
    provider.faults.script([CrlfLineEndings()])

    text, chunks = collect(chat(client, stream=True))

    assert text
    assert finish_reasons(chunks)


def test_crlf_split_between_writes(provider):
    provider.faults.script([CrlfLineEndings(pause_s=OBSERVABLE_PAUSE_S)])

    reads = raw_stream(provider)
    payloads = chunk_payloads(reads)
    body = b"".join(payloads)

    assert body.endswith(b"data: [DONE]\r\n\r\n")
    assert b"\n\n" not in body.replace(b"\r\n", b"")
    cr_ends = [index for index, payload in enumerate(payloads) if payload.endswith(b"\r")]
    assert cr_ends
    assert all(payloads[index + 1].startswith(b"\n") for index in cr_ends)
    assert any(earlier.endswith(b"\r\r\n") and later.split(b"\r\n", 1)[1].startswith(b"\n") for earlier, later in zip(reads, reads[1:]))


def test_keepalive_comments_are_ignored_by_sdk(provider, client):
    provider.faults.script([KeepAliveComments(every_chunks=1)])

    text, chunks = collect(chat(client, stream=True))

    assert text
    assert finish_reasons(chunks)


def test_keepalive_comments_are_own_writes(provider):
    provider.faults.script(["ping"])

    payloads = chunk_payloads(raw_stream(provider))

    pings = [payload for payload in payloads if payload.startswith(b":")]
    events = [payload for payload in payloads if payload.startswith(b"data: ")]
    assert pings
    assert set(pings) == {b": ping\n\n"}
    assert len(pings) == len(events)
