"""Unit economics of serving a model: a hosted API billed per token versus self-hosted replicas billed per hour.

These are the reference answers of lab 02 and the cost calculator built on
them. Every function works without widgets, so a test or a grader can call
it directly:

    >>> scenario = Scenario(requests_per_day=20_000, prompt_tokens=60, completion_tokens=120,
    ...                     input_price_per_million=0.15, output_price_per_million=0.60,
    ...                     hourly_cost_per_replica=1.0, tokens_per_second_per_replica=400,
    ...                     engineering_hours_per_month=10, engineer_hourly_cost=100)
    >>> monthly_costs(scenario)
    MonthlyCosts(hosted_usd=48.6, self_hosted_usd=1720.0, replicas=1)
    >>> calculator(scenario)          # sliders and the cost plot, in Jupyter

A month is ``DAYS_PER_MONTH`` days of 24 hours for both options, so their
costs compare on the same period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

DAYS_PER_MONTH = 30
HOURS_PER_MONTH = 24 * DAYS_PER_MONTH
SECONDS_PER_DAY = 86_400
TOKENS_PER_MILLION = 1_000_000

# Traffic is not flat over a day, so replicas are sized for a peak this many
# times the daily average.
DEFAULT_PEAK_TO_AVERAGE = 2.0

# Keeping a service up around the clock needs someone on call while another
# engineer is away, so a smaller team is steered to a hosted API.
MIN_ENGINEERS_TO_SELF_HOST = 2

HOSTED = "hosted"
SELF_HOSTED = "self-hosted"


def _require_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"invalid {name} {value!r}: use a number >= 0")


def _require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"invalid {name} {value!r}: use a number > 0")


def request_cost(
    prompt_tokens: int,
    completion_tokens: int,
    input_price_per_million: float,
    output_price_per_million: float,
) -> float:
    """Return the USD a hosted API bills for one request, from its ``usage`` and the prices per million tokens."""
    for name, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("input_price_per_million", input_price_per_million),
        ("output_price_per_million", output_price_per_million),
    ):
        _require_non_negative(name, value)
    return (
        prompt_tokens * input_price_per_million + completion_tokens * output_price_per_million
    ) / TOKENS_PER_MILLION


def hosted_monthly_cost(
    requests_per_day: float,
    prompt_tokens: int,
    completion_tokens: int,
    input_price_per_million: float,
    output_price_per_million: float,
) -> float:
    """Return the USD per month of a hosted API for ``requests_per_day`` requests of the same size."""
    _require_non_negative("requests_per_day", requests_per_day)
    per_request = request_cost(prompt_tokens, completion_tokens, input_price_per_million, output_price_per_million)
    return requests_per_day * DAYS_PER_MONTH * per_request


def replica_capacity(
    completion_tokens: int,
    tokens_per_second_per_replica: float,
    peak_to_average: float = DEFAULT_PEAK_TO_AVERAGE,
) -> float:
    """Return the requests per day one replica can serve when the peak is ``peak_to_average`` times the average.

    Only completion tokens count, because generating them one at a time is
    what occupies a replica; the prompt is read in one parallel pass.
    """
    _require_positive("completion_tokens", completion_tokens)
    _require_positive("tokens_per_second_per_replica", tokens_per_second_per_replica)
    if not peak_to_average >= 1:
        raise ValueError(f"invalid peak_to_average {peak_to_average!r}: use a ratio >= 1 (1 means flat traffic)")
    return tokens_per_second_per_replica * SECONDS_PER_DAY / (completion_tokens * peak_to_average)


def replicas_needed(
    requests_per_day: float,
    completion_tokens: int,
    tokens_per_second_per_replica: float,
    peak_to_average: float = DEFAULT_PEAK_TO_AVERAGE,
) -> int:
    """Return the whole number of replicas (at least 1) that keep up with the peak of ``requests_per_day``."""
    _require_non_negative("requests_per_day", requests_per_day)
    capacity = replica_capacity(completion_tokens, tokens_per_second_per_replica, peak_to_average)
    # Rounding first keeps float noise such as 2.0000000000000004 from adding a replica.
    return max(1, math.ceil(round(requests_per_day / capacity, 9)))


def self_hosted_monthly_cost(
    replicas: int,
    hourly_cost_per_replica: float,
    engineering_hours_per_month: float,
    engineer_hourly_cost: float,
) -> float:
    """Return the USD per month of ``replicas`` always-on replicas plus the engineering time that runs them."""
    for name, value in (
        ("replicas", replicas),
        ("hourly_cost_per_replica", hourly_cost_per_replica),
        ("engineering_hours_per_month", engineering_hours_per_month),
        ("engineer_hourly_cost", engineer_hourly_cost),
    ):
        _require_non_negative(name, value)
    return replicas * hourly_cost_per_replica * HOURS_PER_MONTH + engineering_hours_per_month * engineer_hourly_cost


def break_even_requests_per_day(self_hosted_monthly_usd: float, cost_per_request_usd: float) -> float:
    """Return the requests per day at which a hosted API costs as much per month as a fixed self-hosted bill."""
    _require_non_negative("self_hosted_monthly_usd", self_hosted_monthly_usd)
    _require_positive("cost_per_request_usd", cost_per_request_usd)
    return self_hosted_monthly_usd / (cost_per_request_usd * DAYS_PER_MONTH)


def recommend(
    requests_per_day: float,
    break_even_requests_per_day: float,
    data_must_stay_in_house: bool,
    engineers: int,
) -> tuple[str, list[str]]:
    """Return ``("hosted" | "self-hosted", reasons)`` for a workload, applying the rules in this order.

    1. Data that may not leave your network means self-hosting, whatever it costs.
    2. A team of fewer than ``MIN_ENGINEERS_TO_SELF_HOST`` engineers cannot run
       a service around the clock, so it uses a hosted API.
    3. Otherwise the cheaper option wins: self-hosting at or above the
       break-even volume, the hosted API below it.
    """
    _require_non_negative("requests_per_day", requests_per_day)
    _require_non_negative("break_even_requests_per_day", break_even_requests_per_day)
    _require_non_negative("engineers", engineers)

    if data_must_stay_in_house:
        reasons = ["the data may not leave your network, and a hosted API would receive every prompt"]
        if engineers < MIN_ENGINEERS_TO_SELF_HOST:
            reasons.append(
                f"with {engineers} engineer(s) you need to hire or contract at least "
                f"{MIN_ENGINEERS_TO_SELF_HOST} to run the model servers"
            )
        return SELF_HOSTED, reasons

    if engineers < MIN_ENGINEERS_TO_SELF_HOST:
        return HOSTED, [
            f"{engineers} engineer(s) cannot keep model servers up around the clock; "
            f"self-hosting needs at least {MIN_ENGINEERS_TO_SELF_HOST}"
        ]

    if requests_per_day >= break_even_requests_per_day:
        return SELF_HOSTED, [
            f"{requests_per_day:,.0f} requests per day is at or above the break-even of "
            f"{break_even_requests_per_day:,.0f}, so your own replicas cost less than per-token billing"
        ]
    return HOSTED, [
        f"{requests_per_day:,.0f} requests per day is below the break-even of "
        f"{break_even_requests_per_day:,.0f}, so per-token billing costs less than idle replicas"
    ]


@dataclass(frozen=True)
class Scenario:
    """One workload and the prices of both options, the inputs of the cost calculator.

    Token counts are per request, and prices are in USD per million tokens. A
    replica is one copy of the model server, a GPU server in production.
    """

    requests_per_day: float
    prompt_tokens: int
    completion_tokens: int
    input_price_per_million: float
    output_price_per_million: float
    hourly_cost_per_replica: float
    tokens_per_second_per_replica: float
    engineering_hours_per_month: float
    engineer_hourly_cost: float
    peak_to_average: float = DEFAULT_PEAK_TO_AVERAGE

    def __post_init__(self) -> None:
        # Each function validates its own inputs; calling them here reports a bad field at construction.
        request_cost(self.prompt_tokens, self.completion_tokens, self.input_price_per_million, self.output_price_per_million)
        replicas_needed(self.requests_per_day, self.completion_tokens, self.tokens_per_second_per_replica, self.peak_to_average)
        self_hosted_monthly_cost(1, self.hourly_cost_per_replica, self.engineering_hours_per_month, self.engineer_hourly_cost)

    @property
    def cost_per_request(self) -> float:
        """The hosted API's price of one request, in USD."""
        return request_cost(
            self.prompt_tokens, self.completion_tokens, self.input_price_per_million, self.output_price_per_million
        )

    @property
    def replica_capacity(self) -> float:
        """The requests per day one replica serves at the scenario's peak-to-average ratio."""
        return replica_capacity(self.completion_tokens, self.tokens_per_second_per_replica, self.peak_to_average)

    def at_volume(self, requests_per_day: float) -> Scenario:
        """Return a copy of this scenario with another ``requests_per_day``."""
        return replace(self, requests_per_day=requests_per_day)


@dataclass(frozen=True)
class MonthlyCosts:
    """The monthly cost of each option for one scenario, in USD, and the replicas that self-hosting needs."""

    hosted_usd: float
    self_hosted_usd: float
    replicas: int


def monthly_costs(scenario: Scenario) -> MonthlyCosts:
    """Return the monthly cost of both options for ``scenario``."""
    hosted = hosted_monthly_cost(
        scenario.requests_per_day,
        scenario.prompt_tokens,
        scenario.completion_tokens,
        scenario.input_price_per_million,
        scenario.output_price_per_million,
    )
    replicas = replicas_needed(
        scenario.requests_per_day,
        scenario.completion_tokens,
        scenario.tokens_per_second_per_replica,
        scenario.peak_to_average,
    )
    self_hosted = self_hosted_monthly_cost(
        replicas, scenario.hourly_cost_per_replica, scenario.engineering_hours_per_month, scenario.engineer_hourly_cost
    )
    return MonthlyCosts(hosted_usd=hosted, self_hosted_usd=self_hosted, replicas=replicas)


def scenario_break_even(scenario: Scenario) -> float | None:
    """Return the lowest requests per day from which self-hosting never costs more than the hosted API.

    Self-hosting is billed in whole replicas, so its cost is a staircase: it
    can drop below the hosted line inside one step and rise above it again at
    the next replica. This returns where it drops below for good, or None when
    it never does (one replica's traffic costs less hosted than the replica).
    """
    per_request_month = scenario.cost_per_request * DAYS_PER_MONTH
    capacity = scenario.replica_capacity
    replica_month = scenario.hourly_cost_per_replica * HOURS_PER_MONTH
    engineering_month = scenario.engineering_hours_per_month * scenario.engineer_hourly_cost

    # What one replica's full traffic would cost on the hosted API per month.
    hosted_per_replica = capacity * per_request_month
    if replica_month + engineering_month == 0:
        return 0.0
    if hosted_per_replica <= replica_month:
        return None

    # With j replicas (volume in ((j-1)*capacity, j*capacity]) self-hosting is
    # cheaper over the whole step when j*R + E <= (j-1)*H, that is for every
    # j >= (H + E) / (H - R). The step before that is cheaper only from its
    # own crossing point, if it has one.
    first_whole_step = math.ceil(
        round((hosted_per_replica + engineering_month) / (hosted_per_replica - replica_month), 9)
    )
    if first_whole_step <= 1:
        return 0.0
    previous = first_whole_step - 1
    crossing = (previous * replica_month + engineering_month) / per_request_month
    if crossing <= previous * capacity:
        return crossing
    return previous * capacity


def describe_costs(scenario: Scenario) -> str:
    """Return the scenario's monthly costs, replicas and break-even as a few lines of text."""
    costs = monthly_costs(scenario)
    break_even = scenario_break_even(scenario)
    cheaper = HOSTED if costs.hosted_usd <= costs.self_hosted_usd else SELF_HOSTED
    lines = [
        f"{scenario.requests_per_day:,.0f} requests per day, {scenario.prompt_tokens} prompt + "
        f"{scenario.completion_tokens} completion tokens each",
        f"hosted API:  USD {costs.hosted_usd:,.2f} per month (USD {scenario.cost_per_request:.6f} per request)",
        f"self-hosted: USD {costs.self_hosted_usd:,.2f} per month ({costs.replicas} replica(s), "
        f"each serving up to {scenario.replica_capacity:,.0f} requests per day)",
        f"cheaper at this volume: {cheaper}",
    ]
    if break_even is None:
        lines.append("break-even: none, because one replica's traffic costs less on the hosted API than the replica")
    else:
        lines.append(f"break-even: self-hosting costs no more from {break_even:,.0f} requests per day on")
    return "\n".join(lines)


def plot_costs(scenario: Scenario, ax=None):
    """Draw the monthly cost of both options against requests per day, with the break-even marked.

    Returns the matplotlib Figure. The volume axis, on a log scale, runs from
    a tenth of the lower to ten times the higher of the scenario's volume and
    the break-even.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        figure, ax = plt.subplots(figsize=(8, 4.5))
    else:
        figure = ax.figure

    break_even = scenario_break_even(scenario)
    anchors = [max(scenario.requests_per_day, 1.0)]
    if break_even:
        anchors.append(break_even)
    low = min(anchors) / 10
    high = max(anchors) * 10
    volumes = np.geomspace(low, high, 600)
    hosted = [monthly_costs(scenario.at_volume(v)).hosted_usd for v in volumes]
    self_hosted = [monthly_costs(scenario.at_volume(v)).self_hosted_usd for v in volumes]

    ax.plot(volumes, hosted, label="hosted API (per token)")
    ax.step(volumes, self_hosted, where="post", label="self-hosted (replicas + engineering)")
    if break_even:
        ax.axvline(break_even, color="grey", linestyle="--", label=f"break-even: {break_even:,.0f} requests/day")
    ax.axvline(scenario.requests_per_day, color="black", linestyle=":", label="your volume")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("requests per day")
    ax.set_ylabel("cost per month (USD)")
    ax.set_title("Monthly cost of a hosted API and of self-hosting")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(True, which="major", alpha=0.3)
    return figure


def calculator(scenario: Scenario):
    """Return an ipywidgets box of sliders, starting at ``scenario``, that redraws the cost plot and summary.

    Needs ipywidgets; ``plot_costs`` and ``describe_costs`` do the same work without it.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    style = {"description_width": "16em"}
    layout = widgets.Layout(width="36em")

    def log_slider(description: str, value: float, low: float, high: float) -> widgets.FloatLogSlider:
        exponent = math.log10(max(value, 10.0**low))
        return widgets.FloatLogSlider(
            value=value, base=10, min=min(low, exponent), max=max(high, exponent), step=0.05,
            description=description, style=style, layout=layout, readout_format=",.0f",
        )

    def float_slider(description: str, value: float, high: float, step: float) -> widgets.FloatSlider:
        return widgets.FloatSlider(
            value=value, min=0.0, max=max(high, value), step=step,
            description=description, style=style, layout=layout,
        )

    def int_slider(description: str, value: int, high: int) -> widgets.IntSlider:
        return widgets.IntSlider(
            value=value, min=1, max=max(high, value), description=description, style=style, layout=layout
        )

    controls = {
        "requests_per_day": log_slider("requests per day", scenario.requests_per_day, 1, 8),
        "prompt_tokens": int_slider("prompt tokens per request", scenario.prompt_tokens, 8_000),
        "completion_tokens": int_slider("completion tokens per request", scenario.completion_tokens, 4_000),
        "input_price_per_million": float_slider("input USD per million tokens", scenario.input_price_per_million, 20.0, 0.05),
        "output_price_per_million": float_slider("output USD per million tokens", scenario.output_price_per_million, 80.0, 0.05),
        "hourly_cost_per_replica": float_slider("replica USD per hour", scenario.hourly_cost_per_replica, 20.0, 0.05),
        "tokens_per_second_per_replica": log_slider(
            "replica throughput (tokens/s)", scenario.tokens_per_second_per_replica, 0, 5
        ),
        "engineering_hours_per_month": float_slider(
            "engineering hours per month", scenario.engineering_hours_per_month, 400.0, 1.0
        ),
        "engineer_hourly_cost": float_slider("engineer USD per hour", scenario.engineer_hourly_cost, 400.0, 5.0),
    }

    def redraw(**values) -> None:
        current = replace(scenario, **values)
        plot_costs(current)
        plt.show()
        print(describe_costs(current))

    output = widgets.interactive_output(redraw, controls)
    return widgets.VBox([*controls.values(), output])
