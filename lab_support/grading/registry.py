"""Visible test cases per exercise id, registered by lab modules and run by ``check()``.

A lab module registers its cases when it is imported, so the notebook's setup
cell imports it. Registering a case name again replaces the earlier case, so
re-running the import or ``importlib.reload`` does not duplicate cases.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lab_support.grading.ids import EXERCISE_ID

DEFAULT_CASE_TIMEOUT_S = 10.0


class _Nothing:
    def __repr__(self) -> str:
        return "NOTHING"


# Marks "no expected value given"; None is a valid expected value.
NOTHING: Any = _Nothing()


@dataclass(frozen=True)
class Case:
    """One visible test case of an exercise.

    By default the case calls the learner's answer with ``args`` and ``kwargs``
    (deep copies, so an answer that mutates its input cannot affect later
    cases) and compares the return value with ``expected`` using ``compare``,
    which defaults to ``==``. Other forms:

    - ``raises=ValueError``: the call must raise that exception type.
    - ``call=False``: the answer is a value, not a function, and is compared as it is.
    - ``run=function``: ``function(answer)`` does the work, for cases that need a
      server or several calls. It fails the case by raising AssertionError. If
      ``expected`` is given, its return value is compared with it.

    ``timeout_s`` limits the case's wall-clock time. ``hint`` is shown to the
    learner when the case fails.
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    expected: Any = NOTHING
    raises: type[BaseException] | tuple[type[BaseException], ...] | None = None
    compare: Callable[[Any, Any], bool] = operator.eq
    call: bool = True
    run: Callable[[Any], Any] | None = None
    timeout_s: float = DEFAULT_CASE_TIMEOUT_S
    hint: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Case name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.args, tuple):
            raise TypeError(
                f"Case {self.name!r}: args must be a tuple, got {type(self.args).__name__}. "
                "Write args=(value,) for a single argument."
            )
        if not (self.timeout_s > 0):
            raise ValueError(f"Case {self.name!r}: timeout_s must be positive, got {self.timeout_s!r}")
        if self.expected is not NOTHING and self.raises is not None:
            raise ValueError(f"Case {self.name!r}: give expected or raises, not both")

        calls_answer = self.run is None and self.call
        if (self.run is not None or not self.call) and (self.args or self.kwargs):
            raise ValueError(
                f"Case {self.name!r}: args and kwargs apply only when the case calls the answer, "
                "so drop them or remove run= / call=False"
            )
        if self.run is not None and not self.call:
            raise ValueError(f"Case {self.name!r}: give run= or call=False, not both")
        if calls_answer and self.expected is NOTHING and self.raises is None:
            raise ValueError(
                f"Case {self.name!r} checks nothing. Give expected= or raises=, "
                "or pass run= with a function that asserts"
            )
        if not self.call and self.expected is NOTHING:
            raise ValueError(f"Case {self.name!r}: call=False needs expected=")


def close_to(rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> Callable[[Any, Any], bool]:
    """Return a ``compare`` function for floats, using ``math.isclose`` with these tolerances."""

    def compare(actual: Any, expected: Any) -> bool:
        return (
            isinstance(actual, (int, float))
            and not isinstance(actual, bool)
            and math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=abs_tol)
        )

    return compare


_cases: dict[str, dict[str, Case]] = {}

F = TypeVar("F", bound=Callable[[Any], Any])


def register(exercise_id: str, *cases: Case) -> None:
    """Register visible cases for an exercise; a case with a registered name replaces the old one."""
    if not EXERCISE_ID.match(exercise_id):
        raise ValueError(
            f"exercise id {exercise_id!r} is invalid. Use letters, digits, '_', '-' and '.', "
            "the same id as in the notebook metadata."
        )
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"exercise {exercise_id!r}: case names {duplicates} are given twice")
    for case in cases:
        if not isinstance(case, Case):
            raise TypeError(f"exercise {exercise_id!r}: expected Case objects, got {case!r}")
        _cases.setdefault(exercise_id, {})[case.name] = case


def case(
    exercise_id: str,
    name: str | None = None,
    *,
    expected: Any = NOTHING,
    compare: Callable[[Any, Any], bool] = operator.eq,
    timeout_s: float = DEFAULT_CASE_TIMEOUT_S,
    hint: str = "",
) -> Callable[[F], F]:
    """Register the decorated ``function(answer)`` as a case of ``exercise_id``.

    The case name defaults to the first line of the docstring, then to the
    function name. The function fails the case by raising AssertionError.
    """

    def decorate(function: F) -> F:
        doc_line = (function.__doc__ or "").strip().splitlines()[:1]
        case_name = name or (doc_line[0] if doc_line else function.__name__)
        register(
            exercise_id,
            Case(
                case_name,
                run=function,
                expected=expected,
                compare=compare,
                timeout_s=timeout_s,
                hint=hint,
            ),
        )
        return function

    return decorate


def cases_for(exercise_id: str) -> tuple[Case, ...]:
    """Return the registered cases of an exercise in registration order (empty if none)."""
    return tuple(_cases.get(exercise_id, {}).values())


def registered_exercises() -> list[str]:
    """Return the ids of every exercise with registered cases, sorted."""
    return sorted(_cases)


def unregister(exercise_id: str) -> None:
    """Remove every case of an exercise; does nothing if it has none."""
    _cases.pop(exercise_id, None)
