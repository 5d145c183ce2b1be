"""Graded exercises: learner checks, lab building and grading.

Authoring guide
===============

Only the notebooks in ``solutions/`` are edited by hand. ``serving-lab
build-labs`` writes the learner copies in ``labs/`` from them, and
``serving-lab grade`` scores submitted copies against them.
:mod:`lab_support.grading.example` is a complete worked example.

1. Declare the exercises once, in the notebook metadata (JupyterLab edits
   notebook and cell metadata in the Property Inspector)::

       "serving_lab": {"exercises": {
           "ttft": {"points": 2, "title": "Time to first token"}
       }}

   Ids use letters, digits, ``_``, ``-`` and ``.``. Each exercise is scored
   all or nothing.

2. Mark the cells of each exercise in their cell metadata. An exercise has at
   least one answer cell and one tests cell, and both must be code cells::

       "serving_lab": {"exercise": "ttft", "role": "solution"}
       "serving_lab": {"exercise": "ttft", "role": "tests"}

3. In the answer cell, put the answer between ``### BEGIN SOLUTION`` and
   ``### END SOLUTION``. The learner's copy gets ``# YOUR CODE HERE`` and
   ``raise NotImplementedError(...)`` at the indentation of the BEGIN line, and
   keeps the code around the block, such as the ``def`` line. Prefer answers
   inside functions. A stub at column 0 raises as soon as the cell runs, so the
   builder tags that cell and its tests cell ``raises-exception``.

4. In the tests cell, call ``check("ttft", time_to_first_token)`` for the
   visible cases, and put grader-only asserts between ``### BEGIN HIDDEN TESTS``
   and ``### END HIDDEN TESTS``. The learner's copy has no hidden tests. The
   grader restores them from the solution notebook, matching the cells by cell
   id and then by exercise id.

5. Write the visible cases in a Python module and import it in the notebook's
   setup cell, so that ``check()`` finds them::

       from lab_support.grading import Case, case, close_to, register

       register(
           "ttft",
           Case("first token after 0.25 s", args=(10.0, [10.25]), expected=0.25,
                compare=close_to(), hint="subtract the request start"),
           Case("no tokens", args=(10.0, []), raises=ValueError),
       )

       @case("ttft", timeout_s=5)
       def measures_the_first_token_only(answer):
           assert answer(0.0, [1.0, 9.0]) == 1.0

6. Run ``serving-lab build-labs`` and commit both folders. ``serving-lab
   build-labs --check`` fails while ``labs/`` is stale. ``serving-lab grade
   solutions/NN_topic.ipynb labs/NN_topic.ipynb`` should then score full
   points and zero, which ``tests/test_notebooks_repo.py`` also checks.

Markers must be exact. A comment that starts with an upper-case BEGIN or
END, or a ``###`` comment that starts with begin or end in any case, must be
one of the four markers, so ``### BEGIN SOLUTON`` stops the build with the
notebook, the cell and the line instead of leaking the answer.

``check()`` runs each case in a daemon thread with a time limit (10 s unless
the case sets ``timeout_s``). A case that passes its limit is reported as
timed out, and its thread is stopped where Python can stop it. When the
grader runs the notebook it sets ``LAB_GRADING=1``, and a ``check()`` that did
not pass raises ``CheckFailed``, an AssertionError, so the tests cell fails.
"""

from lab_support.grading.checking import (
    GRADING_ENV,
    CaseResult,
    CheckFailed,
    CheckNotAttempted,
    CheckResult,
    CheckTimedOut,
    check,
    grading_mode,
)
from lab_support.grading.registry import Case, case, cases_for, close_to, register

__all__ = [
    "GRADING_ENV",
    "Case",
    "CaseResult",
    "CheckFailed",
    "CheckNotAttempted",
    "CheckResult",
    "CheckTimedOut",
    "case",
    "cases_for",
    "check",
    "close_to",
    "grading_mode",
    "register",
]
