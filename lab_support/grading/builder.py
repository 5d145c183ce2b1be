"""Generate the learner notebooks in ``labs/`` from the notebooks in ``solutions/``.

The output depends only on the solution notebook, so building twice writes
byte-identical files, and ``--check`` can compare the files on disk with what a
build would write.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from lab_support.grading.errors import NotebookFormatError
from lab_support.grading.markers import replace_blocks
from lab_support.grading.notebook import METADATA_KEY, SolutionNotebook, load_solution, read_notebook

logger = logging.getLogger(__name__)

GENERATED_BY = "serving-lab build-labs"
RAISES_EXCEPTION_TAG = "raises-exception"

# Cell metadata that records a past run rather than authored content.
_RUN_METADATA_KEYS = ("execution", "ExecuteTime")


@dataclass
class BuildResult:
    """Outcome of a build: the labs written, unchanged or removed, and the stale labs and errors found.

    In check mode nothing is written or removed, and every lab that a build
    would change is listed in ``stale``.
    """

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    errors: list[NotebookFormatError] = field(default_factory=list)


def solution_paths(solutions_dir: Path) -> list[Path]:
    """Return the solution notebooks directly in ``solutions_dir``, sorted by name."""
    return sorted(p for p in solutions_dir.glob("*.ipynb") if p.is_file())


def render_lab(solution: SolutionNotebook) -> NotebookNode:
    """Return the learner's copy of a validated solution notebook."""
    lab = copy.deepcopy(solution.nb)
    top_level_stub: set[str] = set()

    for exercise_cell in solution.cells:
        cell = lab.cells[exercise_cell.index]
        blocks = list(exercise_cell.blocks)
        cell.source = replace_blocks(cell.source, blocks, exercise_cell.exercise)

        # A stub at column 0 raises when the cell runs, and the exercise's
        # variables stay undefined for its tests cell. Both cells are tagged so
        # that nbval and nbclient continue past the expected error.
        if exercise_cell.role == "solution" and any(b.indent == "" for b in blocks):
            top_level_stub.add(exercise_cell.exercise)

    for exercise_cell in solution.cells:
        cell = lab.cells[exercise_cell.index]
        if exercise_cell.exercise in top_level_stub:
            _add_tag(cell, RAISES_EXCEPTION_TAG)
        if exercise_cell.role == "tests":
            # JupyterLab honours these flags, so learners cannot delete or edit the tests by accident.
            cell.metadata["editable"] = False
            cell.metadata["deletable"] = False

    for cell in lab.cells:
        _clear_run_state(cell)

    lab.metadata.setdefault(METADATA_KEY, {})
    lab.metadata[METADATA_KEY]["lab"] = solution.name
    lab.metadata[METADATA_KEY]["generated_by"] = GENERATED_BY
    try:
        nbformat.validate(lab)
    except nbformat.ValidationError as error:
        raise NotebookFormatError(solution.path, f"is not a valid notebook: {error.message}") from error
    return lab


def notebook_text(nb: NotebookNode) -> str:
    """Serialise a notebook the way Jupyter saves it, ending with a newline."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old file or the new one, never a part."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as temp_file:
            temp_file.write(text)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def build_command(solutions_dir: Path, labs_dir: Path) -> str:
    """Return the shell command that rebuilds ``labs_dir`` from ``solutions_dir``."""
    return f"serving-lab build-labs --solutions {solutions_dir} --labs {labs_dir}"


def build_labs(solutions_dir: Path, labs_dir: Path, *, check: bool = False) -> BuildResult:
    """Write one lab notebook per solution notebook, or with ``check`` only list the stale ones.

    Nothing is written unless every solution notebook is valid. A lab whose
    solution notebook is gone is deleted when this builder generated it, and
    reported as stale otherwise.
    """
    result = BuildResult()
    if not solutions_dir.is_dir():
        raise FileNotFoundError(
            f"solutions folder {solutions_dir} not found. Pass --solutions with the folder "
            "that holds the solution notebooks."
        )

    rendered: dict[Path, str] = {}
    for solution_path in solution_paths(solutions_dir):
        try:
            solution = load_solution(solution_path)
            rendered[labs_dir / solution_path.name] = notebook_text(render_lab(solution))
        except NotebookFormatError as error:
            result.errors.append(error)
    if result.errors:
        return result

    for lab_path, text in rendered.items():
        current = lab_path.read_bytes() if lab_path.exists() else None
        if current == text.encode("utf-8"):
            result.unchanged.append(lab_path)
        elif check:
            reason = "is missing" if current is None else "differs from its solution notebook"
            result.stale.append(f"{lab_path} {reason}")
        else:
            labs_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(lab_path, text)
            result.written.append(lab_path)
            logger.info("wrote %s", lab_path)

    _handle_orphans(labs_dir, set(rendered), result, check=check)
    return result


def _handle_orphans(labs_dir: Path, expected: set[Path], result: BuildResult, *, check: bool) -> None:
    if not labs_dir.is_dir():
        return
    for lab_path in sorted(labs_dir.glob("*.ipynb")):
        if lab_path in expected:
            continue
        generated = _was_generated(lab_path)
        if generated and not check:
            lab_path.unlink()
            result.removed.append(lab_path)
            logger.info("removed %s because its solution notebook is gone", lab_path)
        elif generated:
            result.stale.append(f"{lab_path} has no solution notebook and would be removed")
        else:
            result.stale.append(
                f"{lab_path} has no solution notebook. Move it to the solutions folder "
                "with answer markers, or delete it"
            )


def _was_generated(lab_path: Path) -> bool:
    try:
        nb = read_notebook(lab_path)
    except NotebookFormatError:
        return False
    return nb.metadata.get(METADATA_KEY, {}).get("generated_by") == GENERATED_BY


def _add_tag(cell: NotebookNode, tag: str) -> None:
    tags = cell.metadata.setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def _clear_run_state(cell: NotebookNode) -> None:
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
    for key in _RUN_METADATA_KEYS:
        cell.metadata.pop(key, None)
