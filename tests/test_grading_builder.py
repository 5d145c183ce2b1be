"""Tests for ``serving-lab build-labs``: stubs, hidden tests, cleared outputs, determinism, bad markers."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import nbformat
import pytest

from lab_support.grading import builder
from lab_support.grading.builder import GENERATED_BY, build_labs
from lab_support.grading.cli import add_commands
from lab_support.grading.example import solution_notebook

NAME = "01_example.ipynb"


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def write_solution(folder: Path, nb: nbformat.NotebookNode | None = None, name: str = NAME) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb if nb is not None else solution_notebook(), path)
    return path


def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("id") == cell_id)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    write_solution(solutions)
    return solutions, labs


def build_and_read(solutions: Path, labs: Path) -> nbformat.NotebookNode:
    result = build_labs(solutions, labs)
    assert result.errors == []
    return nbformat.read(labs / NAME, as_version=4)


def test_stub_keeps_def_line_and_indentation(folders):
    lab = build_and_read(*folders)
    source = cell(lab, "ttft-answer").source
    lines = source.splitlines()

    assert lines[0] == "def time_to_first_token(request_start, token_times):"
    assert '    """Return the seconds from the request' in lines[1]
    assert lines[2] == "    # YOUR CODE HERE"
    assert lines[3].startswith("    raise NotImplementedError(")
    assert "'ttft'" in lines[3]
    assert len(lines) == 4
    assert "token_times[0]" not in source
    assert "###" not in source


def test_top_level_stub_is_tagged(folders):
    lab = build_and_read(*folders)
    answer = cell(lab, "batch-answer")

    assert answer.source.splitlines()[1].startswith("raise NotImplementedError(")
    assert "max_batch_tokens" in answer.source.splitlines()[1]
    assert "raises-exception" in answer.metadata["tags"]
    assert "raises-exception" in cell(lab, "batch-tests").metadata["tags"]
    assert "tags" not in cell(lab, "ttft-answer").metadata


def test_code_around_markers_is_kept(tmp_path):
    nb = solution_notebook()
    cell(nb, "ttft-answer").source = (
        "def time_to_first_token(request_start, token_times):\n"
        "    prepared = list(token_times)\n"
        "    ### BEGIN SOLUTION\n"
        "    return prepared[0] - request_start\n"
        "    ### END SOLUTION\n"
        "\n"
        "print('defined')"
    )
    write_solution(tmp_path / "solutions", nb)

    lab = build_and_read(tmp_path / "solutions", tmp_path / "labs")

    assert cell(lab, "ttft-answer").source.splitlines() == [
        "def time_to_first_token(request_start, token_times):",
        "    prepared = list(token_times)",
        "    # YOUR CODE HERE",
        "    raise NotImplementedError(\"Replace this line with your answer to exercise 'ttft'.\")",
        "",
        "print('defined')",
    ]


def test_hidden_tests_removed(folders):
    lab = build_and_read(*folders)

    assert cell(lab, "ttft-tests").source == 'check("ttft", time_to_first_token)'
    assert cell(lab, "tps-tests").source == 'check("tokens_per_second", tokens_per_second)'
    for lab_cell in lab.cells:
        assert "HIDDEN" not in lab_cell.source
        assert "SOLUTION" not in lab_cell.source
        assert "assert " not in lab_cell.source


def test_tests_cells_locked(folders):
    lab = build_and_read(*folders)
    tests = cell(lab, "ttft-tests")

    assert tests.metadata["editable"] is False
    assert tests.metadata["deletable"] is False
    assert "editable" not in cell(lab, "ttft-answer").metadata


def test_outputs_and_counts_cleared(tmp_path):
    nb = solution_notebook()
    for index, code_cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        code_cell.execution_count = index + 1
        code_cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
        code_cell.metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00Z"}
    write_solution(tmp_path / "solutions", nb)

    lab = build_and_read(tmp_path / "solutions", tmp_path / "labs")

    for lab_cell in lab.cells:
        if lab_cell.cell_type == "code":
            assert lab_cell.outputs == []
            assert lab_cell.execution_count is None
        assert "execution" not in lab_cell.metadata


def test_ids_and_exercise_metadata_kept(folders):
    solutions, labs = folders
    solution = nbformat.read(solutions / NAME, as_version=4)
    lab = build_and_read(solutions, labs)

    assert [c.id for c in lab.cells] == [c.id for c in solution.cells]
    for lab_cell, solution_cell in zip(lab.cells, solution.cells, strict=True):
        assert lab_cell.metadata.get("serving_lab") == solution_cell.metadata.get("serving_lab")
    assert lab.metadata["serving_lab"]["exercises"] == solution.metadata["serving_lab"]["exercises"]
    assert lab.metadata["serving_lab"]["lab"] == "01_example"
    assert lab.metadata["serving_lab"]["generated_by"] == GENERATED_BY
    nbformat.validate(lab)


def test_second_build_byte_identical(folders):
    solutions, labs = folders
    first = build_labs(solutions, labs)
    content = (labs / NAME).read_bytes()
    mtime = (labs / NAME).stat().st_mtime_ns

    second = build_labs(solutions, labs)

    assert first.written == [labs / NAME]
    assert second.written == []
    assert second.unchanged == [labs / NAME]
    assert (labs / NAME).read_bytes() == content
    assert (labs / NAME).stat().st_mtime_ns == mtime
    assert sorted(p.name for p in labs.iterdir()) == [NAME]


def test_write_failure_keeps_old_file(folders, monkeypatch):
    solutions, labs = folders
    build_labs(solutions, labs)
    old = (labs / NAME).read_bytes()
    nb = solution_notebook()
    nb.cells[0].source = "# Changed title"
    write_solution(solutions, nb)

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(builder.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        build_labs(solutions, labs)

    assert (labs / NAME).read_bytes() == old
    assert sorted(p.name for p in labs.iterdir()) == [NAME]


def test_check_passes_when_up_to_date(folders, capsys):
    solutions, labs = folders
    assert run_cli("build-labs", "--solutions", str(solutions), "--labs", str(labs)) == 0

    assert run_cli("build-labs", "--solutions", str(solutions), "--labs", str(labs), "--check") == 0
    assert "up to date" in capsys.readouterr().out


def test_check_lists_stale_and_command(folders, capsys):
    solutions, labs = folders
    build_labs(solutions, labs)
    before = (labs / NAME).read_bytes()
    nb = solution_notebook()
    nb.cells[0].source = "# A new title"
    write_solution(solutions, nb)
    write_solution(solutions, solution_notebook(), name="02_second.ipynb")
    capsys.readouterr()

    code = run_cli("build-labs", "--solutions", str(solutions), "--labs", str(labs), "--check")

    err = capsys.readouterr().err
    assert code == 1
    assert f"{labs / NAME} differs from its solution notebook" in err
    assert f"{labs / '02_second.ipynb'} is missing" in err
    assert f"serving-lab build-labs --solutions {solutions} --labs {labs}" in err
    assert (labs / NAME).read_bytes() == before
    assert not (labs / "02_second.ipynb").exists()


def test_orphan_generated_lab_removed(folders):
    solutions, labs = folders
    build_labs(solutions, labs)
    (labs / NAME).rename(labs / "09_old.ipynb")
    hand_written = nbformat.v4.new_notebook()
    nbformat.write(hand_written, labs / "notes.ipynb")

    checked = build_labs(solutions, labs, check=True)
    built = build_labs(solutions, labs)

    assert any("09_old.ipynb has no solution notebook and would be removed" in s for s in checked.stale)
    assert built.removed == [labs / "09_old.ipynb"]
    assert not (labs / "09_old.ipynb").exists()
    assert (labs / "notes.ipynb").exists()
    assert any("notes.ipynb has no solution notebook" in s for s in built.stale)


def answer_with(lines: list[str]) -> nbformat.NotebookNode:
    nb = solution_notebook()
    cell(nb, "ttft-answer").source = "\n".join(lines)
    return nb


BAD_MARKERS = {
    "misspelled": (
        ["def f():", "    ### BEGIN SOLUTON", "    return 1", "    ### END SOLUTION"],
        2,
        "'### BEGIN SOLUTON' looks like a marker but is not one",
    ),
    "end_without_begin": (
        ["def f():", "    return 1", "    ### END SOLUTION"],
        3,
        "'### END SOLUTION' has no matching '### BEGIN SOLUTION'",
    ),
    "nested_begin": (
        ["### BEGIN SOLUTION", "x = 1", "### BEGIN SOLUTION", "y = 2", "### END SOLUTION"],
        3,
        "is inside the block opened by '### BEGIN SOLUTION' on line 1",
    ),
    "never_closed": (
        ["x = 0", "### BEGIN SOLUTION", "x = 1"],
        2,
        "'### BEGIN SOLUTION' is never closed",
    ),
    "wrong_end": (
        ["### BEGIN SOLUTION", "x = 1", "### END HIDDEN TESTS"],
        3,
        "cannot close the block opened by '### BEGIN SOLUTION' on line 1",
    ),
    "lower_case": (
        ["### begin solution", "x = 1", "### END SOLUTION"],
        1,
        "looks like a marker but is not one",
    ),
    "hidden_in_answer": (
        ["### BEGIN HIDDEN TESTS", "assert True", "### END HIDDEN TESTS"],
        1,
        "is a solution cell and cannot contain hidden tests markers",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MARKERS))
def test_bad_marker_names_place(tmp_path, capsys, case):
    lines, line, message = BAD_MARKERS[case]
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    path = write_solution(solutions, answer_with(lines))

    code = run_cli("build-labs", "--solutions", str(solutions), "--labs", str(labs))

    err = capsys.readouterr().err
    assert code == 1
    assert f"{path}, cell 3 (id 'ttft-answer'), line {line}: " in err
    assert message in err
    assert "No lab notebooks were written" in err
    assert not labs.exists()


def test_bad_notebook_stops_whole_build(tmp_path):
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    write_solution(solutions)
    write_solution(solutions, answer_with(["### END SOLUTION"]), name="02_bad.ipynb")

    result = build_labs(solutions, labs)

    assert len(result.errors) == 1
    assert result.errors[0].path.name == "02_bad.ipynb"
    assert result.errors[0].cell_id == "ttft-answer"
    assert result.errors[0].line == 1
    assert not labs.exists()


def test_answer_cell_without_markers_rejected(tmp_path):
    path = write_solution(tmp_path / "solutions", answer_with(["def f():", "    return 1"]))

    result = build_labs(tmp_path / "solutions", tmp_path / "labs")

    assert len(result.errors) == 1
    assert str(result.errors[0]).startswith(f"{path}, cell 3 (id 'ttft-answer'): ")
    assert "without '### BEGIN SOLUTION'" in str(result.errors[0])


def test_markers_without_metadata_rejected(tmp_path):
    nb = solution_notebook()
    cell(nb, "setup").source += "\n### BEGIN SOLUTION\nsecret = 1\n### END SOLUTION"
    path = write_solution(tmp_path / "solutions", nb)

    result = build_labs(tmp_path / "solutions", tmp_path / "labs")

    assert len(result.errors) == 1
    error = str(result.errors[0])
    assert error.startswith(f"{path}, cell 1 (id 'setup'), line 8: ")
    assert "no 'serving_lab' cell metadata" in error


def test_ordinary_comments_allowed(tmp_path):
    nb = solution_notebook()
    cell(nb, "setup").source += "\n# end of setup\n### Helpers\n# Begin timing here"
    write_solution(tmp_path / "solutions", nb)

    result = build_labs(tmp_path / "solutions", tmp_path / "labs")

    assert result.errors == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda nb: cell(nb, "ttft-answer").metadata["serving_lab"].update(exercise="ttfb"),
            "belongs to exercise 'ttfb', which the notebook metadata does not declare",
        ),
        (
            lambda nb: cell(nb, "ttft-answer").metadata["serving_lab"].update(role="answer"),
            "has role 'answer'",
        ),
        (lambda nb: nb.cells.remove(cell(nb, "tps-tests")), "exercise 'tokens_per_second' has no tests cell"),
        (
            lambda nb: nb.metadata["serving_lab"]["exercises"]["ttft"].update(points=-1),
            "exercise 'ttft' has invalid points -1",
        ),
        (
            lambda nb: nb.metadata["serving_lab"]["exercises"]["ttft"].update(point=2),
            "exercise 'ttft' has unknown keys ['point']",
        ),
        (lambda nb: setattr(cell(nb, "tps-tests"), "id", "ttft-tests"), "has the same id as cell 4"),
    ],
    ids=["undeclared", "bad_role", "no_tests", "negative_points", "typo_key", "duplicate_id"],
)
def test_metadata_errors_reported(tmp_path, change, message):
    nb = solution_notebook()
    change(nb)
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    # Written as plain JSON, because nbformat.write rejects some of these notebooks itself.
    (solutions / NAME).write_text(json.dumps(nb, indent=1))

    result = build_labs(solutions, tmp_path / "labs")

    assert len(result.errors) == 1
    assert str(solutions / NAME) in str(result.errors[0])
    assert message in str(result.errors[0])


def test_missing_cell_ids_rejected(tmp_path):
    data = json.loads(nbformat.writes(solution_notebook()))
    data["nbformat_minor"] = 4
    for raw_cell in data["cells"]:
        del raw_cell["id"]
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    (solutions / NAME).write_text(json.dumps(data))

    result = build_labs(solutions, tmp_path / "labs")

    assert len(result.errors) == 1
    assert f"{solutions / NAME}, cell 0: has no cell id" in str(result.errors[0])


def test_invalid_json_solution_reported(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    (solutions / NAME).write_text("{not json")

    result = build_labs(solutions, tmp_path / "labs")

    assert len(result.errors) == 1
    assert "is not valid notebook JSON" in str(result.errors[0])


def test_notebook_without_exercises_copied(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('hi')", id="only")]
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    write_solution(tmp_path / "solutions", nb, name="00_intro.ipynb")

    result = build_labs(tmp_path / "solutions", tmp_path / "labs")

    lab = nbformat.read(tmp_path / "labs" / "00_intro.ipynb", as_version=4)
    assert result.errors == []
    assert lab.cells[0].source == "print('hi')"
    assert lab.cells[0].outputs == []


def test_missing_solutions_folder(tmp_path, capsys):
    code = run_cli("build-labs", "--solutions", str(tmp_path / "nope"), "--labs", str(tmp_path / "labs"))

    assert code == 1
    assert f"solutions folder {tmp_path / 'nope'} not found" in capsys.readouterr().err


def test_lab_file_mode_is_readable(folders):
    solutions, labs = folders
    build_labs(solutions, labs)

    assert os.stat(labs / NAME).st_mode & 0o644 == 0o644
