"""``serving-lab build-labs`` and ``serving-lab grade``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab_support.grading.options import DEFAULT_CELL_TIMEOUT_S, DEFAULT_NOTEBOOK_TIMEOUT_S, GradeOptions

# Statuses that mean the grading itself went wrong, not the learner's work.
GRADER_PROBLEMS = {"grader error", "no solution"}


def add_commands(commands) -> None:
    """Register the grading commands on the ``serving-lab`` subparsers."""
    build = commands.add_parser(
        "build-labs",
        help="write the learner notebooks in labs/ from solutions/",
        description=(
            "Write one learner notebook per solution notebook: answers become stubs that raise "
            "NotImplementedError, hidden tests are removed, outputs are cleared. Files that "
            "would not change are left alone."
        ),
    )
    build.add_argument(
        "--solutions",
        type=Path,
        default=Path("solutions"),
        metavar="DIR",
        help="folder of solution notebooks (default: solutions)",
    )
    build.add_argument(
        "--labs",
        type=Path,
        default=Path("labs"),
        metavar="DIR",
        help="folder to write the learner notebooks to (default: labs)",
    )
    build.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit with status 1 and list the stale notebooks when the labs folder "
        "differs from what a build would write",
    )
    build.set_defaults(handler=run_build_labs)

    grade = commands.add_parser(
        "grade",
        help="grade submitted notebooks and export the scores",
        description=(
            "Run each submitted notebook on a fresh kernel with the hidden tests restored from "
            "its solution notebook, and score each exercise. PATH is a notebook or a folder, "
            "searched recursively. The learner id is the notebook's folder name when the file "
            "keeps the lab's name (alice/01_streaming.ipynb), otherwise the file stem "
            "(alice.ipynb). Submissions run in their own folder with your user's permissions, "
            "so grade untrusted work inside a container or virtual machine."
        ),
    )
    grade.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="submitted notebook or folder")
    grade.add_argument(
        "--solutions",
        type=Path,
        default=Path("solutions"),
        metavar="DIR",
        help="folder of solution notebooks (default: solutions)",
    )
    grade.add_argument("--json", type=Path, metavar="FILE", help="write the scores as JSON to FILE")
    grade.add_argument(
        "--csv", type=Path, metavar="FILE", help="write one CSV row per learner and exercise to FILE"
    )
    grade.add_argument(
        "--notebook-timeout",
        type=_positive_seconds,
        default=DEFAULT_NOTEBOOK_TIMEOUT_S,
        metavar="S",
        help=f"maximum seconds for one whole submission (default: {DEFAULT_NOTEBOOK_TIMEOUT_S:g})",
    )
    grade.add_argument(
        "--cell-timeout",
        type=_positive_seconds,
        default=DEFAULT_CELL_TIMEOUT_S,
        metavar="S",
        help="maximum seconds for one cell; a slower cell is interrupted "
        f"(default: {DEFAULT_CELL_TIMEOUT_S:g})",
    )
    grade.set_defaults(handler=run_grade)


def run_build_labs(args: argparse.Namespace) -> int:
    """Build or check the labs folder; return 0 when it is up to date afterwards, else 1."""
    from lab_support.grading.builder import build_command, build_labs

    try:
        result = build_labs(args.solutions, args.labs, check=args.check)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    if result.errors:
        for error in result.errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"No lab notebooks were written because of {len(result.errors)} error(s).", file=sys.stderr)
        return 1

    for path in result.written:
        print(f"wrote {path}")
    for path in result.removed:
        print(f"removed {path}, because its solution notebook is gone")
    if result.stale:
        label = "Stale lab notebooks" if args.check else "Lab notebooks that need attention"
        print(f"{label}:", file=sys.stderr)
        for line in result.stale:
            print(f"  {line}", file=sys.stderr)
        if args.check:
            print(f"Run: {build_command(args.solutions, args.labs)}", file=sys.stderr)
        return 1

    if not result.written and not result.removed:
        print(f"{args.labs} is up to date with {args.solutions}")
    return 0


def run_grade(args: argparse.Namespace) -> int:
    """Grade the submissions; return 1 when a solution or a submission could not be graded, else 0."""
    from lab_support.grading.errors import NotebookFormatError
    from lab_support.grading.grader import grade_paths, load_solutions
    from lab_support.grading.report import print_table, write_csv, write_json

    try:
        solutions = load_solutions(args.solutions)
    except (FileNotFoundError, NotebookFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    options = GradeOptions(cell_timeout_s=args.cell_timeout, notebook_timeout_s=args.notebook_timeout)
    try:
        scores = grade_paths(args.paths, solutions, options)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not scores:
        print(f"error: no notebooks (*.ipynb) found in {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1

    print_table(scores, sys.stdout)
    if args.json:
        write_json(scores, args.json)
        print(f"wrote {args.json}")
    if args.csv:
        write_csv(scores, args.csv)
        print(f"wrote {args.csv}")
    problems = any(e.status in GRADER_PROBLEMS for s in scores for e in s.exercises)
    return 1 if problems else 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"seconds must be greater than 0, got {text!r}")
    return value
