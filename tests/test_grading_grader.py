"""Tests for ``serving-lab grade`` on real kernels: scores, broken submissions, time limits, exports.

One module fixture grades a folder of submissions, each broken in its own way,
in a single run, so the kernels start once per submission. The example lab of
``lab_support.grading.example`` is the lab under test.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import shutil
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import nbformat
import pytest

from lab_support.grading import grader
from lab_support.grading.builder import build_labs
from lab_support.grading.cli import add_commands
from lab_support.grading.example import solution_notebook
from lab_support.grading.grader import grade_paths, load_solutions
from lab_support.grading.options import GradeOptions
from lab_support.grading.runner import NotebookRunner

pytestmark = pytest.mark.slow

NAME = "01_example.ipynb"
# Loose enough for a kernel's first imports on a loaded 2-core machine.
CELL_TIMEOUT_S = 15
NOTEBOOK_TIMEOUT_S = 120

TTFT_OK = """\
def time_to_first_token(request_start, token_times):
    if not token_times:
        raise ValueError("no tokens")
    return token_times[0] - request_start"""

TPS_OK = """\
def tokens_per_second(token_times):
    if len(token_times) < 2:
        raise ValueError("too few tokens")
    return (len(token_times) - 1) / (token_times[-1] - token_times[0])"""

BATCH_OK = "max_batch_tokens = BATCH_SIZE * CONTEXT_SIZE"


def run_cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with redirect_stdout(out):
        code = args.handler(args)
    return code, out.getvalue()


def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("id") == cell_id)


def submission(lab: nbformat.NotebookNode, **answers: str) -> nbformat.NotebookNode:
    """Copy the lab with the answer cells given by id (underscores for dashes) replaced."""
    nb = copy.deepcopy(lab)
    for cell_id, source in answers.items():
        cell(nb, cell_id.replace("_", "-")).source = source
    return nb


def save(nb: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("course")
    solutions, labs = root / "solutions", root / "labs"
    save(solution_notebook(), solutions / NAME)
    assert build_labs(solutions, labs).errors == []
    return {"root": root, "solutions": solutions, "labs": labs}


@pytest.fixture(scope="module")
def lab(course) -> nbformat.NotebookNode:
    return nbformat.read(course["labs"] / NAME, as_version=4)


@pytest.fixture(scope="module")
def graded(course, lab) -> dict:
    subs = course["root"] / "submissions"
    for source, learner in ((course["solutions"] / NAME, "alice"), (course["labs"] / NAME, "untouched")):
        (subs / learner).mkdir(parents=True)
        shutil.copy(source, subs / learner / NAME)
    save(submission(lab, ttft_answer=TTFT_OK, batch_answer=BATCH_OK), subs / "partial.ipynb")

    looping_function = "def time_to_first_token(request_start, token_times):\n    while True:\n        pass"
    save(
        submission(
            lab,
            ttft_answer=looping_function,
            tps_answer="while True:\n    pass",
            batch_answer=BATCH_OK,
        ),
        subs / "looping.ipynb",
    )

    syntax = submission(
        lab, ttft_answer="def time_to_first_token(:\n    return 1", tps_answer=TPS_OK, batch_answer=BATCH_OK
    )
    cell(syntax, "tps-answer").metadata["serving_lab"]["exercise"] = "decode_rate"
    save(syntax, subs / "syntax.ipynb")

    save(
        submission(lab, ttft_answer=TTFT_OK, tps_answer="import os\nos._exit(1)", batch_answer=BATCH_OK),
        subs / "crash.ipynb",
    )

    (subs / "broken.ipynb").write_text("{not json", encoding="utf-8")

    missing = submission(lab, tps_answer=TPS_OK, batch_answer=BATCH_OK)
    missing.cells.remove(cell(missing, "ttft-answer"))
    missing.cells.remove(cell(missing, "batch-tests"))
    save(missing, subs / "missing.ipynb")

    tampered = submission(
        lab, ttft_answer="def time_to_first_token(request_start, token_times):\n    return 0.0"
    )
    cell(tampered, "ttft-tests").source = "pass"
    save(tampered, subs / "tampered.ipynb")

    save(
        submission(lab, setup="raise RuntimeError('setup broke')", ttft_answer=TTFT_OK),
        subs / "nosetup.ipynb",
    )

    copied = submission(lab, ttft_answer=TTFT_OK)
    cell(copied, "ttft-answer").id = "pasted-copy"
    save(copied, subs / "copied.ipynb")

    json_path, csv_path = course["root"] / "out" / "scores.json", course["root"] / "out" / "scores.csv"
    began = time.monotonic()
    code, out = run_cli(
        "grade",
        str(subs),
        str(course["solutions"] / NAME),
        "--solutions",
        str(course["solutions"]),
        "--json",
        str(json_path),
        "--csv",
        str(csv_path),
        "--cell-timeout",
        str(CELL_TIMEOUT_S),
        "--notebook-timeout",
        str(NOTEBOOK_TIMEOUT_S),
    )
    elapsed = time.monotonic() - began

    data = json.loads(json_path.read_text(encoding="utf-8"))
    by_learner = {s["learner"]: s for s in data["submissions"]}
    return {
        "code": code,
        "out": out,
        "elapsed": elapsed,
        "json": data,
        "by_learner": by_learner,
        "csv": csv_path.read_text(encoding="utf-8"),
    }


def exercises(graded: dict, learner: str) -> dict[str, dict]:
    return {e["exercise"]: e for e in graded["by_learner"][learner]["exercises"]}


def test_run_succeeds_for_all_learners(graded):
    assert graded["code"] == 0
    assert sorted(graded["by_learner"]) == [
        "alice",
        "broken",
        "copied",
        "crash",
        "looping",
        "missing",
        "nosetup",
        "partial",
        "solutions",
        "syntax",
        "tampered",
        "untouched",
    ]
    for learner in graded["by_learner"].values():
        for exercise in learner["exercises"]:
            assert exercise["status"] not in {"grader error", "no solution"}


def test_solution_full_marks(graded):
    for learner in ("solutions", "alice"):
        result = graded["by_learner"][learner]
        assert result["points"] == 5
        assert result["max_points"] == 5
        assert {e["status"] for e in result["exercises"]} == {"passed"}


def test_generated_lab_scores_zero(graded):
    result = graded["by_learner"]["untouched"]

    assert result["points"] == 0
    assert result["max_points"] == 5
    for exercise in result["exercises"]:
        assert exercise["status"] == "not attempted"
        assert "NotImplementedError" in exercise["message"]


def test_partial_scores_solved_exercises(graded):
    scores = exercises(graded, "partial")

    assert graded["by_learner"]["partial"]["points"] == 3
    assert scores["ttft"]["points"] == 2
    assert scores["max_batch_tokens"]["points"] == 1
    assert scores["tokens_per_second"]["points"] == 0
    assert scores["tokens_per_second"]["status"] == "not attempted"


def test_infinite_loops_time_out(graded):
    scores = exercises(graded, "looping")

    assert scores["ttft"]["status"] == "timed out"
    assert "timed out after 2 s" in scores["ttft"]["message"]
    assert scores["tokens_per_second"]["status"] == "timed out"
    assert f"cell time limit of {CELL_TIMEOUT_S} s" in scores["tokens_per_second"]["message"]
    assert scores["max_batch_tokens"]["status"] == "passed"
    assert graded["by_learner"]["looping"]["points"] == 1


def test_whole_run_time_bounded(graded):
    # Every submission runs at most one cell time limit per loop, never the notebook limit.
    assert graded["elapsed"] < NOTEBOOK_TIMEOUT_S


def test_syntax_error_and_renamed_exercise(graded):
    scores = exercises(graded, "syntax")

    assert scores["ttft"]["status"] == "error"
    assert "SyntaxError" in scores["ttft"]["message"]
    assert scores["tokens_per_second"]["status"] == "renamed"
    assert "'decode_rate'" in scores["tokens_per_second"]["message"]
    assert scores["tokens_per_second"]["points"] == 0
    assert scores["max_batch_tokens"]["points"] == 1


def test_kernel_crash_scored_and_run_continues(graded):
    scores = exercises(graded, "crash")

    assert scores["tokens_per_second"]["status"] == "kernel died"
    assert "the kernel died while running cell 'tps-answer'" in scores["tokens_per_second"]["message"]
    assert scores["ttft"]["status"] == "passed"
    assert scores["max_batch_tokens"]["status"] == "passed"
    assert graded["by_learner"]["crash"]["points"] == 3


def test_invalid_json_scores_zero(graded):
    result = graded["by_learner"]["broken"]

    assert result["points"] == 0
    assert result["max_points"] == 5
    for exercise in result["exercises"]:
        assert exercise["status"] == "invalid notebook"
        assert "is not valid notebook JSON" in exercise["message"]


def test_missing_answer_cell_scores_zero(graded):
    scores = exercises(graded, "missing")

    assert scores["ttft"]["status"] == "missing"
    assert "'ttft-answer'" in scores["ttft"]["message"]
    # The deleted tests cell was restored from the solution, so the answer still counts.
    assert scores["max_batch_tokens"]["status"] == "passed"
    assert graded["by_learner"]["missing"]["points"] == 3


def test_edited_tests_cell_restored(graded):
    scores = exercises(graded, "tampered")

    assert scores["ttft"]["status"] == "failed"
    assert "expected 0.25, got 0.0" in scores["ttft"]["message"]
    assert graded["by_learner"]["tampered"]["points"] == 0


def test_copied_cell_matched_by_exercise(graded):
    scores = exercises(graded, "copied")

    assert scores["ttft"]["status"] == "passed"
    assert graded["by_learner"]["copied"]["points"] == 2


def test_setup_failure_explains_errors(graded):
    scores = exercises(graded, "nosetup")

    assert scores["ttft"]["status"] == "error"
    assert "NameError: name 'check' is not defined" in scores["ttft"]["message"]
    assert (
        "Earlier in the notebook, cell 'setup' raised RuntimeError: setup broke" in scores["ttft"]["message"]
    )


def test_json_structure(graded, course):
    alice = graded["by_learner"]["alice"]

    assert alice["notebook"].endswith(f"alice/{NAME}")
    assert alice["solution"] == str(course["solutions"] / NAME)
    assert [e["exercise"] for e in alice["exercises"]] == ["ttft", "tokens_per_second", "max_batch_tokens"]
    assert alice["exercises"][0] == {
        "exercise": "ttft",
        "title": "Time to first token",
        "points": 2,
        "max_points": 2,
        "status": "passed",
        "message": "",
    }


def test_csv_rows(graded):
    rows = list(csv.DictReader(io.StringIO(graded["csv"])))

    assert graded["csv"].splitlines()[0] == "learner,notebook,exercise,points,max_points,status,message"
    assert len(rows) == 12 * 3
    partial = {r["exercise"]: r for r in rows if r["learner"] == "partial"}
    assert partial["ttft"]["points"] == "2"
    assert partial["ttft"]["max_points"] == "2"
    assert partial["ttft"]["status"] == "passed"
    assert partial["tokens_per_second"]["points"] == "0"
    assert partial["tokens_per_second"]["status"] == "not attempted"
    assert partial["ttft"]["notebook"].endswith("partial.ipynb")


def test_table_printed(graded):
    lines = graded["out"].splitlines()

    assert lines[1].split() == [
        "learner",
        "notebook",
        "ttft",
        "tokens_per_second",
        "max_batch_tokens",
        "total",
    ]
    assert any(line.split() == ["partial", "partial.ipynb", "2/2", "0/2", "1/1", "3/5"] for line in lines)
    assert (
        "  crash crash.ipynb tokens_per_second: kernel died (the kernel died while running cell 'tps-answer')"
        in lines
    )


def test_runner_uses_current_python_and_cwd(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.getcwd())")]

    runs = NotebookRunner(
        nb, tmp_path, cell_timeout_s=CELL_TIMEOUT_S, notebook_timeout_s=NOTEBOOK_TIMEOUT_S
    ).run()

    assert runs[0].status == "ok"
    printed = nb.cells[0].outputs[0]["text"].splitlines()
    assert printed == [sys.executable, str(tmp_path)]


def test_check_shows_html_in_kernel(lab, tmp_path):
    nb = submission(lab, ttft_answer="def time_to_first_token(start, times):\n    return times[-1] - start")

    NotebookRunner(nb, tmp_path, cell_timeout_s=CELL_TIMEOUT_S, notebook_timeout_s=NOTEBOOK_TIMEOUT_S).run()

    outputs = cell(nb, "ttft-tests").outputs
    shown = [o for o in outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1
    assert "ttft: 0 of 2 cases passed" in shown[0]["data"]["text/html"]
    assert "expected 0.25, got 0.5" in shown[0]["data"]["text/html"]
    assert shown[0]["data"]["text/plain"].startswith("ttft: 0 of 2 cases passed")
    assert not [o for o in outputs if o["output_type"] == "error"]


def test_notebook_time_limit(course, lab, tmp_path):
    path = save(
        submission(
            lab, ttft_answer=TTFT_OK, tps_answer="import time\ntime.sleep(300)", batch_answer=BATCH_OK
        ),
        tmp_path / "slow.ipynb",
    )
    options = GradeOptions(cell_timeout_s=200, notebook_timeout_s=20)

    began = time.monotonic()
    [result] = grade_paths([path], load_solutions(course["solutions"]), options)
    elapsed = time.monotonic() - began

    scores = {e.exercise: e for e in result.exercises}
    assert scores["ttft"].status == "passed"
    assert scores["tokens_per_second"].status == "timed out"
    assert "notebook time limit of 20 s" in scores["tokens_per_second"].message
    assert scores["max_batch_tokens"].status == "not run"
    assert elapsed < 60


def test_grader_bug_isolated(course, tmp_path, monkeypatch):
    (tmp_path / "a.ipynb").write_text("{not json", encoding="utf-8")
    (tmp_path / "b.ipynb").write_text("{not json", encoding="utf-8")
    real = grader.grade_notebook

    def flaky(notebook, solutions, options):
        if notebook.name == "a.ipynb":
            raise RuntimeError("boom")
        return real(notebook, solutions, options)

    monkeypatch.setattr(grader, "grade_notebook", flaky)
    results = grade_paths([tmp_path], load_solutions(course["solutions"]), GradeOptions())

    assert [r.learner for r in results] == ["a", "b"]
    assert {e.status for e in results[0].exercises} == {"grader error"}
    assert "RuntimeError: boom" in results[0].exercises[0].message
    assert {e.status for e in results[1].exercises} == {"invalid notebook"}


def test_unmatched_submission_reported(tmp_path, lab):
    solutions = tmp_path / "solutions"
    save(solution_notebook(), solutions / NAME)
    save(solution_notebook(), solutions / "02_other.ipynb")
    stray = copy.deepcopy(lab)
    del stray.metadata["serving_lab"]["lab"]
    save(stray, tmp_path / "subs" / "stray.ipynb")

    code, out = run_cli("grade", str(tmp_path / "subs"), "--solutions", str(solutions))

    assert code == 1
    assert "stray stray.ipynb: no solution (no solution notebook matches stray.ipynb" in out


def test_missing_path_reported(course, tmp_path, capsys):
    code, _ = run_cli("grade", str(tmp_path / "nowhere"), "--solutions", str(course["solutions"]))

    assert code == 1
    assert f"submission path {tmp_path / 'nowhere'} not found" in capsys.readouterr().err


def test_invalid_timeout_rejected(capsys):
    with pytest.raises(SystemExit):
        run_cli("grade", "x", "--cell-timeout", "0")

    assert "seconds must be greater than 0, got '0'" in capsys.readouterr().err
