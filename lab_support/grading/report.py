"""Score tables for the terminal, and JSON and CSV exports of grading results."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from lab_support.grading.builder import write_atomically
from lab_support.grading.grader import SubmissionScore

CSV_COLUMNS = ("learner", "notebook", "exercise", "points", "max_points", "status", "message")


def number(value: float) -> int | float:
    """Return whole numbers as int, so that 2.0 points print and export as 2."""
    return int(value) if float(value).is_integer() else value


def rows(scores: Iterable[SubmissionScore]) -> list[dict[str, Any]]:
    """Flatten scores into one row per learner and exercise, with the CSV_COLUMNS keys."""
    flat = []
    for submission in scores:
        for exercise in submission.exercises:
            flat.append(
                {
                    "learner": submission.learner,
                    "notebook": str(submission.notebook),
                    "exercise": exercise.exercise,
                    "points": number(exercise.points),
                    "max_points": number(exercise.max_points),
                    "status": exercise.status,
                    "message": exercise.message,
                }
            )
    return flat


def to_json(scores: Iterable[SubmissionScore]) -> str:
    """Serialise scores as JSON: a list of submissions, each with its exercises and totals."""
    submissions = []
    for submission in scores:
        submissions.append(
            {
                "learner": submission.learner,
                "notebook": str(submission.notebook),
                "solution": str(submission.solution) if submission.solution else None,
                "points": number(submission.points),
                "max_points": number(submission.max_points),
                "exercises": [
                    {
                        "exercise": exercise.exercise,
                        "title": exercise.title,
                        "points": number(exercise.points),
                        "max_points": number(exercise.max_points),
                        "status": exercise.status,
                        "message": exercise.message,
                    }
                    for exercise in submission.exercises
                ],
            }
        )
    return json.dumps({"submissions": submissions}, indent=2, ensure_ascii=False) + "\n"


def to_csv(scores: Iterable[SubmissionScore]) -> str:
    """Serialise scores as CSV with a header row and one row per learner and exercise."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(scores))
    return buffer.getvalue()


def write_json(scores: list[SubmissionScore], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, to_json(scores))


def write_csv(scores: list[SubmissionScore], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, to_csv(scores))


def print_table(scores: list[SubmissionScore], out: TextIO) -> None:
    """Print one score table per solution notebook, then the reason for every lost point."""
    groups: dict[str, list[SubmissionScore]] = {}
    for submission in scores:
        groups.setdefault(str(submission.solution or "unmatched"), []).append(submission)

    for solution, submissions in groups.items():
        exercise_ids = list(dict.fromkeys(e.exercise for s in submissions for e in s.exercises))
        header = ["learner", "notebook", *(exercise_id or "-" for exercise_id in exercise_ids), "total"]
        table = [header]
        for submission in submissions:
            by_id = {e.exercise: e for e in submission.exercises}
            row = [submission.learner, submission.notebook.name]
            for exercise_id in exercise_ids:
                score = by_id.get(exercise_id)
                row.append(f"{number(score.points)}/{number(score.max_points)}" if score else "-")
            row.append(f"{number(submission.points)}/{number(submission.max_points)}")
            table.append(row)

        print(f"Solution: {solution}", file=out)
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            print(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
                file=out,
            )
        print(file=out)

    details = [
        (submission, exercise)
        for submission in scores
        for exercise in submission.exercises
        if exercise.status != "passed"
    ]
    if details:
        print("Lost points:", file=out)
        for submission, exercise in details:
            label = f"{submission.learner} {submission.notebook.name} {exercise.exercise}".rstrip()
            reason = f" ({exercise.message})" if exercise.message else ""
            print(f"  {label}: {exercise.status}{reason}", file=out)
