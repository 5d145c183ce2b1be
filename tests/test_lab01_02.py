"""Tests for labs 01 and 02: the cost model, the exercise cases, and the notebooks' own tests cells.

The tests cells are run outside Jupyter, in a namespace with stand-ins for
what the notebook measured, so that each exercise can be checked both ways:
the solution passes its tests cell, and the usual wrong answers fail it.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from lab_support import economics  # noqa: E402
from lab_support.economics import Scenario  # noqa: E402
from lab_support.exercises import lab01, lab02  # noqa: E402, F401 - importing registers the cases
from lab_support.grading import GRADING_ENV, cases_for, check  # noqa: E402
from lab_support.grading.builder import build_labs  # noqa: E402
from lab_support.grading.notebook import cell_metadata, load_solution  # noqa: E402
from lab_support.metrics import summarize  # noqa: E402
from lab_support.provider import Pricing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {
    "01": ROOT / "solutions" / "01_serving_vs_training.ipynb",
    "02": ROOT / "solutions" / "02_hosted_vs_self_hosted.ipynb",
}


def make_scenario(**changes) -> Scenario:
    values = dict(
        requests_per_day=20_000,
        prompt_tokens=60,
        completion_tokens=120,
        input_price_per_million=0.15,
        output_price_per_million=0.60,
        hourly_cost_per_replica=1.0,
        tokens_per_second_per_replica=400.0,
        engineering_hours_per_month=10,
        engineer_hourly_cost=100.0,
    )
    values.update(changes)
    return Scenario(**values)


# The cost model.


def test_request_cost_per_million_tokens():
    assert math.isclose(economics.request_cost(1_000, 500, 1.0, 2.0), 0.002)
    assert math.isclose(economics.request_cost(1_000_000, 0, 0.15, 0.60), 0.15)
    assert math.isclose(economics.request_cost(0, 1_000_000, 0.15, 0.60), 0.60)


def test_request_cost_matches_provider_pricing():
    pricing = Pricing(input_per_million=0.15, output_per_million=0.60)
    assert math.isclose(economics.request_cost(42, 33, 0.15, 0.60), pricing.cost(42, 33))


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ((-1, 10, 1.0, 1.0), "prompt_tokens"),
        ((10, -1, 1.0, 1.0), "completion_tokens"),
        ((10, 10, -1.0, 1.0), "input_price_per_million"),
        ((10, 10, 1.0, float("nan")), "output_price_per_million"),
    ],
)
def test_request_cost_rejects_invalid_values(arguments, name):
    with pytest.raises(ValueError, match=name):
        economics.request_cost(*arguments)


def test_hosted_monthly_cost_uses_thirty_days():
    assert math.isclose(economics.hosted_monthly_cost(1_000, 1_000, 500, 1.0, 2.0), 60.0)
    assert economics.hosted_monthly_cost(0, 1_000, 500, 1.0, 2.0) == 0.0
    with pytest.raises(ValueError, match="requests_per_day"):
        economics.hosted_monthly_cost(-5, 1_000, 500, 1.0, 2.0)


def test_replica_capacity_counts_peak():
    assert math.isclose(economics.replica_capacity(100, 100.0, peak_to_average=1.0), 86_400)
    assert math.isclose(economics.replica_capacity(100, 100.0, peak_to_average=2.0), 43_200)
    with pytest.raises(ValueError, match="peak_to_average"):
        economics.replica_capacity(100, 100.0, peak_to_average=0.5)
    with pytest.raises(ValueError, match="completion_tokens"):
        economics.replica_capacity(0, 100.0)


@pytest.mark.parametrize(
    ("requests_per_day", "completion_tokens", "throughput", "peak", "expected"),
    [
        (0, 200, 500.0, 2.0, 1),
        (300_000, 200, 500.0, 2.0, 3),
        (250_000, 200, 500.0, 2.0, 3),
        (250_000, 200, 500.0, 1.0, 2),
        (172_800, 50, 100.0, 1.0, 1),
        (172_801, 50, 100.0, 1.0, 2),
        # Exactly 2 replicas of 60,480 requests each, which floating point computes as 2.0000000000000004.
        (120_960, 1, 0.7, 1.0, 2),
    ],
)
def test_replicas_needed_rounds_up(requests_per_day, completion_tokens, throughput, peak, expected):
    assert economics.replicas_needed(requests_per_day, completion_tokens, throughput, peak) == expected


def test_replicas_needed_rejects_zero_throughput():
    with pytest.raises(ValueError, match="tokens_per_second_per_replica"):
        economics.replicas_needed(1_000, 200, 0.0)


def test_self_hosted_monthly_cost_runs_every_hour():
    assert math.isclose(economics.self_hosted_monthly_cost(2, 1.5, 10, 100.0), 3_160.0)
    assert math.isclose(economics.self_hosted_monthly_cost(1, 1.0, 0, 100.0), 720.0)
    with pytest.raises(ValueError, match="engineering_hours_per_month"):
        economics.self_hosted_monthly_cost(1, 1.0, -1, 100.0)


def test_break_even_formula():
    assert math.isclose(economics.break_even_requests_per_day(3_000.0, 0.001), 100_000.0)
    assert economics.break_even_requests_per_day(0.0, 0.001) == 0.0
    with pytest.raises(ValueError, match="cost_per_request_usd"):
        economics.break_even_requests_per_day(3_000.0, 0.0)


@pytest.mark.parametrize(
    ("volume", "private", "engineers", "expected", "min_reasons"),
    [
        (1_000, False, 5, "hosted", 1),
        (1_000, True, 5, "self-hosted", 1),
        (500_000, False, 5, "self-hosted", 1),
        (100_000, False, 2, "self-hosted", 1),
        (99_999, False, 2, "hosted", 1),
        (5_000_000, False, 1, "hosted", 1),
        (10, True, 0, "self-hosted", 2),
    ],
)
def test_recommend_rules(volume, private, engineers, expected, min_reasons):
    option, reasons = economics.recommend(volume, 100_000, private, engineers)
    assert option == expected
    assert len(reasons) >= min_reasons
    assert all(isinstance(reason, str) and reason for reason in reasons)


def test_scenario_rejects_invalid_field():
    with pytest.raises(ValueError, match="hourly_cost_per_replica"):
        make_scenario(hourly_cost_per_replica=-1.0)
    with pytest.raises(ValueError, match="tokens_per_second_per_replica"):
        make_scenario(tokens_per_second_per_replica=0.0)


def test_monthly_costs_of_docstring_scenario():
    costs = economics.monthly_costs(make_scenario())
    assert math.isclose(costs.hosted_usd, 48.6)
    assert math.isclose(costs.self_hosted_usd, 1_720.0)
    assert costs.replicas == 1


def costs_at(scenario: Scenario, volume: float) -> tuple[float, float]:
    costs = economics.monthly_costs(scenario.at_volume(volume))
    return costs.self_hosted_usd, costs.hosted_usd


@pytest.mark.parametrize(
    "changes",
    [
        {"hourly_cost_per_replica": 0.05, "tokens_per_second_per_replica": 45.0, "engineering_hours_per_month": 8},
        {"hourly_cost_per_replica": 0.5, "tokens_per_second_per_replica": 2_000.0},
        {"hourly_cost_per_replica": 0.3, "tokens_per_second_per_replica": 300.0, "engineering_hours_per_month": 0},
        {"output_price_per_million": 10.0, "hourly_cost_per_replica": 4.0, "tokens_per_second_per_replica": 1_500.0},
    ],
)
def test_scenario_break_even_stays_cheaper(changes):
    scenario = make_scenario(**changes)
    break_even = economics.scenario_break_even(scenario)
    assert break_even is not None and break_even > 0

    # From the break-even on, self-hosting never costs more, including right after each new replica.
    capacity = scenario.replica_capacity
    volumes = [break_even * factor for factor in (1.0, 1.001, 1.5, 2.0, 10.0, 100.0)]
    first_step = math.ceil(break_even / capacity)
    volumes += [capacity * step * (1 + 1e-9) for step in range(first_step, first_step + 200)]
    for volume in volumes:
        self_hosted, hosted = costs_at(scenario, volume)
        assert self_hosted <= hosted * (1 + 1e-9), (volume, self_hosted, hosted)

    # Just below it, self-hosting costs more.
    self_hosted, hosted = costs_at(scenario, break_even * (1 - 1e-6))
    assert self_hosted > hosted


def test_scenario_break_even_none_when_replica_dearer():
    # One replica's full traffic costs less on the hosted API than the replica itself.
    scenario = make_scenario(hourly_cost_per_replica=1.0, tokens_per_second_per_replica=40.0)
    assert economics.scenario_break_even(scenario) is None
    capacity = scenario.replica_capacity
    for step in range(1, 500):
        self_hosted, hosted = costs_at(scenario, capacity * step)
        assert self_hosted >= hosted * (1 - 1e-9)
    assert "none" in economics.describe_costs(scenario)


def test_scenario_break_even_zero_when_self_hosting_free():
    scenario = make_scenario(hourly_cost_per_replica=0.0, engineering_hours_per_month=0)
    assert economics.scenario_break_even(scenario) == 0.0


def test_describe_costs_names_both_options():
    text = economics.describe_costs(make_scenario(hourly_cost_per_replica=0.05))
    assert "hosted API:  USD 48.60 per month" in text
    assert "self-hosted: USD 1,036.00 per month (1 replica(s)" in text
    assert "break-even: self-hosting costs no more from" in text


def test_plot_costs_labels_axes_and_break_even():
    scenario = make_scenario(hourly_cost_per_replica=0.05)
    figure = economics.plot_costs(scenario)
    try:
        ax = figure.axes[0]
        assert ax.get_title()
        assert "requests per day" in ax.get_xlabel()
        assert "USD" in ax.get_ylabel()
        labels = [line.get_label() for line in ax.get_lines()]
        assert any(label.startswith("break-even") for label in labels), labels
    finally:
        plt.close(figure)


def test_plot_costs_without_break_even():
    figure = economics.plot_costs(make_scenario(tokens_per_second_per_replica=40.0))
    try:
        labels = [line.get_label() for line in figure.axes[0].get_lines()]
        assert not any(label.startswith("break-even") for label in labels), labels
    finally:
        plt.close(figure)


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")
def test_calculator_redraws_on_slider_change(capsys):
    box = economics.calculator(make_scenario())
    sliders = box.children[:-1]
    assert len(sliders) == 9
    volume = next(slider for slider in sliders if slider.description == "requests per day")
    volume.value = 2_000_000
    plt.close("all")
    assert "2,000,000 requests per day" in capsys.readouterr().out


# The visible cases, run against the reference answers and against wrong ones.


@pytest.fixture
def quiet_check(monkeypatch):
    monkeypatch.delenv(GRADING_ENV, raising=False)


def reference_stream_stats(request_start, events):
    summary = summarize(request_start, events)
    return summary.ttft_s, summary.decode_tokens_per_s


@pytest.mark.parametrize(
    ("exercise", "answer"),
    [
        ("01.stream_stats", reference_stream_stats),
        ("01.predict_latency", lab01.predict_total_latency),
        ("02.hosted_monthly_cost", economics.hosted_monthly_cost),
        ("02.replicas", economics.replicas_needed),
        ("02.self_hosted_monthly_cost", economics.self_hosted_monthly_cost),
        ("02.break_even", economics.break_even_requests_per_day),
        ("02.recommend", economics.recommend),
    ],
)
def test_reference_passes_visible_cases(quiet_check, exercise, answer):
    result = check(exercise, answer)
    assert result.total >= 2
    assert result.ok, result.text()


def test_wrong_classification_fails_visible_cases(quiet_check):
    answer = {key: "serving" for key in lab01.SCENARIOS}
    assert check("01.classify_jobs", answer).ok
    answer["support_chat"] = "training"
    assert not check("01.classify_jobs", answer).ok
    assert not check("01.classify_jobs", {"support_chat": "serving"}).ok
    assert not check("01.classify_jobs", {**answer, "support_chat": "inference"}).ok


@pytest.mark.parametrize(
    ("exercise", "wrong_answer"),
    [
        ("01.predict_latency", lambda ttft, rate, tokens: ttft + tokens / rate),
        ("01.stream_stats", lambda start, events: (events[0][0] - start, len(events) / (events[-1][0] - events[0][0]))),
        ("02.hosted_monthly_cost", lambda r, p, c, i, o: r * 30 * (p * i + c * o) / 1_000),
        ("02.replicas", lambda r, c, t, peak=2.0: math.ceil(r * c / 86_400 / t)),
        ("02.self_hosted_monthly_cost", lambda n, h, e, c: n * h * 720),
        ("02.break_even", lambda fixed, per_request: fixed / per_request),
        ("02.recommend", lambda volume, break_even, private, team: ("hosted", ["cheaper"])),
    ],
)
def test_wrong_answer_fails_visible_cases(quiet_check, exercise, wrong_answer):
    assert not check(exercise, wrong_answer).ok


# The notebooks: structure, and each tests cell run against the solution and wrong answers.


def test_solution_notebooks_declare_registered_exercises():
    for prefix, path in NOTEBOOKS.items():
        solution = load_solution(path)
        assert solution.exercises, path
        for exercise_id in solution.exercises:
            assert exercise_id.startswith(prefix + "."), exercise_id
            assert cases_for(exercise_id), f"{exercise_id} has no visible cases"


def test_solution_notebooks_have_no_outputs():
    for path in NOTEBOOKS.values():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], (path.name, cell.id)
                assert cell.execution_count is None, (path.name, cell.id)


def test_labs_are_built_from_solutions(tmp_path):
    solutions = tmp_path / "solutions"
    labs = tmp_path / "labs"
    solutions.mkdir()
    for path in NOTEBOOKS.values():
        shutil.copy(path, solutions / path.name)
    result = build_labs(solutions, labs)
    assert not result.errors
    for path in NOTEBOOKS.values():
        built = (labs / path.name).read_text()
        assert built == (ROOT / "labs" / path.name).read_text(), f"labs/{path.name} is stale; run serving-lab build-labs"
        assert "BEGIN HIDDEN TESTS" not in built
        assert "BEGIN SOLUTION" not in built


def exercise_sources(path: Path, exercise_id: str) -> tuple[str, str]:
    nb = nbformat.read(path, as_version=4)
    sources = {cell_metadata(cell).get("role"): cell.source for cell in nb.cells if cell_metadata(cell).get("exercise") == exercise_id}
    return sources["solution"], sources["tests"]


def stream_events(ttft_s: float, rate: float, tokens: int) -> list[tuple[float, str]]:
    """Events of a stream as the llama.cpp server sends it: role chunk, tokens, finish chunk."""
    stamps = [ttft_s + index / rate for index in range(tokens)]
    return [(ttft_s - 0.001, ""), *((stamp, f" t{index}") for index, stamp in enumerate(stamps)), (stamps[-1] + 0.002, "")]


def lab01_namespace() -> dict:
    events = stream_events(0.03, 50.0, 48)
    sweep = {}
    for max_tokens in (8, 32, 64, 128):
        run_events = stream_events(0.03, 50.0, max_tokens)
        sweep[max_tokens] = summarize(0.0, run_events, run_events[-1][0] + 0.003)
    return {
        "check": check,
        "lab01": lab01,
        "summarize": summarize,
        "request_start": 0.0,
        "events": events,
        "sweep": sweep,
        "MAX_TOKENS": (8, 32, 64, 128),
    }


def lab02_namespace() -> dict:
    usage = type("Usage", (), {"prompt_tokens": 42, "completion_tokens": 33})()
    prices = Pricing()
    return {
        "check": check,
        "economics": economics,
        "usage": usage,
        "PRICES": prices,
        "DAYS_PER_MONTH": economics.DAYS_PER_MONTH,
        "HOURS_PER_MONTH": economics.HOURS_PER_MONTH,
        "SECONDS_PER_DAY": economics.SECONDS_PER_DAY,
        "MIN_ENGINEERS_TO_SELF_HOST": economics.MIN_ENGINEERS_TO_SELF_HOST,
        "replica_tokens_per_s": 43.9,
        "HOURLY_COST_PER_REPLICA": 0.05,
        "ENGINEERING_HOURS_PER_MONTH": 8,
        "ENGINEER_HOURLY_COST": 100.0,
        "hosted_request_usd": prices.cost(42, 33),
    }


def run_tests_cell(path: Path, exercise_id: str, namespace: dict) -> None:
    """Run the exercise's solution and then its whole tests cell, as the grader does."""
    solution, tests = exercise_sources(path, exercise_id)
    exec(solution, namespace)
    exec(tests, namespace)


def run_hidden_tests(path: Path, exercise_id: str, namespace: dict, answer_source: str) -> None:
    """Run ``answer_source`` and then only the hidden tests of the exercise's tests cell."""
    _, tests = exercise_sources(path, exercise_id)
    hidden = tests.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS", 1)[0]
    exec(answer_source, namespace)
    exec(hidden, namespace)


SOLVED = [
    ("01", "01.classify_jobs"),
    ("01", "01.stream_stats"),
    ("01", "01.predict_latency"),
    ("02", "02.hosted_monthly_cost"),
    ("02", "02.replicas"),
    ("02", "02.self_hosted_monthly_cost"),
    ("02", "02.break_even"),
    ("02", "02.recommend"),
]


def namespace_for(lab: str) -> dict:
    return lab01_namespace() if lab == "01" else lab02_namespace()


@pytest.mark.parametrize(("lab", "exercise_id"), SOLVED)
def test_solution_passes_tests_cell(monkeypatch, lab, exercise_id):
    monkeypatch.setenv(GRADING_ENV, "1")
    run_tests_cell(NOTEBOOKS[lab], exercise_id, namespace_for(lab))


# Common wrong answers, each of which the hidden tests alone must catch.
WRONG_ANSWERS = {
    "role chunk counted as the first token": (
        "01",
        "01.stream_stats",
        """
def stream_stats(request_start, events):
    stamps = [stamp for stamp, text in events if text]
    if not stamps:
        raise ValueError("no text")
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return events[0][0] - request_start, rate
""",
    ),
    "finish chunk counted in the decode time": (
        "01",
        "01.stream_stats",
        """
def stream_stats(request_start, events):
    stamps = [stamp for stamp, text in events if text]
    if not stamps:
        raise ValueError("no text")
    return stamps[0] - request_start, (len(stamps) - 1) / (events[-1][0] - stamps[0])
""",
    ),
    "nightly batch job called training": (
        "01",
        "01.classify_jobs",
        """
job_of = {key: "serving" for key in lab01.SCENARIOS}
job_of.update(pretraining="training", contract_style="fine-tuning", json_adapter="fine-tuning", nightly_summaries="training")
""",
    ),
    "no check for a negative TTFT": (
        "01",
        "01.predict_latency",
        """
def predict_total_latency(ttft_s, decode_tokens_per_s, output_tokens):
    if output_tokens < 1 or decode_tokens_per_s <= 0:
        raise ValueError("invalid")
    return ttft_s + (output_tokens - 1) / decode_tokens_per_s
""",
    ),
    "input and output prices swapped": (
        "02",
        "02.hosted_monthly_cost",
        """
def hosted_monthly_cost(requests_per_day, prompt_tokens, completion_tokens, input_price_per_million, output_price_per_million):
    if requests_per_day < 0:
        raise ValueError("negative")
    return requests_per_day * 30 * (prompt_tokens * output_price_per_million + completion_tokens * input_price_per_million) / 1_000_000
""",
    ),
    "replicas rounded to the nearest": (
        "02",
        "02.replicas",
        """
def replicas_needed(requests_per_day, completion_tokens, tokens_per_second_per_replica, peak_to_average=2.0):
    if tokens_per_second_per_replica <= 0:
        raise ValueError("invalid")
    return max(1, round(requests_per_day * completion_tokens / 86_400 * peak_to_average / tokens_per_second_per_replica))
""",
    ),
    "a month of 730 hours": (
        "02",
        "02.self_hosted_monthly_cost",
        """
def self_hosted_monthly_cost(replicas, hourly_cost_per_replica, engineering_hours_per_month, engineer_hourly_cost):
    if replicas < 0:
        raise ValueError("negative")
    return replicas * hourly_cost_per_replica * 730 + engineering_hours_per_month * engineer_hourly_cost
""",
    ),
    "break-even left per month": (
        "02",
        "02.break_even",
        """
def break_even_requests_per_day(self_hosted_monthly_usd, cost_per_request_usd):
    if cost_per_request_usd <= 0:
        raise ValueError("invalid")
    return self_hosted_monthly_usd / cost_per_request_usd
""",
    ),
    "one decode gap too many": (
        "01",
        "01.predict_latency",
        """
def predict_total_latency(ttft_s, decode_tokens_per_s, output_tokens):
    if output_tokens < 1 or decode_tokens_per_s <= 0 or ttft_s < 0:
        raise ValueError("invalid")
    return ttft_s + output_tokens / decode_tokens_per_s
""",
    ),
    "prices per 1,000 tokens": (
        "02",
        "02.hosted_monthly_cost",
        """
def hosted_monthly_cost(requests_per_day, prompt_tokens, completion_tokens, input_price_per_million, output_price_per_million):
    if min(requests_per_day, prompt_tokens, completion_tokens, input_price_per_million, output_price_per_million) < 0:
        raise ValueError("negative")
    return requests_per_day * 30 * (prompt_tokens * input_price_per_million + completion_tokens * output_price_per_million) / 1_000
""",
    ),
    "peak factor ignored": (
        "02",
        "02.replicas",
        """
import math

def replicas_needed(requests_per_day, completion_tokens, tokens_per_second_per_replica, peak_to_average=2.0):
    if tokens_per_second_per_replica <= 0:
        raise ValueError("invalid")
    return max(1, math.ceil(requests_per_day * completion_tokens / 86_400 / tokens_per_second_per_replica))
""",
    ),
    "engineering time left out": (
        "02",
        "02.self_hosted_monthly_cost",
        """
def self_hosted_monthly_cost(replicas, hourly_cost_per_replica, engineering_hours_per_month, engineer_hourly_cost):
    if min(replicas, hourly_cost_per_replica, engineering_hours_per_month, engineer_hourly_cost) < 0:
        raise ValueError("negative")
    return replicas * hourly_cost_per_replica * 720
""",
    ),
    "break-even volume itself called hosted": (
        "02",
        "02.recommend",
        """
def recommend(requests_per_day, break_even_requests_per_day, data_must_stay_in_house, engineers):
    if data_must_stay_in_house:
        return "self-hosted", ["privacy", "team"]
    if engineers < 2:
        return "hosted", ["team"]
    if requests_per_day > break_even_requests_per_day:
        return "self-hosted", ["volume"]
    return "hosted", ["volume"]
""",
    ),
    "privacy without the hiring reason": (
        "02",
        "02.recommend",
        """
def recommend(requests_per_day, break_even_requests_per_day, data_must_stay_in_house, engineers):
    if data_must_stay_in_house:
        return "self-hosted", ["privacy"]
    if engineers < 2:
        return "hosted", ["team"]
    if requests_per_day >= break_even_requests_per_day:
        return "self-hosted", ["volume"]
    return "hosted", ["volume"]
""",
    ),
    "team size ignored": (
        "02",
        "02.recommend",
        """
def recommend(requests_per_day, break_even_requests_per_day, data_must_stay_in_house, engineers):
    if data_must_stay_in_house:
        return "self-hosted", ["privacy"]
    if requests_per_day >= break_even_requests_per_day:
        return "self-hosted", ["volume"]
    return "hosted", ["volume"]
""",
    ),
}


@pytest.mark.parametrize("mistake", sorted(WRONG_ANSWERS))
def test_hidden_tests_catch_wrong_answer(mistake):
    lab, exercise_id, source = WRONG_ANSWERS[mistake]
    with pytest.raises(AssertionError):
        run_hidden_tests(NOTEBOOKS[lab], exercise_id, namespace_for(lab), source)


# The hosted path of lab 02 against a provider that plays a real one.

API_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_-]{16,}")


@pytest.mark.slow
def test_lab02_real_provider_path_never_shows_key(backend, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    from lab_support.provider import start_provider
    from lab_support.settings import get_settings

    secret = "sk-test-" + "Q7f2" * 8
    with start_provider(upstream=backend, api_key=secret, models="real-model-1") as provider:
        monkeypatch.setenv("LAB_HOSTED_BASE_URL", provider.base_url)
        monkeypatch.setenv("LAB_HOSTED_API_KEY", secret)
        monkeypatch.setenv("LAB_HOSTED_MODEL", "real-model-1")
        get_settings.cache_clear()
        nb = nbformat.read(NOTEBOOKS["02"], as_version=4)
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
        billed = provider.ledger.totals()
    get_settings.cache_clear()

    text = nbformat.writes(nb)
    assert secret not in text
    assert not API_KEY_PATTERN.search(text), API_KEY_PATTERN.search(text)
    assert "real, from the LAB_HOSTED_* variables" in text
    assert "real-model-1" in text
    # The hosted requests went to this provider: one plain request and the streamed latency runs.
    assert billed.requests >= 4
