"""Grade submitted notebooks against the solution notebooks.

For each submission the grader builds the notebook to run: the learner's
cells in the learner's order, with every tests cell replaced by the solution's
version (visible and hidden tests). It runs that notebook on a fresh kernel
with LAB_GRADING=1, in the submission's folder, and scores each exercise all
or nothing: full points when every tests cell of the exercise ran without an
error, 0 otherwise, with a status and a message that explains why.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nbformat import NotebookNode

from lab_support.grading.checking import GRADING_ENV
from lab_support.grading.errors import NotebookFormatError
from lab_support.grading.notebook import (
    METADATA_KEY,
    ExerciseCell,
    SolutionNotebook,
    cell_metadata,
    load_solution,
    read_notebook,
)
from lab_support.grading.options import GradeOptions
from lab_support.grading.runner import CellRun, NotebookRunner

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 500

# Exception names that mean "the learner has not written this answer yet".
_NOT_ATTEMPTED = {"NotImplementedError", "CheckNotAttempted"}
_FAILED = {"AssertionError", "CheckFailed"}


@dataclass(frozen=True)
class ExerciseScore:
    """The score of one exercise in one submission.

    ``status`` is one of: passed, failed, error, not attempted, timed out,
    kernel died, not run, missing, renamed, invalid notebook, no solution,
    grader error.
    """

    exercise: str
    title: str
    points: float
    max_points: float
    status: str
    message: str = ""


@dataclass
class SubmissionScore:
    """The scores of one submitted notebook."""

    learner: str
    notebook: Path
    solution: Path | None
    exercises: list[ExerciseScore] = field(default_factory=list)
    # Outcome of every executed code cell by cell id, for tests and debugging; not exported.
    cell_runs: dict[str, CellRun] = field(default_factory=dict)

    @property
    def points(self) -> float:
        return sum(score.points for score in self.exercises)

    @property
    def max_points(self) -> float:
        return sum(score.max_points for score in self.exercises)


@dataclass
class _Plan:
    """The notebook to run and, per exercise, where its cells ended up in it."""

    nb: NotebookNode
    solution_cells: dict[str, list[int]] = field(default_factory=dict)
    tests_cells: dict[str, list[int]] = field(default_factory=dict)
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)


def load_solutions(solutions_dir: Path) -> dict[str, SolutionNotebook]:
    """Load every solution notebook in ``solutions_dir``, keyed by file stem.

    Raises NotebookFormatError for an invalid solution notebook.
    """
    if not solutions_dir.is_dir():
        raise FileNotFoundError(
            f"solutions folder {solutions_dir} not found. Pass --solutions with the folder "
            "that holds the solution notebooks."
        )
    solutions = {path.stem: load_solution(path) for path in sorted(solutions_dir.glob("*.ipynb"))}
    if not solutions:
        raise FileNotFoundError(f"no solution notebooks (*.ipynb) found in {solutions_dir}")
    return solutions


def find_submissions(paths: list[Path]) -> list[Path]:
    """Expand notebooks and folders (searched recursively) into a sorted list of notebooks."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(
                sorted(
                    p for p in path.rglob("*.ipynb") if p.is_file() and ".ipynb_checkpoints" not in p.parts
                )
            )
        else:
            raise FileNotFoundError(f"submission path {path} not found")
    return list(dict.fromkeys(found))


def learner_id(notebook: Path, solution_name: str | None) -> str:
    """Return the learner id: the folder name when the file keeps the lab's name, else the file stem.

    ``alice/01_streaming.ipynb`` belongs to ``alice``, and so does ``alice.ipynb``.
    """
    if solution_name is not None and notebook.stem == solution_name:
        return notebook.resolve().parent.name
    return notebook.stem


def match_solution(
    notebook: Path, nb: NotebookNode | None, solutions: dict[str, SolutionNotebook]
) -> SolutionNotebook | None:
    """Find the solution for a submission by its lab metadata, then its file name.

    When there is only one solution notebook, every submission matches it.
    """
    if nb is not None:
        lab_metadata = nb.get("metadata", {}).get(METADATA_KEY)
        lab_name = lab_metadata.get("lab") if isinstance(lab_metadata, dict) else None
        if lab_name in solutions:
            return solutions[lab_name]
    if notebook.stem in solutions:
        return solutions[notebook.stem]
    if len(solutions) == 1:
        return next(iter(solutions.values()))
    return None


def grade_paths(
    paths: list[Path], solutions: dict[str, SolutionNotebook], options: GradeOptions
) -> list[SubmissionScore]:
    """Grade every notebook found under ``paths``; one broken submission never stops the others."""
    scores = []
    for notebook in find_submissions(paths):
        try:
            scores.append(grade_notebook(notebook, solutions, options))
        except Exception as error:  # noqa: BLE001 - a grader bug in one submission must not stop the run
            logger.exception("grading %s failed", notebook)
            scores.append(_grader_error(notebook, solutions, error))
    return scores


def grade_notebook(
    notebook: Path, solutions: dict[str, SolutionNotebook], options: GradeOptions
) -> SubmissionScore:
    """Run one submission with the hidden tests restored and score each exercise."""
    try:
        nb = read_notebook(notebook)
        _check_structure(notebook, nb)
    except NotebookFormatError as error:
        solution = match_solution(notebook, None, solutions)
        return _score_all(notebook, solution, "invalid notebook", str(error))

    solution = match_solution(notebook, nb, solutions)
    if solution is None:
        return SubmissionScore(
            learner=learner_id(notebook, None),
            notebook=notebook,
            solution=None,
            exercises=[
                ExerciseScore(
                    exercise="",
                    title="",
                    points=0,
                    max_points=0,
                    status="no solution",
                    message=(
                        f"no solution notebook matches {notebook.name}. Name the file like one of "
                        f"{sorted(solutions)}, or keep the lab's '{METADATA_KEY}.lab' notebook metadata"
                    ),
                )
            ],
        )

    learner = learner_id(notebook, solution.name)
    logger.info("grading %s (learner %s) against %s", notebook, learner, solution.path)
    plan = _plan(nb, solution)
    env = dict(os.environ)
    env[GRADING_ENV] = "1"
    # Silences debugpy's warning about frozen modules in every kernel.
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    runner = NotebookRunner(
        plan.nb,
        notebook.resolve().parent,
        cell_timeout_s=options.cell_timeout_s,
        notebook_timeout_s=options.notebook_timeout_s,
        env=env,
        skip=plan.skip,
        label=f"{learner} ({notebook})",
    )
    runs = runner.run()

    result = SubmissionScore(learner=learner, notebook=notebook, solution=solution.path)
    for index, run in runs.items():
        result.cell_runs[plan.nb.cells[index].get("id", f"#{index}")] = run
    earlier_problems = _earlier_problems(plan, solution, runs)
    for exercise in solution.exercises.values():
        if exercise.id in plan.problems:
            status, message = plan.problems[exercise.id]
        else:
            status, message = _classify(
                [runs.get(i) for i in plan.solution_cells[exercise.id]],
                [runs.get(i) for i in plan.tests_cells[exercise.id]],
            )
            first_cell = min(plan.solution_cells[exercise.id] + plan.tests_cells[exercise.id])
            notes = [note for index, note in earlier_problems if index < first_cell]
            if status in {"error", "failed"} and notes:
                message += ". Earlier in the notebook, " + "; ".join(notes)
        points = exercise.points if status == "passed" else 0
        result.exercises.append(
            ExerciseScore(
                exercise=exercise.id,
                title=exercise.title,
                points=points,
                max_points=exercise.points,
                status=status,
                message=_shorten(message),
            )
        )
    return result


def _earlier_problems(
    plan: _Plan, solution: SolutionNotebook, runs: dict[int, CellRun]
) -> list[tuple[int, str]]:
    """List failures outside the exercises, such as a setup cell that timed out, with their cell index.

    Errors count only in cells that come from the solution notebook, because a
    learner's own scratch cells often fail without consequence.
    """
    exercise_cells = {
        i for cells in (*plan.solution_cells.values(), *plan.tests_cells.values()) for i in cells
    }
    solution_ids = {cell.get("id") for cell in solution.nb.cells}
    problems = []
    for index, run in sorted(runs.items()):
        if index in exercise_cells:
            continue
        cell_id = plan.nb.cells[index].get("id")
        if run.status in {"timed out", "kernel died", "not run"}:
            problems.append((index, run.detail))
        elif run.status == "error" and cell_id in solution_ids:
            problems.append((index, f"cell {cell_id!r} raised {_error_text(run)}"))
    return problems


def _check_structure(notebook: Path, nb: NotebookNode) -> None:
    for index, cell in enumerate(nb.cells):
        if not isinstance(cell, dict) or cell.get("cell_type") not in {"code", "markdown", "raw"}:
            raise NotebookFormatError(notebook, "is not a valid notebook cell", cell_index=index)
        if not isinstance(cell.get("source"), str):
            raise NotebookFormatError(notebook, "has no source text", cell_index=index)
        if cell.cell_type == "code":
            cell.setdefault("outputs", [])
            cell.setdefault("execution_count", None)
        cell.setdefault("metadata", {})


def _plan(nb: NotebookNode, solution: SolutionNotebook) -> _Plan:
    """Match the submission's cells to the solution's and build the notebook to run."""
    cells = nb.cells
    by_id = {cell.get("id"): index for index, cell in enumerate(cells) if cell.get("id")}
    claimed: set[int] = set()

    def find(solution_cell: ExerciseCell) -> int | None:
        index = by_id.get(solution_cell.cell_id)
        if index is not None and index not in claimed:
            return index
        # Copying a cell in Jupyter gives it a new id but keeps its metadata.
        for index, cell in enumerate(cells):
            metadata = cell_metadata(cell)
            if (
                index not in claimed
                and metadata.get("exercise") == solution_cell.exercise
                and metadata.get("role") == solution_cell.role
            ):
                return index
        return None

    problems: dict[str, tuple[str, str]] = {}
    answer_index: dict[str, int] = {}
    tests_index: dict[str, int | None] = {}
    for exercise_id in solution.exercises:
        for solution_cell in solution.cells_of(exercise_id, "solution"):
            index = find(solution_cell)
            if index is None:
                problems.setdefault(exercise_id, _missing(solution, solution_cell, cells))
                continue
            claimed.add(index)
            renamed_to = cell_metadata(cells[index]).get("exercise")
            if renamed_to not in (None, exercise_id):
                problems.setdefault(
                    exercise_id,
                    (
                        "renamed",
                        f"cell {solution_cell.cell_id!r} belongs to exercise {renamed_to!r} in the "
                        f"submission, but the solution expects exercise {exercise_id!r}. Restore the "
                        "cell metadata, or copy the answer into a fresh copy of the lab",
                    ),
                )
            answer_index[solution_cell.cell_id] = index
        for solution_cell in solution.cells_of(exercise_id, "tests"):
            index = find(solution_cell)
            if index is not None:
                claimed.add(index)
            tests_index[solution_cell.cell_id] = index

    return _assemble(nb, solution, problems, answer_index, tests_index)


def _assemble(
    nb: NotebookNode,
    solution: SolutionNotebook,
    problems: dict[str, tuple[str, str]],
    answer_index: dict[str, int],
    tests_index: dict[str, int | None],
) -> _Plan:
    cells = nb.cells
    matched_tests = {index: cell_id for cell_id, index in tests_index.items() if index is not None}
    # A deleted tests cell is restored right after the last answer cell of its exercise.
    restore_after: dict[int, list[ExerciseCell]] = {}
    for exercise_id in solution.exercises:
        if exercise_id in problems:
            continue
        last_answer = max(answer_index[c.cell_id] for c in solution.cells_of(exercise_id, "solution"))
        for solution_cell in solution.cells_of(exercise_id, "tests"):
            if tests_index[solution_cell.cell_id] is None:
                restore_after.setdefault(last_answer, []).append(solution_cell)

    plan = _Plan(nb=copy.deepcopy(nb))
    plan.nb.cells = []
    plan.problems = problems
    for exercise_id in solution.exercises:
        plan.solution_cells[exercise_id] = []
        plan.tests_cells[exercise_id] = []
    solution_cell_of = {c.cell_id: c for c in solution.cells}
    answer_owner = {index: cell_id for cell_id, index in answer_index.items()}

    def append_tests(solution_cell: ExerciseCell) -> None:
        plan.nb.cells.append(_clean(copy.deepcopy(solution.nb.cells[solution_cell.index])))
        position = len(plan.nb.cells) - 1
        if solution_cell.exercise in problems:
            plan.skip.add(position)
        plan.tests_cells[solution_cell.exercise].append(position)

    for index, cell in enumerate(cells):
        if index in matched_tests:
            append_tests(solution_cell_of[matched_tests[index]])
        elif cell_metadata(cell).get("role") == "tests":
            # A tests cell the solution does not know: tests come only from the solution.
            continue
        else:
            plan.nb.cells.append(_clean(copy.deepcopy(cell)))
            if index in answer_owner:
                exercise_id = solution_cell_of[answer_owner[index]].exercise
                plan.solution_cells[exercise_id].append(len(plan.nb.cells) - 1)
        for solution_cell in restore_after.get(index, []):
            append_tests(solution_cell)
    return plan


def _missing(solution: SolutionNotebook, solution_cell: ExerciseCell, cells: list) -> tuple[str, str]:
    unknown = sorted(
        {
            str(cell_metadata(cell).get("exercise"))
            for cell in cells
            if cell_metadata(cell).get("exercise") not in (None, *solution.exercises)
        }
    )
    message = (
        f"the answer cell of exercise {solution_cell.exercise!r} (cell id {solution_cell.cell_id!r}) "
        "is missing from the submission"
    )
    if unknown:
        message += f". The submission has cells for unknown exercises {unknown}, so one may have been renamed"
        return "renamed", message
    return "missing", message


def _clean(cell: NotebookNode) -> NotebookNode:
    if cell.get("cell_type") == "code":
        cell.outputs = []
        cell.execution_count = None
    return cell


def _classify(answer_runs: list[CellRun | None], tests_runs: list[CellRun | None]) -> tuple[str, str]:
    """Turn the runs of an exercise's answer and tests cells into a status and message."""
    runs = [run for run in answer_runs + tests_runs if run is not None]
    for status in ("kernel died", "timed out", "not run"):
        for run in runs:
            if run.status == status:
                return status, run.detail

    if any(run is None for run in tests_runs):
        return "not run", "a tests cell of this exercise did not run"
    answer_error = next((run for run in answer_runs if run is not None and run.status == "error"), None)
    tests_error = next((run for run in tests_runs if run is not None and run.status == "error"), None)
    if tests_error is None:
        if answer_error is not None:
            return "passed", f"the answer cell raised {_error_text(answer_error)}, but the tests passed"
        return "passed", ""

    if tests_error.ename in _NOT_ATTEMPTED or (
        answer_error is not None and answer_error.ename == "NotImplementedError"
    ):
        return "not attempted", "the answer still raises NotImplementedError"
    message = f"the tests raised {_error_text(tests_error)}"
    if answer_error is not None:
        message = f"the answer cell raised {_error_text(answer_error)}, then {message}"
    if tests_error.ename == "CheckTimedOut":
        return "timed out", message
    if tests_error.ename in _FAILED:
        return "failed", message
    return "error", message


def _error_text(run: CellRun) -> str:
    return f"{run.ename}: {run.evalue}" if run.evalue else run.ename


def _shorten(message: str) -> str:
    single_line = re.sub(r"\s*\n\s*", " | ", message.strip())
    if len(single_line) <= MAX_MESSAGE_CHARS:
        return single_line
    return single_line[: MAX_MESSAGE_CHARS - 3] + "..."


def _score_all(
    notebook: Path, solution: SolutionNotebook | None, status: str, message: str
) -> SubmissionScore:
    """Score every exercise of the matched solution 0 with the same status and message."""
    learner = learner_id(notebook, solution.name if solution else None)
    if solution is None:
        exercises = [ExerciseScore("", "", 0, 0, status, _shorten(message))]
        return SubmissionScore(learner=learner, notebook=notebook, solution=None, exercises=exercises)
    exercises = [
        ExerciseScore(exercise.id, exercise.title, 0, exercise.points, status, _shorten(message))
        for exercise in solution.exercises.values()
    ]
    return SubmissionScore(learner=learner, notebook=notebook, solution=solution.path, exercises=exercises)


def _grader_error(
    notebook: Path, solutions: dict[str, SolutionNotebook], error: Exception
) -> SubmissionScore:
    solution = match_solution(notebook, None, solutions)
    message = f"the grader failed on this submission with {type(error).__name__}: {error}"
    return _score_all(notebook, solution, "grader error", message)
