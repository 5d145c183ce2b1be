"""Visible cases of lab 01 (serving, training, fine-tuning) and the reference answers its demo cells use.

Exercises:

- ``01.classify_jobs``: ``job_of``, a dict from each id in ``SCENARIOS`` to one of ``JOBS``.
- ``01.stream_stats``: ``stream_stats(request_start, events)`` returns ``(ttft_s, tokens_per_s)``.
- ``01.predict_latency``: ``predict_total_latency(ttft_s, decode_tokens_per_s, output_tokens)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from lab_support.grading import Case, case, close_to, register

JOBS = ("serving", "training", "fine-tuning")

SCENARIOS = {
    "support_chat": "A support chatbot answers a customer who asks where their parcel is.",
    "pretraining": (
        "A research lab runs thousands of GPUs for weeks so that a new model learns to predict "
        "the next token of trillions of tokens of web text."
    ),
    "contract_style": (
        "A law firm takes an open model and trains it for a few hours on 20,000 of its own contract "
        "summaries, so that it writes in the firm's style."
    ),
    "code_completion": "An editor plugin suggests the rest of a line of code while a developer types.",
    "nightly_summaries": (
        "A nightly batch job uses an existing model, unchanged, to summarize the 50,000 support "
        "tickets of the day before."
    ),
    "json_adapter": (
        "A team trains a small LoRA adapter on 2,000 labelled examples so that the model answers in JSON."
    ),
}

CASE_TIMEOUT_S = 5.0


# 01.classify_jobs


@case("01.classify_jobs", timeout_s=CASE_TIMEOUT_S, hint="use every key of SCENARIOS once")
def has_one_job_per_scenario(job_of: dict) -> None:
    """has one job for every scenario"""
    assert isinstance(job_of, dict), f"job_of must be a dict, got {type(job_of).__name__}"
    missing = sorted(set(SCENARIOS) - set(job_of))
    unknown = sorted(set(job_of) - set(SCENARIOS))
    assert not missing, f"job_of has no entry for {missing}"
    assert not unknown, f"job_of has entries for unknown scenarios {unknown}; use the keys of SCENARIOS"


@case("01.classify_jobs", timeout_s=CASE_TIMEOUT_S)
def uses_only_the_three_jobs(job_of: dict) -> None:
    """uses only 'serving', 'training' and 'fine-tuning'"""
    invalid = {key: value for key, value in job_of.items() if value not in JOBS}
    assert not invalid, f"invalid jobs {invalid}; use one of {JOBS}"


@case(
    "01.classify_jobs",
    timeout_s=CASE_TIMEOUT_S,
    hint="the model's weights do not change while it answers a user",
)
def support_chat_is_serving(job_of: dict) -> None:
    """answering a customer is serving"""
    assert job_of.get("support_chat") == "serving", (
        f"job_of['support_chat'] is {job_of.get('support_chat')!r}, expected 'serving'"
    )


# 01.stream_stats


def close_pair(rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> Callable[[object, object], bool]:
    """Return a ``compare`` function for a pair of floats such as ``(ttft_s, tokens_per_s)``."""
    close = close_to(rel_tol=rel_tol, abs_tol=abs_tol)

    def compare(actual: object, expected: Sequence[float]) -> bool:
        return (
            isinstance(actual, (tuple, list))
            and len(actual) == len(expected)
            and all(close(value, target) for value, target in zip(actual, expected))
        )

    return compare


register(
    "01.stream_stats",
    Case(
        "three tokens 0.5 s apart after 0.2 s",
        args=(10.0, [(10.2, "Hi"), (10.7, " there"), (11.2, "!")]),
        expected=(0.2, 2.0),
        compare=close_pair(),
        timeout_s=CASE_TIMEOUT_S,
        hint="TTFT is the first token's time minus request_start; the rate counts the gaps between tokens",
    ),
    Case(
        "returns a tuple of two numbers",
        args=(0.0, [(0.5, "a"), (1.0, "b")]),
        expected=(0.5, 2.0),
        compare=close_pair(),
        timeout_s=CASE_TIMEOUT_S,
        hint="return (ttft_s, tokens_per_s)",
    ),
    Case(
        "no text at all raises ValueError",
        args=(0.0, [(0.1, ""), (0.2, "")]),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
        hint="events with empty text are not tokens; raise ValueError when no event has text",
    ),
)


# 01.predict_latency


def predict_total_latency(ttft_s: float, decode_tokens_per_s: float, output_tokens: int) -> float:
    """Return the seconds to the last token of a streamed reply of ``output_tokens``: TTFT, then one gap per further token.

    This is the exercise's reference solution. The lab's demo cells call it,
    so that they run before the learner has written their own.
    """
    if output_tokens < 1:
        raise ValueError(f"invalid output_tokens {output_tokens!r}: a reply has at least 1 token")
    if not decode_tokens_per_s > 0:
        raise ValueError(f"invalid decode_tokens_per_s {decode_tokens_per_s!r}: use a rate > 0")
    if not ttft_s >= 0:
        raise ValueError(f"invalid ttft_s {ttft_s!r}: use seconds >= 0")
    return ttft_s + (output_tokens - 1) / decode_tokens_per_s


register(
    "01.predict_latency",
    Case(
        "101 tokens at 50 tokens/s after 0.1 s",
        args=(0.1, 50.0, 101),
        expected=2.1,
        compare=close_to(),
        timeout_s=CASE_TIMEOUT_S,
        hint="after the first token come output_tokens - 1 more, each 1 / decode_tokens_per_s apart",
    ),
    Case(
        "zero tokens raises ValueError",
        args=(0.1, 50.0, 0),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
    ),
    Case(
        "a decode rate of 0 raises ValueError",
        args=(0.1, 0.0, 10),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
    ),
)


def relative_error(predicted: float, measured: float) -> float:
    """Return ``|predicted - measured| / measured``."""
    if not measured > 0:
        raise ValueError(f"invalid measured value {measured!r}: use seconds > 0")
    return math.fabs(predicted - measured) / measured
