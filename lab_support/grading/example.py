"""A worked example of a graded lab: visible cases here, the notebook from ``solution_notebook()``.

Importing this module registers the visible cases of three exercises:

- ``ttft`` (2 points): ``time_to_first_token(request_start, token_times)``.
- ``tokens_per_second`` (2 points): ``tokens_per_second(token_times)``, the decode rate.
- ``max_batch_tokens`` (1 point): a top-level value rather than a function.

``solution_notebook()`` returns the matching solution notebook, with its
answers, hidden tests and metadata, to save as ``solutions/NN_topic.ipynb``.
The tests of the grading package use both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lab_support.grading.registry import Case, close_to, register

if TYPE_CHECKING:
    from nbformat import NotebookNode

EXERCISES = {
    "ttft": {"points": 2, "title": "Time to first token"},
    "tokens_per_second": {"points": 2, "title": "Decode rate"},
    "max_batch_tokens": {"points": 1, "title": "Tokens in one batch"},
}

# Small limits keep a learner's infinite loop from stalling the checks for long.
CASE_TIMEOUT_S = 2.0

register(
    "ttft",
    Case(
        "first token 0.25 s after the request",
        args=(10.0, [10.25, 10.5]),
        expected=0.25,
        compare=close_to(),
        timeout_s=CASE_TIMEOUT_S,
        hint="subtract the request start from the time of the first token",
    ),
    Case(
        "no tokens raises ValueError",
        args=(10.0, []),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
    ),
)

register(
    "tokens_per_second",
    Case(
        "5 tokens in 2 s decode at 2 tokens/s",
        args=([0.0, 0.5, 1.0, 1.5, 2.0],),
        expected=2.0,
        compare=close_to(),
        timeout_s=CASE_TIMEOUT_S,
        hint="count the gaps between tokens, not the tokens",
    ),
    Case(
        "one token raises ValueError",
        args=([1.0],),
        raises=ValueError,
        timeout_s=CASE_TIMEOUT_S,
    ),
)

register(
    "max_batch_tokens",
    Case(
        "4 requests of 512 tokens",
        call=False,
        expected=2048,
        timeout_s=CASE_TIMEOUT_S,
        hint="multiply BATCH_SIZE by CONTEXT_SIZE",
    ),
)

SETUP = """\
import math

import lab_support.grading.example  # registers the visible cases of this lab
from lab_support.grading import check

BATCH_SIZE = 4
CONTEXT_SIZE = 512"""

TTFT_ANSWER = '''\
def time_to_first_token(request_start, token_times):
    """Return the seconds from the request to the first token; raise ValueError without tokens."""
    ### BEGIN SOLUTION
    if not token_times:
        raise ValueError("no tokens were received")
    return token_times[0] - request_start
    ### END SOLUTION'''

TTFT_TESTS = """\
check("ttft", time_to_first_token)
### BEGIN HIDDEN TESTS
assert math.isclose(time_to_first_token(1.0, [2.5]), 1.5)
### END HIDDEN TESTS"""

TPS_ANSWER = '''\
def tokens_per_second(token_times):
    """Return the decode rate in tokens per second; raise ValueError for fewer than 2 tokens."""
    ### BEGIN SOLUTION
    if len(token_times) < 2:
        raise ValueError("need at least 2 tokens to measure a rate")
    return (len(token_times) - 1) / (token_times[-1] - token_times[0])
    ### END SOLUTION'''

TPS_TESTS = """\
check("tokens_per_second", tokens_per_second)
### BEGIN HIDDEN TESTS
assert math.isclose(tokens_per_second([2.0, 2.25, 2.5]), 4.0)
### END HIDDEN TESTS"""

BATCH_ANSWER = """\
### BEGIN SOLUTION
max_batch_tokens = BATCH_SIZE * CONTEXT_SIZE
### END SOLUTION"""

BATCH_TESTS = """\
check("max_batch_tokens", max_batch_tokens)
### BEGIN HIDDEN TESTS
assert max_batch_tokens == BATCH_SIZE * CONTEXT_SIZE
### END HIDDEN TESTS"""


def _exercise_cell(cell_id: str, source: str, exercise: str, role: str) -> NotebookNode:
    import nbformat

    cell = nbformat.v4.new_code_cell(source, id=cell_id)
    cell.metadata["serving_lab"] = {"exercise": exercise, "role": role}
    return cell


def solution_notebook() -> NotebookNode:
    """Build the example solution notebook, with fixed cell ids."""
    # Imported here because notebooks import this module for its cases only.
    import nbformat

    markdown = nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["serving_lab"] = {"exercises": EXERCISES}
    nb.cells = [
        markdown("# Example lab: measuring a streamed response", id="title"),
        nbformat.v4.new_code_cell(SETUP, id="setup"),
        markdown("## Time to first token\n\nWrite `time_to_first_token`.", id="ttft-text"),
        _exercise_cell("ttft-answer", TTFT_ANSWER, "ttft", "solution"),
        _exercise_cell("ttft-tests", TTFT_TESTS, "ttft", "tests"),
        markdown("## Decode rate\n\nWrite `tokens_per_second`.", id="tps-text"),
        _exercise_cell("tps-answer", TPS_ANSWER, "tokens_per_second", "solution"),
        _exercise_cell("tps-tests", TPS_TESTS, "tokens_per_second", "tests"),
        markdown("## Batch size\n\nSet `max_batch_tokens`.", id="batch-text"),
        _exercise_cell("batch-answer", BATCH_ANSWER, "max_batch_tokens", "solution"),
        _exercise_cell("batch-tests", BATCH_TESTS, "max_batch_tokens", "tests"),
    ]
    nbformat.validate(nb)
    return nb
