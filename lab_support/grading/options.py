"""Time limits for grading, kept apart from the grader so that the CLI imports quickly."""

from __future__ import annotations

from dataclasses import dataclass

# Defaults leave room for a setup cell that starts a local model server.
DEFAULT_CELL_TIMEOUT_S = 300.0
DEFAULT_NOTEBOOK_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class GradeOptions:
    """Time limits for one submission, in seconds."""

    cell_timeout_s: float = DEFAULT_CELL_TIMEOUT_S
    notebook_timeout_s: float = DEFAULT_NOTEBOOK_TIMEOUT_S
