"""Exercise declarations in notebook metadata, read and validated in one place.

Notebook metadata::

    "serving_lab": {"exercises": {"ttft": {"points": 2, "title": "Time to first token"}}}

Cell metadata of a code cell that belongs to an exercise::

    "serving_lab": {"exercise": "ttft", "role": "solution"}   # or "role": "tests"
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nbformat
from nbformat import NotebookNode

from lab_support.grading.errors import NotebookFormatError
from lab_support.grading.ids import EXERCISE_ID
from lab_support.grading.markers import MarkedBlock, MarkerError, find_blocks

METADATA_KEY = "serving_lab"
ROLES = ("solution", "tests")
EXERCISE_KEYS = {"points", "title"}
CELL_KEYS = {"exercise", "role"}

Role = Literal["solution", "tests"]


@dataclass(frozen=True)
class Exercise:
    """One graded exercise as declared in the notebook metadata."""

    id: str
    points: float
    title: str


@dataclass(frozen=True)
class ExerciseCell:
    """A code cell that belongs to an exercise, with its marked blocks."""

    index: int
    cell_id: str
    exercise: str
    role: Role
    blocks: tuple[MarkedBlock, ...]


@dataclass
class SolutionNotebook:
    """A validated solution notebook: its exercises and the cells of each."""

    path: Path
    nb: NotebookNode
    exercises: dict[str, Exercise]
    cells: list[ExerciseCell]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def max_points(self) -> float:
        return sum(exercise.points for exercise in self.exercises.values())

    def cells_of(self, exercise_id: str, role: Role) -> list[ExerciseCell]:
        return [c for c in self.cells if c.exercise == exercise_id and c.role == role]


def read_notebook(path: Path, *, repair: bool = True) -> NotebookNode:
    """Read a notebook file as nbformat 4, raising NotebookFormatError if it is not one.

    With ``repair``, nbformat gives cells with a missing or duplicate id a new
    random id. Without it, ids stay as written, so the caller can reject them.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise NotebookFormatError(path, f"cannot be read: {error}") from error
    try:
        if repair:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                nb = nbformat.reads(text, as_version=4)
        else:
            nb = nbformat.convert(nbformat.reader.reads(text), 4)
    except (json.JSONDecodeError, nbformat.reader.NotJSONError) as error:
        raise NotebookFormatError(path, f"is not valid notebook JSON: {error}") from error
    except Exception as error:  # nbformat raises several unrelated types for malformed files
        raise NotebookFormatError(path, f"is not a readable notebook: {error}") from error
    if not isinstance(nb.get("cells"), list) or not isinstance(nb.get("metadata"), dict):
        raise NotebookFormatError(path, "has no 'cells' list or 'metadata' object, so it is not a notebook")
    return nb


def cell_metadata(cell: NotebookNode) -> dict[str, Any]:
    """Return the cell's ``serving_lab`` metadata, or an empty dict when it has none or it is malformed."""
    value = cell.get("metadata", {}).get(METADATA_KEY)
    return value if isinstance(value, dict) else {}


def load_solution(path: Path) -> SolutionNotebook:
    """Read and validate a solution notebook.

    Raises NotebookFormatError naming the notebook, and where it applies the
    cell index, cell id and line, for any broken authoring rule.
    """
    nb = read_notebook(path, repair=False)
    _validate_schema(path, nb)
    exercises = _read_exercises(path, nb)
    cells = _read_cells(path, nb, exercises)

    for exercise_id in exercises:
        for role in ROLES:
            if not any(c.exercise == exercise_id and c.role == role for c in cells):
                raise NotebookFormatError(
                    path,
                    f"exercise {exercise_id!r} has no {role} cell. Give a code cell the metadata "
                    f'"{METADATA_KEY}": {{"exercise": "{exercise_id}", "role": "{role}"}}.',
                )

    # Jupyter saves metadata with sorted keys, so the cells give the authored order.
    first_cell = {c.exercise: c.index for c in reversed(cells)}
    ordered = dict(sorted(exercises.items(), key=lambda item: first_cell[item[0]]))
    return SolutionNotebook(path=path, nb=nb, exercises=ordered, cells=cells)


def _validate_schema(path: Path, nb: NotebookNode) -> None:
    # Validation repairs missing and duplicate ids in place, so it runs on a copy
    # and _read_cells reports those ids instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            nbformat.validate(copy.deepcopy(nb))
        except nbformat.ValidationError as error:
            raise NotebookFormatError(path, f"is not a valid notebook: {error.message}") from error


def _read_exercises(path: Path, nb: NotebookNode) -> dict[str, Exercise]:
    # A notebook without exercises (an introduction, say) is valid, and its lab
    # is a copy with the outputs cleared. Markers in it are still rejected.
    lab_metadata = nb.metadata.get(METADATA_KEY, {})
    if not isinstance(lab_metadata, dict):
        raise NotebookFormatError(
            path, f'has invalid "{METADATA_KEY}" metadata {lab_metadata!r}. Use an object.'
        )
    declared = lab_metadata.get("exercises", {})
    if not isinstance(declared, dict):
        raise NotebookFormatError(
            path,
            f'has invalid "{METADATA_KEY}.exercises" metadata {declared!r}. Use an object such as '
            '{"<id>": {"points": 1, "title": "..."}}.',
        )

    exercises: dict[str, Exercise] = {}
    for exercise_id, spec in declared.items():
        if not EXERCISE_ID.match(exercise_id):
            raise NotebookFormatError(
                path,
                f"exercise id {exercise_id!r} is invalid. Use letters, digits, '_', '-' and '.', "
                "starting with a letter, digit or '_'.",
            )
        if not isinstance(spec, dict):
            raise NotebookFormatError(
                path, f"exercise {exercise_id!r} must map to an object with 'points', got {spec!r}"
            )
        unknown = set(spec) - EXERCISE_KEYS
        if unknown:
            raise NotebookFormatError(
                path,
                f"exercise {exercise_id!r} has unknown keys {sorted(unknown)}. "
                f"Allowed keys are {sorted(EXERCISE_KEYS)}.",
            )
        points = spec.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
            raise NotebookFormatError(
                path,
                f"exercise {exercise_id!r} has invalid points {points!r}. Give a number of 0 or more.",
            )
        title = spec.get("title", exercise_id)
        if not isinstance(title, str):
            raise NotebookFormatError(
                path, f"exercise {exercise_id!r} has a title that is not a string: {title!r}"
            )
        exercises[exercise_id] = Exercise(id=exercise_id, points=points, title=title)
    return exercises


def _read_cells(path: Path, nb: NotebookNode, exercises: dict[str, Exercise]) -> list[ExerciseCell]:
    cells: list[ExerciseCell] = []
    seen_ids: dict[str, int] = {}

    for index, cell in enumerate(nb.cells):
        cell_id = cell.get("id")
        if not cell_id:
            raise NotebookFormatError(
                path,
                "has no cell id. Save the notebook with JupyterLab 3 or later "
                "(nbformat 4.5), which gives every cell a stable id.",
                cell_index=index,
            )
        if cell_id in seen_ids:
            raise NotebookFormatError(
                path,
                f"has the same id as cell {seen_ids[cell_id]}. Give one of them a new id.",
                cell_index=index,
                cell_id=cell_id,
            )
        seen_ids[cell_id] = index

        try:
            blocks = tuple(find_blocks(cell.source))
        except MarkerError as error:
            raise NotebookFormatError(
                path, error.message, cell_index=index, cell_id=cell_id, line=error.line
            ) from error

        exercise_cell = _read_exercise_cell(path, index, cell, blocks, exercises)
        if exercise_cell is not None:
            cells.append(exercise_cell)
    return cells


def _read_exercise_cell(
    path: Path,
    index: int,
    cell: NotebookNode,
    blocks: tuple[MarkedBlock, ...],
    exercises: dict[str, Exercise],
) -> ExerciseCell | None:
    cell_id = cell.id
    raw = cell.get("metadata", {}).get(METADATA_KEY)

    def fail(message: str, line: int | None = None) -> NotebookFormatError:
        return NotebookFormatError(path, message, cell_index=index, cell_id=cell_id, line=line)

    if raw is None:
        if blocks:
            raise fail(
                f"has markers but no {METADATA_KEY!r} cell metadata, so the grader cannot tell "
                f'which exercise they belong to. Add "{METADATA_KEY}": '
                '{"exercise": "<id>", "role": "solution" or "tests"}.',
                line=blocks[0].begin_line,
            )
        return None

    if not isinstance(raw, dict):
        raise fail(f"{METADATA_KEY!r} cell metadata must be an object, got {raw!r}")
    unknown = set(raw) - CELL_KEYS
    if unknown:
        raise fail(
            f"{METADATA_KEY!r} cell metadata has unknown keys {sorted(unknown)}. "
            f"Allowed keys are {sorted(CELL_KEYS)}."
        )
    exercise_id, role = raw.get("exercise"), raw.get("role")
    if not isinstance(exercise_id, str) or exercise_id not in exercises:
        raise fail(
            f"belongs to exercise {exercise_id!r}, which the notebook metadata does not declare. "
            f"Declared exercises: {sorted(exercises)}."
        )
    if role not in ROLES:
        raise fail(f"has role {role!r}. Use 'solution' or 'tests'.")
    if cell.cell_type != "code":
        raise fail(f"is a {cell.cell_type} cell, but only code cells can be {role} cells.")

    expected_kind = "solution" if role == "solution" else "hidden tests"
    for block in blocks:
        if block.kind != expected_kind:
            raise fail(
                f"is a {role} cell and cannot contain {block.kind} markers. "
                f"Move the block to a {'tests' if role == 'solution' else 'solution'} cell.",
                line=block.begin_line,
            )
    if role == "solution" and not blocks:
        raise fail(
            "is a solution cell without '### BEGIN SOLUTION' / '### END SOLUTION', "
            "so the learner's copy would contain the answer. Mark the answer."
        )

    return ExerciseCell(index=index, cell_id=cell_id, exercise=exercise_id, role=role, blocks=blocks)
