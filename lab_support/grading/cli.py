"""``serving-lab build-labs`` and ``serving-lab grade``."""

from __future__ import annotations


def add_commands(commands) -> None:
    """Register the grading commands on the ``serving-lab`` subparsers."""
    # TODO: build-labs and grade are not written yet.
