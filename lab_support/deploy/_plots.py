"""Figures for lab 05: a load test, the runtime comparison, and how the app scales past one machine.

Each function returns a matplotlib Figure with a title and labelled axes;
in Jupyter the figure shows below the cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from lab_support.deploy._loadtest import LoadTestResult

THROUGHPUT_BIN_S = 1.0
OK_COLOUR = "#1f6feb"
ERROR_COLOUR = "#b42318"
STYLE_COLOURS = ("#1a7f37", "#9a6700", "#b42318", "#6e40c9")


def tokens_per_second_series(result: LoadTestResult, bin_s: float = THROUGHPUT_BIN_S) -> tuple[list[float], list[float]]:
    """Return bin start times and tokens per second of all clients together, in ``bin_s`` bins."""
    if not bin_s > 0:
        raise ValueError(f"invalid bin_s {bin_s!r}: use a number of seconds above 0")
    stamps = [stamp for record in result.records for stamp in record.token_times_s]
    bins = max(1, math.ceil(result.wall_s / bin_s))
    counts = [0] * bins
    for stamp in stamps:
        counts[min(int(stamp / bin_s), bins - 1)] += 1
    return [index * bin_s for index in range(bins)], [count / bin_s for count in counts]


def plot_load_test(result: LoadTestResult, *, title: str | None = None) -> Figure:
    """Plot time to first token per request, and tokens per second over the test."""
    fig, (ttft_axes, rate_axes) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    fig.suptitle(title or f"Load test: {result.clients} concurrent clients, {result.requests} requests")

    ok = [r for r in result.records if r.ok and r.ttft_s is not None]
    failed = [r for r in result.records if not r.ok]
    ttft_axes.scatter([r.start_s for r in ok], [r.ttft_s for r in ok], color=OK_COLOUR, label="request", s=18)
    if failed:
        ttft_axes.scatter([r.start_s for r in failed], [r.ttft_s or 0.0 for r in failed], color=ERROR_COLOUR,
                          marker="x", label="failed request")
    for value, name, style in ((result.ttft_p50_s, "p50", "--"), (result.ttft_p95_s, "p95", ":")):
        if value is not None:
            ttft_axes.axhline(value, color="grey", linestyle=style, label=f"{name} {value:.2f} s")
    ttft_axes.set_title("Time to first token per request")
    ttft_axes.set_xlabel("request start (s since the test began)")
    ttft_axes.set_ylabel("time to first token (s)")
    ttft_axes.set_ylim(bottom=0)
    ttft_axes.legend(loc="best", fontsize="small")

    starts, rates = tokens_per_second_series(result)
    rate_axes.bar(starts, rates, width=THROUGHPUT_BIN_S * 0.9, align="edge", color=OK_COLOUR)
    rate_axes.axhline(result.tokens_per_s, color="grey", linestyle="--",
                      label=f"mean {result.tokens_per_s:.1f} tokens/s")
    rate_axes.set_title("Tokens streamed per second, all clients")
    rate_axes.set_xlabel("time (s since the test began)")
    rate_axes.set_ylabel("tokens per second")
    rate_axes.legend(loc="best", fontsize="small")
    return fig


def plot_runtime_comparison(results: Mapping[str, LoadTestResult], *, title: str | None = None) -> Figure:
    """Compare runs of the same load through differently served apps: wall time, TTFT p95, slowest liveness probe."""
    if not results:
        raise ValueError("no results to compare; pass a dict such as {'async': result, ...}")
    names = list(results)
    colours = [STYLE_COLOURS[i % len(STYLE_COLOURS)] for i in range(len(names))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    first = next(iter(results.values()))
    fig.suptitle(title or f"The same {first.requests} concurrent streams through each app")
    panels = (
        ("Time for all streams", "wall time (s)", [r.wall_s for r in results.values()]),
        ("Time to first token, p95", "time to first token (s)", [r.ttft_p95_s or 0.0 for r in results.values()]),
        ("Slowest liveness probe", "probe latency (s)", [r.max_probe_latency_s or 0.0 for r in results.values()]),
    )
    for axes_, (panel_title, label, values) in zip(axes, panels):
        bars = axes_.bar(names, values, color=colours)
        axes_.bar_label(bars, fmt="%.2f")
        axes_.set_title(panel_title)
        axes_.set_xlabel("how the app is served")
        axes_.set_ylabel(label)
    return fig


def _box(axes, x: float, y: float, text: str, *, width: float = 2.2, height: float = 0.9, colour: str = "#ddf4ff") -> None:
    axes.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                  boxstyle="round,pad=0.05", facecolor=colour, edgecolor="#333333"))
    axes.text(x, y, text, ha="center", va="center", fontsize=8.5)


def _arrow(axes, start: tuple[float, float], end: tuple[float, float], label: str = "") -> None:
    axes.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333333"))
    if label:
        axes.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.25, label, ha="center", fontsize=7.5,
                  color="#555555")


def draw_scaling_diagram() -> Figure:
    """Draw the app scaled past one machine: load balancer, app replicas, and an inference cluster by base URL."""
    fig, axes = plt.subplots(figsize=(11, 4.6), constrained_layout=True)
    axes.set_xlim(0, 13)
    axes.set_ylim(0, 6.4)
    axes.axis("off")
    axes.set_title("Scaling past one machine: replicas behind a load balancer, models behind one base URL")

    _box(axes, 1.1, 3.2, "browsers\n(SSE streams)", width=1.8, colour="#fff8c5")
    _box(axes, 3.7, 3.2, "load balancer\nprobes /api/ready\nidle timeout > stream", width=2.3, colour="#ffebe9")
    replicas = (5.2, 3.2, 1.2)
    for index, y in enumerate(replicas, start=1):
        _box(axes, 6.9, y, f"app replica {index}\nasync worker (uvicorn)\n/api/health, /api/ready", width=2.6)
        _arrow(axes, (4.85, 3.2), (5.6, y))
    _box(axes, 9.7, 3.2, "inference gateway\nLAB_CHAT_UPSTREAM_BASE_URL\n(OpenAI-compatible /v1)", width=2.5, colour="#fbefff")
    for y in replicas:
        _arrow(axes, (8.2, y), (8.45, 3.2))
    for index, y in enumerate((5.2, 3.2, 1.2), start=1):
        _box(axes, 12.1, y, f"GPU server {index}\nvLLM, pinned model", width=1.7, colour="#dafbe1")
        _arrow(axes, (10.95, 3.2), (11.25, y))
    _arrow(axes, (2.0, 3.2), (2.55, 3.2), "HTTPS")
    axes.text(6.5, 0.15, "Add app replicas for more concurrent streams; add GPU servers for more tokens per second.",
              ha="center", fontsize=8.5, style="italic")
    return fig
