"""Checks on the repository's own notebooks in solutions/ and labs/.

They pass while the folders are empty. Once notebooks exist, they keep labs/
in step with solutions/, keep outputs out of git, and grade every solution at
full marks and every lab at zero on a real kernel.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from lab_support.grading.builder import build_command, build_labs, solution_paths
from lab_support.grading.grader import SubmissionScore, grade_paths, load_solutions
from lab_support.grading.notebook import SolutionNotebook
from lab_support.grading.options import GradeOptions

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
LABS = ROOT / "labs"
REBUILD = build_command(Path("solutions"), Path("labs"))


def lab_paths() -> list[Path]:
    return sorted(LABS.glob("*.ipynb")) if LABS.is_dir() else []


def all_solution_paths() -> list[Path]:
    return solution_paths(SOLUTIONS) if SOLUTIONS.is_dir() else []


def test_labs_match_solutions():
    if not SOLUTIONS.is_dir():
        assert lab_paths() == [], f"labs/ has notebooks but solutions/ is missing: {lab_paths()}"
        return

    result = build_labs(SOLUTIONS, LABS, check=True)

    errors = "\n".join(str(error) for error in result.errors)
    assert not result.errors, f"invalid solution notebooks:\n{errors}"
    stale = "\n".join(result.stale)
    assert not result.stale, f"labs/ is stale:\n{stale}\nRun from the repository root: {REBUILD}"


def test_committed_notebooks_have_no_outputs():
    dirty = []
    for path in all_solution_paths() + lab_paths():
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if cell.get("outputs") or cell.get("execution_count") is not None:
                dirty.append(f"{path.relative_to(ROOT)} cell {index} (id {cell.get('id')!r})")

    assert not dirty, (
        "notebooks with outputs or execution counts:\n"
        + "\n".join(dirty)
        + "\nClear them with: jupyter nbconvert --clear-output --inplace solutions/*.ipynb, "
        f"then run: {REBUILD}"
    )


@pytest.fixture(scope="module")
def solutions() -> dict[str, SolutionNotebook]:
    return load_solutions(SOLUTIONS) if all_solution_paths() else {}


@pytest.fixture(scope="module")
def solution_grades(solutions) -> list[SubmissionScore]:
    if not solutions:
        return []
    return grade_paths(all_solution_paths(), solutions, GradeOptions())


@pytest.fixture(scope="module")
def lab_grades(solutions) -> list[SubmissionScore]:
    if not lab_paths():
        return []
    assert solutions, f"labs/ has notebooks but solutions/ has none: {lab_paths()}"
    return grade_paths(lab_paths(), solutions, GradeOptions())


def lost_points(score: SubmissionScore) -> str:
    return "\n".join(
        f"  {e.exercise}: {e.status} ({e.message})" for e in score.exercises if e.status != "passed"
    )


# Grading every notebook on a real kernel takes minutes, past the default per-test limit.
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_solutions_grade_full_marks(solution_grades):
    for score in solution_grades:
        assert score.points == score.max_points, (
            f"{score.notebook} scored {score.points} of {score.max_points}:\n{lost_points(score)}"
        )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_labs_grade_zero(lab_grades):
    for score in lab_grades:
        problems = [e for e in score.exercises if e.status in {"grader error", "no solution"}]
        assert not problems, f"{score.notebook} could not be graded:\n{lost_points(score)}"
        assert score.points == 0, f"{score.notebook} scored {score.points} without any answers"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_lab_stubs_raise_not_implemented(lab_grades, solutions):
    for score in lab_grades:
        solution = solutions[Path(score.solution).stem]
        for exercise in score.exercises:
            assert exercise.status == "not attempted", (
                f"{score.notebook}, exercise {exercise.exercise!r}: expected its stub to raise "
                f"NotImplementedError, got {exercise.status} ({exercise.message})"
            )

        # A stub at column 0 raises when its cell runs. A stub inside a function
        # raises only when the tests call it, and the status above covers that.
        for answer in (c for c in solution.cells if c.role == "solution"):
            if any(block.indent == "" for block in answer.blocks):
                run = score.cell_runs.get(answer.cell_id)
                assert run is not None, f"{score.notebook}: cell {answer.cell_id!r} did not run"
                assert run.ename == "NotImplementedError", (
                    f"{score.notebook}: cell {answer.cell_id!r} raised {run.ename or 'nothing'}, "
                    "expected NotImplementedError"
                )
