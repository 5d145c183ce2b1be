"""``check(exercise_id, answer)``: run the visible cases of an exercise and show the result."""

from __future__ import annotations

import copy
import html
import os
import reprlib
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Literal

from lab_support.grading.registry import NOTHING, Case, cases_for, registered_exercises
from lab_support.grading.timelimit import TimeLimitExceeded, run_with_time_limit

# The grader sets this variable in the kernel, which makes a failing check() raise.
GRADING_ENV = "LAB_GRADING"

CaseStatus = Literal["passed", "failed", "error", "not attempted", "timed out", "skipped"]

_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80
_short.maxlist = 8
_short.maxdict = 8


class CheckFailed(AssertionError):
    """Raised by check() in grading mode when a case did not pass."""


class CheckNotAttempted(CheckFailed):
    """Raised in grading mode when every case that did not pass hit NotImplementedError."""


class CheckTimedOut(CheckFailed):
    """Raised in grading mode when a case hit its time limit."""


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case; ``message`` is empty for a passed case."""

    name: str
    status: CaseStatus
    message: str = ""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of ``check()`` for one exercise."""

    exercise: str
    cases: tuple[CaseResult, ...]

    @property
    def passed(self) -> int:
        return sum(1 for case in self.cases if case.status == "passed")

    @property
    def total(self) -> int:
        return len(self.cases)

    @property
    def ok(self) -> bool:
        return self.passed == self.total

    def text(self) -> str:
        """Format the result as plain text, one line per case."""
        lines = [f"{self.exercise}: {self.passed} of {self.total} cases passed"]
        for case in self.cases:
            mark = "PASS" if case.status == "passed" else case.status.upper()
            line = f"  [{mark}] {case.name}"
            if case.message:
                line += f": {case.message}"
            lines.append(line)
        return "\n".join(lines)

    def html(self) -> str:
        """Format the result as a small HTML table for Jupyter."""
        colour = "#1a7f37" if self.ok else "#b42318"
        rows = []
        for case in self.cases:
            symbol = "&#10004;" if case.status == "passed" else "&#10008;"
            rows.append(
                "<tr>"
                f"<td>{symbol}</td>"
                f"<td>{html.escape(case.name)}</td>"
                f"<td>{html.escape(case.status)}</td>"
                f"<td>{html.escape(case.message)}</td>"
                "</tr>"
            )
        return (
            f'<div><strong style="color:{colour}">{html.escape(self.exercise)}: '
            f"{self.passed} of {self.total} cases passed</strong>"
            '<table style="text-align:left">' + "".join(rows) + "</table></div>"
        )

    def __repr__(self) -> str:
        return f"CheckResult(exercise={self.exercise!r}, passed={self.passed}, total={self.total})"


class _Display:
    """Rich display of a CheckResult: HTML for Jupyter, the text form for terminals."""

    def __init__(self, result: CheckResult) -> None:
        self._result = result

    def _repr_html_(self) -> str:
        return self._result.html()

    def __repr__(self) -> str:
        return self._result.text()


def grading_mode() -> bool:
    """Return whether the grader runs this kernel, as set by LAB_GRADING=1."""
    return os.environ.get(GRADING_ENV, "").strip().lower() in {"1", "true", "yes"}


def check(exercise_id: str, answer: Any, *, timeout_s: float | None = None) -> CheckResult:
    """Run the visible cases of ``exercise_id`` against ``answer``, show the result and return it.

    Each case runs in its own daemon thread and is reported as timed out after
    its ``timeout_s``, which the ``timeout_s`` argument overrides for all cases.
    Exceptions from the answer, SystemExit included, are reported and never
    propagate, so a wrong answer cannot end the kernel. In grading mode a
    result with a case that did not pass raises CheckFailed, which is an
    AssertionError.
    """
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    cases = cases_for(exercise_id)
    if not cases:
        raise LookupError(
            f"no visible cases are registered for exercise {exercise_id!r}. Run the notebook's "
            "setup cell, which imports the lab module that registers them. "
            f"Registered exercises: {registered_exercises()}."
        )

    results: list[CaseResult] = []
    blocked_case = ""
    for case in cases:
        if blocked_case:
            results.append(
                CaseResult(
                    case.name,
                    "skipped",
                    f"not run, because case {blocked_case!r} is still running in the background",
                )
            )
            continue
        result, still_running = _run_case(exercise_id, case, answer, timeout_s or case.timeout_s)
        results.append(result)
        if still_running:
            blocked_case = case.name

    check_result = CheckResult(exercise=exercise_id, cases=tuple(results))
    _show(check_result)
    if grading_mode() and not check_result.ok:
        raise _failure(check_result)
    return check_result


def _run_case(exercise_id: str, case: Case, answer: Any, limit_s: float) -> tuple[CaseResult, bool]:
    """Run one case under its time limit; return its result and whether its thread is still running."""
    outcome = run_with_time_limit(
        lambda: _evaluate(case, answer), limit_s, name=f"check {exercise_id}: {case.name}"
    )
    if outcome.finished and outcome.error is None:
        return outcome.value, False
    if outcome.finished:
        # _evaluate reports the answer's errors itself, so this is a bug in the case or in check().
        error = outcome.error
        return CaseResult(case.name, "error", f"the case itself failed with {_describe(error)}"), False
    if outcome.stopped:
        return CaseResult(case.name, "timed out", f"timed out after {limit_s:g} s and was stopped"), False
    message = (
        f"timed out after {limit_s:g} s and could not be stopped, because it is blocked "
        "outside Python code (for example in time.sleep or a socket read without a timeout). "
        "It keeps running in the background, so restart the kernel to stop it."
    )
    return CaseResult(case.name, "timed out", message), True


def _evaluate(case: Case, answer: Any) -> CaseResult:
    try:
        value = _produce(case, answer)
    except TimeLimitExceeded:
        raise
    except _NotCallable as error:
        return _failed(case, "failed", str(error))
    except BaseException as error:  # SystemExit and KeyboardInterrupt too: the kernel must survive
        return _classify_error(case, error)

    if case.raises is not None:
        return _failed(
            case,
            "failed",
            f"expected {_exception_names(case.raises)} to be raised, but it returned {_short.repr(value)}",
        )
    if case.expected is NOTHING:
        return CaseResult(case.name, "passed")

    mismatch = f"expected {_short.repr(case.expected)}, got {_short.repr(value)}"
    try:
        matches = bool(case.compare(value, case.expected))
    except Exception as error:  # noqa: BLE001 - a returned object's __eq__ or __bool__ can raise anything
        return _failed(case, "failed", f"{mismatch}, and comparing them raised {_describe(error)}")
    if not matches:
        return _failed(case, "failed", mismatch)
    return CaseResult(case.name, "passed")


class _NotCallable(Exception):
    pass


def _classify_error(case: Case, error: BaseException) -> CaseResult:
    if case.raises is not None and isinstance(error, case.raises):
        return CaseResult(case.name, "passed")
    if isinstance(error, NotImplementedError):
        return CaseResult(
            case.name, "not attempted", "not attempted yet, because the answer raises NotImplementedError"
        )
    if isinstance(error, AssertionError) and case.run is not None:
        return _failed(case, "failed", _assertion_message(error))
    return _failed(case, "error", f"raised {_describe(error)}{_expectation(case)}")


def _produce(case: Case, answer: Any) -> Any:
    if case.run is not None:
        return case.run(answer)
    if not case.call:
        return answer
    if not callable(answer):
        raise _NotCallable(
            f"the answer is not callable, got {type(answer).__name__} {_short.repr(answer)}. "
            "Pass the function itself, without parentheses after its name"
        )
    return answer(*copy.deepcopy(case.args), **copy.deepcopy(dict(case.kwargs)))


def _failed(case: Case, status: CaseStatus, message: str) -> CaseResult:
    if case.hint:
        message = f"{message}. Hint: {case.hint}"
    return CaseResult(case.name, status, message)


def _expectation(case: Case) -> str:
    if case.raises is not None:
        return f", but expected {_exception_names(case.raises)}"
    if case.expected is not NOTHING:
        return f", but expected {_short.repr(case.expected)}"
    return ""


def _exception_names(raises: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    types = raises if isinstance(raises, tuple) else (raises,)
    return " or ".join(t.__name__ for t in types)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {_short.repr(text)[1:-1]}" if text else type(error).__name__


def _assertion_message(error: AssertionError) -> str:
    if str(error):
        return str(error)
    frames = traceback.extract_tb(error.__traceback__)
    if frames and frames[-1].line:
        return f"assertion failed: {frames[-1].line}"
    return "assertion failed"


def _failure(result: CheckResult) -> CheckFailed:
    not_passed = [case for case in result.cases if case.status != "passed"]
    if any(case.status == "timed out" for case in not_passed):
        error_type: type[CheckFailed] = CheckTimedOut
    elif all(case.status == "not attempted" for case in not_passed):
        error_type = CheckNotAttempted
    else:
        error_type = CheckFailed
    return error_type(result.text())


def _show(result: CheckResult) -> None:
    # IPython is imported only where it already runs, so plain scripts pay nothing.
    ipython = None
    if "IPython" in sys.modules:
        from IPython import get_ipython

        ipython = get_ipython()
    if ipython is None:
        print(result.text())
        return

    from IPython.display import display

    display(_Display(result))
