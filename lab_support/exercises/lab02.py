"""Visible cases of lab 02 (hosted API versus self-hosting).

The reference answers are in :mod:`lab_support.economics`, under the same
names. Expected values here are worked out by hand, not by calling them, so
the unit tests that run the references through these cases check both.

Exercises:

- ``02.hosted_monthly_cost``: ``hosted_monthly_cost(requests_per_day, prompt_tokens, completion_tokens,
  input_price_per_million, output_price_per_million)``.
- ``02.replicas``: ``replicas_needed(requests_per_day, completion_tokens, tokens_per_second_per_replica,
  peak_to_average=2.0)``.
- ``02.self_hosted_monthly_cost``: ``self_hosted_monthly_cost(replicas, hourly_cost_per_replica,
  engineering_hours_per_month, engineer_hourly_cost)``.
- ``02.break_even``: ``break_even_requests_per_day(self_hosted_monthly_usd, cost_per_request_usd)``.
- ``02.recommend``: ``recommend(requests_per_day, break_even_requests_per_day, data_must_stay_in_house,
  engineers)`` returns ``(option, reasons)``.
"""

from __future__ import annotations

from collections.abc import Callable

from lab_support.grading import Case, case, close_to, register

CASE_TIMEOUT_S = 5.0
OPTIONS = ("hosted", "self-hosted")

register(
    "02.hosted_monthly_cost",
    Case(
        "1,000 requests a day of 1,000 + 500 tokens",
        args=(1_000, 1_000, 500, 1.0, 2.0),
        expected=60.0,
        compare=close_to(),
        timeout_s=CASE_TIMEOUT_S,
        hint="prices are in USD per million tokens, and a month is DAYS_PER_MONTH days",
    ),
    Case(
        "no requests cost nothing",
        args=(0, 1_000, 500, 1.0, 2.0),
        expected=0.0,
        compare=close_to(),
        timeout_s=CASE_TIMEOUT_S,
    ),
    Case(
        "negative requests raise ValueError",
        args=(-1, 1_000, 500, 1.0, 2.0),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
    ),
)

register(
    "02.replicas",
    Case(
        "300,000 requests a day of 200 tokens at 500 tokens/s",
        args=(300_000, 200, 500.0),
        expected=3,
        timeout_s=CASE_TIMEOUT_S,
        hint="peak tokens per second = requests_per_day * completion_tokens / SECONDS_PER_DAY * peak_to_average",
    ),
    Case(
        "no traffic still needs 1 replica",
        args=(0, 200, 500.0),
        expected=1,
        timeout_s=CASE_TIMEOUT_S,
        hint="a service that is up runs at least one replica",
    ),
    Case(
        "a throughput of 0 raises ValueError",
        args=(1_000, 200, 0.0),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
    ),
)

register(
    "02.self_hosted_monthly_cost",
    Case(
        "2 replicas at USD 1.50/h and 10 engineering hours at USD 100",
        args=(2, 1.5, 10, 100.0),
        expected=3_160.0,
        compare=close_to(),
        timeout_s=CASE_TIMEOUT_S,
        hint="replicas run all HOURS_PER_MONTH hours, busy or not; add the engineering hours times their cost",
    ),
    Case(
        "negative replicas raise ValueError",
        args=(-1, 1.5, 10, 100.0),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
    ),
)

register(
    "02.break_even",
    Case(
        "USD 3,000 a month against USD 0.001 per request",
        args=(3_000.0, 0.001),
        expected=100_000.0,
        compare=close_to(),
        timeout_s=CASE_TIMEOUT_S,
        hint="the hosted bill is requests_per_day * DAYS_PER_MONTH * cost_per_request_usd; solve for requests_per_day",
    ),
    Case(
        "a free hosted API raises ValueError",
        args=(3_000.0, 0.0),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
        hint="with a cost per request of 0 there is no break-even",
    ),
)


def expect_option(expected: str, *args: object) -> Callable[[Callable], None]:
    """Return a case body that calls ``recommend(*args)`` and checks the option and the reasons."""

    def run(recommend: Callable) -> None:
        result = recommend(*args)
        assert isinstance(result, tuple) and len(result) == 2, (
            f"recommend{args} returned {result!r}; return a tuple (option, reasons)"
        )
        option, reasons = result
        assert option == expected, f"recommend{args} chose {option!r}, expected {expected!r}"
        assert isinstance(reasons, list) and reasons, f"reasons is {reasons!r}; give a non-empty list of strings"
        assert all(isinstance(reason, str) and reason for reason in reasons), (
            f"reasons {reasons!r} must all be non-empty strings"
        )

    return run


register(
    "02.recommend",
    Case(
        "low volume, no privacy rule, 5 engineers: hosted",
        run=expect_option("hosted", 1_000, 100_000, False, 5),
        timeout_s=CASE_TIMEOUT_S,
        hint="below the break-even the hosted API costs less",
    ),
    Case(
        "data must stay in house: self-hosted",
        run=expect_option("self-hosted", 1_000, 100_000, True, 5),
        timeout_s=CASE_TIMEOUT_S,
        hint="the privacy rule comes before cost",
    ),
    Case(
        "high volume, 5 engineers: self-hosted",
        run=expect_option("self-hosted", 500_000, 100_000, False, 5),
        timeout_s=CASE_TIMEOUT_S,
    ),
)


@case("02.recommend", timeout_s=CASE_TIMEOUT_S)
def option_is_one_of_two(recommend: Callable) -> None:
    """the option is 'hosted' or 'self-hosted'"""
    option, _ = recommend(50_000, 100_000, False, 3)
    assert option in OPTIONS, f"option {option!r} must be one of {OPTIONS}"
