"""The load test: bounded, loopback-only, and its numbers agree with each other and with the upstream."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from httpx_sse import ServerSentEvent

from lab_support.asgi import serve_in_background
from lab_support.deploy import (
    PacedUpstream,
    build_relay_app,
    chat_body,
    create_deployable_app,
    draw_scaling_diagram,
    interpret_event,
    limit_request_time,
    openai_chat_body,
    percentile,
    plot_load_test,
    plot_runtime_comparison,
    run_load_test,
    start_paced_upstream,
    tokens_per_second_series,
)

TOKENS = 10
INTERVAL_S = 0.05


@pytest.fixture(scope="module")
def upstream() -> Iterator[PacedUpstream]:
    with start_paced_upstream(tokens=TOKENS, interval_s=INTERVAL_S) as running:
        yield running


@pytest.fixture(scope="module")
def chat_server(upstream: PacedUpstream):
    app = create_deployable_app(upstream_base_url=upstream.base_url, model=upstream.model)
    with serve_in_background(app) as server:
        yield server


def test_numbers_are_consistent(chat_server):
    result = run_load_test(chat_server.url, clients=3, duration_s=1.0, body=chat_body(max_tokens=TOKENS))

    assert result.errors == 0, str(result)
    assert result.requests >= 3
    for record in result.records:
        assert record.tokens == TOKENS
        assert len(record.token_times_s) == TOKENS
        assert record.ttft_s is not None and 0 < record.ttft_s <= record.duration_s
        assert record.headers_s is not None and record.headers_s <= record.ttft_s
        assert record.token_times_s == tuple(sorted(record.token_times_s))
    assert result.tokens == TOKENS * result.requests
    assert result.tokens_per_s == pytest.approx(result.tokens / result.wall_s)
    assert result.ttft_p50_s <= result.ttft_p95_s
    assert sum(rate * 1.0 for rate in tokens_per_second_series(result)[1]) == result.tokens


def test_stops_at_duration(chat_server):
    result = run_load_test(chat_server.url, clients=2, duration_s=0.6, body=chat_body(max_tokens=TOKENS))

    # No request starts after the duration; the last ones finish their ~0.5 s stream.
    assert all(record.start_s < 0.6 for record in result.records)
    assert result.wall_s < 0.6 + 3.0


def test_max_requests_is_respected(chat_server):
    result = run_load_test(chat_server.url, clients=4, duration_s=30, max_requests=5, body=chat_body(max_tokens=2))

    assert result.requests == 5
    assert result.wall_s < 10


def test_decode_rate_matches_pacing(chat_server):
    result = run_load_test(chat_server.url, clients=1, max_requests=2, duration_s=10, body=chat_body(max_tokens=TOKENS))

    rate = result.decode_p50_tokens_per_s
    assert rate is not None
    assert 0.5 / INTERVAL_S < rate <= 1.2 / INTERVAL_S


def test_openai_path_counts_usage(upstream: PacedUpstream):
    result = run_load_test(
        upstream.url, path="/v1/chat/completions", body=openai_chat_body(upstream.model, max_tokens=4),
        clients=2, max_requests=2, duration_s=10,
    )

    assert result.errors == 0
    assert [record.usage_tokens for record in result.records] == [4, 4]
    assert [record.tokens for record in result.records] == [4, 4]


def test_errors_are_counted(upstream: PacedUpstream):
    result = run_load_test(
        upstream.url, path="/v1/chat/completions", body=openai_chat_body("missing-model-v1"),
        clients=1, max_requests=2, duration_s=5,
    )

    assert result.errors == 2
    assert {record.error for record in result.records} == {"HTTP 404"}
    assert result.ttft_p50_s is None
    assert "HTTP 404" in str(result)


def test_probes_measure_liveness(chat_server):
    result = run_load_test(chat_server.url, clients=2, max_requests=2, duration_s=10, probe_path="/api/health")

    assert result.probes
    assert all(probe.status == 200 for probe in result.probes)
    assert result.max_probe_latency_s < 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"clients": 0}, "invalid clients 0"),
        ({"clients": 65}, "invalid clients 65"),
        ({"duration_s": 0}, "invalid duration_s 0"),
        ({"duration_s": 301}, "invalid duration_s 301"),
        ({"max_requests": 0}, "invalid max_requests 0"),
        ({"request_timeout_s": 0}, "invalid request_timeout_s 0"),
    ],
)
def test_bounds_are_enforced(options: dict, message: str):
    with pytest.raises(ValueError, match=message):
        run_load_test("http://127.0.0.1:9", **options)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://192.0.2.10:8000", "not a loopback address"),
        ("http://example.invalid", "not a loopback address"),
        ("ftp://127.0.0.1", "invalid URL 'ftp://127.0.0.1'"),
    ],
)
def test_only_loopback_urls(url: str, message: str):
    with pytest.raises(ValueError, match=message):
        run_load_test(url)


def test_percentile_matches_numpy():
    values = [0.31, 0.05, 1.7, 0.9, 0.22, 0.48, 2.5]

    for q in (0, 5, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="invalid percentile 101"):
        percentile(values, 101)


@pytest.mark.parametrize(
    ("event", "text", "done", "error"),
    [
        (ServerSentEvent(data='{"delta": "Hi"}'), "Hi", False, None),
        (ServerSentEvent(data='{"choices": [{"delta": {"content": "Yo"}}]}'), "Yo", False, None),
        (ServerSentEvent(data="[DONE]"), "", True, None),
        (ServerSentEvent(event="done", data='{"finish_reason": "stop"}'), "", True, None),
        (ServerSentEvent(event="error", data='{"message": "upstream timed out"}'), "", False, "upstream timed out"),
        (ServerSentEvent(data='{"error": {"message": "boom"}}'), "", False, "boom"),
        (ServerSentEvent(data='{"choices": [], "usage": {"completion_tokens": 7}}'), "", False, None),
    ],
)
def test_interpret_event(event: ServerSentEvent, text: str, done: bool, error: str | None):
    meaning = interpret_event(event)

    assert meaning.text == text
    assert meaning.done is done
    assert meaning.error == error


def test_async_relay_beats_blocking():
    results = {}
    with start_paced_upstream(tokens=20, interval_s=INTERVAL_S) as one_second_upstream:
        for style in ("async", "workers", "blocking"):
            with serve_in_background(build_relay_app(one_second_upstream, style=style, workers=2)) as server:
                results[style] = run_load_test(
                    server.url, clients=4, max_requests=4, duration_s=30, body=chat_body(max_tokens=20),
                    probe_path="/api/health",
                )

    stream_s = 20 * INTERVAL_S
    for result in results.values():
        assert result.errors == 0
    # Four 1 s streams: in two waves with two workers, one by one when blocking. These lower
    # bounds hold however busy the machine is; the async app is compared with them. A probe
    # that arrives while the blocking app streams waits for the rest of that stream.
    assert results["workers"].wall_s > 1.5 * stream_s
    assert results["blocking"].wall_s > 3.5 * stream_s
    assert results["blocking"].max_probe_latency_s > 0.8 * stream_s
    assert results["async"].wall_s < results["blocking"].wall_s / 2
    async_median = statistics.median(probe.latency_s for probe in results["async"].probes)
    blocking_median = statistics.median(probe.latency_s for probe in results["blocking"].probes)
    assert async_median < blocking_median / 4

    fig = plot_runtime_comparison(results)
    assert [axes.get_ylabel() for axes in fig.axes] == ["wall time (s)", "time to first token (s)", "probe latency (s)"]
    plt.close(fig)


def test_time_limit_cuts_long_stream():
    with start_paced_upstream(tokens=40, interval_s=0.05) as slow_upstream:
        app = limit_request_time(build_relay_app(slow_upstream), 1.0)
        with serve_in_background(app) as server:
            result = run_load_test(server.url, clients=1, max_requests=1, duration_s=5, body=chat_body(max_tokens=40))

    record = result.records[0]
    assert record.error == "the stream ended without a done event"
    assert 0 < record.tokens < 40
    assert record.duration_s < 2.0


def test_plots_have_titles_and_labels(chat_server):
    result = run_load_test(chat_server.url, clients=2, max_requests=2, duration_s=5)

    fig = plot_load_test(result)
    ttft_axes, rate_axes = fig.axes
    assert ttft_axes.get_title() == "Time to first token per request"
    assert ttft_axes.get_ylabel() == "time to first token (s)"
    assert rate_axes.get_ylabel() == "tokens per second"
    assert "s since the test began" in rate_axes.get_xlabel()
    plt.close(fig)

    diagram = draw_scaling_diagram()
    assert "Scaling past one machine" in diagram.axes[0].get_title()
    plt.close(diagram)


@pytest.mark.slow
def test_local_backend_small_load(backend):
    body = openai_chat_body(backend.model, prompt="Name three colours.", max_tokens=8)
    body["temperature"] = 0
    reference = backend.client().chat.completions.create(
        model=backend.model, messages=body["messages"], max_tokens=8, temperature=0
    )

    result = run_load_test(
        backend.root_url, path="/v1/chat/completions", body=body,
        clients=2, max_requests=2, duration_s=60, request_timeout_s=120,
    )

    assert result.errors == 0, str(result)
    # llama.cpp streams one token per event, and temperature 0 makes both completions the same.
    expected_tokens = reference.usage.completion_tokens
    assert [record.tokens for record in result.records] == [expected_tokens, expected_tokens]
    assert result.tokens == 2 * expected_tokens
    for record in result.records:
        assert record.ttft_s is not None and record.ttft_s < record.duration_s
