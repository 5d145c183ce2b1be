"""The ``### BEGIN SOLUTION`` / ``### BEGIN HIDDEN TESTS`` markers in cell sources.

A marker is a whole line that reads exactly as one of the four constants below,
apart from the indentation before it and the spaces after it. The markers follow
the nbgrader convention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN_TESTS = "### BEGIN HIDDEN TESTS"
END_HIDDEN_TESTS = "### END HIDDEN TESTS"

BlockKind = Literal["solution", "hidden tests"]

_BEGIN = {BEGIN_SOLUTION: "solution", BEGIN_HIDDEN_TESTS: "hidden tests"}
_END = {END_SOLUTION: "solution", END_HIDDEN_TESTS: "hidden tests"}
_BEGIN_OF = {"solution": BEGIN_SOLUTION, "hidden tests": BEGIN_HIDDEN_TESTS}
_END_OF = {"solution": END_SOLUTION, "hidden tests": END_HIDDEN_TESTS}

# Lines that look like an attempt at a marker: a comment that starts with an
# upper-case BEGIN or END, or a ``###`` comment that starts with begin/end in any
# case. Such a line must be an exact marker, so a typo stops the build instead
# of leaking an answer into the learner's copy.
_MARKER_LIKE = re.compile(r"^\s*#+\s*(BEGIN|END)\b|^\s*###\s*(?i:begin|end)\b")


class MarkerError(ValueError):
    """A marker problem at a 1-based line of one cell's source."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


@dataclass(frozen=True)
class MarkedBlock:
    """One BEGIN/END pair: 1-based line numbers of both markers and the BEGIN line's indentation."""

    kind: BlockKind
    begin_line: int
    end_line: int
    indent: str


def find_blocks(source: str) -> list[MarkedBlock]:
    """Parse the marked blocks of a cell source.

    Raises MarkerError for a misspelled marker, an END without its BEGIN, a BEGIN
    inside an open block, or a block that is never closed.
    """
    blocks: list[MarkedBlock] = []
    open_kind: BlockKind | None = None
    open_line = 0
    open_indent = ""

    for number, line in enumerate(source.splitlines(), start=1):
        text = line.strip()
        if not _MARKER_LIKE.match(line):
            continue

        if text in _BEGIN:
            kind = _BEGIN[text]
            if open_kind is not None:
                raise MarkerError(
                    number,
                    f"{text!r} is inside the block opened by {_BEGIN_OF[open_kind]!r} on line "
                    f"{open_line}. Blocks cannot be nested, so add {_END_OF[open_kind]!r} first.",
                )
            open_kind, open_line = kind, number
            open_indent = line[: len(line) - len(line.lstrip())]
            continue

        if text in _END:
            kind = _END[text]
            if open_kind is None:
                raise MarkerError(
                    number,
                    f"{text!r} has no matching {_BEGIN_OF[kind]!r} above it. "
                    "Add the BEGIN marker or remove this line.",
                )
            if open_kind != kind:
                raise MarkerError(
                    number,
                    f"{text!r} cannot close the block opened by {_BEGIN_OF[open_kind]!r} on line "
                    f"{open_line}. Close it with {_END_OF[open_kind]!r}.",
                )
            blocks.append(MarkedBlock(kind, open_line, number, open_indent))
            open_kind = None
            continue

        raise MarkerError(
            number,
            f"{text!r} looks like a marker but is not one. Valid markers are "
            f"{BEGIN_SOLUTION!r}, {END_SOLUTION!r}, {BEGIN_HIDDEN_TESTS!r} and "
            f"{END_HIDDEN_TESTS!r}. An ordinary comment must not start with BEGIN or END.",
        )

    if open_kind is not None:
        raise MarkerError(
            open_line,
            f"{_BEGIN_OF[open_kind]!r} is never closed. Add {_END_OF[open_kind]!r} after the block.",
        )
    return blocks


def stub_lines(indent: str, exercise_id: str) -> list[str]:
    """Return the lines that replace an answer in the learner's copy."""
    message = f"Replace this line with your answer to exercise {exercise_id!r}."
    return [
        f"{indent}# YOUR CODE HERE\n",
        f"{indent}raise NotImplementedError({message!r})\n",
    ]


def replace_blocks(source: str, blocks: list[MarkedBlock], exercise_id: str) -> str:
    """Return ``source`` with solution blocks stubbed and hidden-test blocks removed.

    The marker lines go too. Lines outside the blocks are kept as they are, and
    trailing blank lines are dropped.
    """
    lines = source.splitlines(keepends=True)
    starts = {block.begin_line: block for block in blocks}
    output: list[str] = []
    skip_until = 0

    for number, line in enumerate(lines, start=1):
        if number <= skip_until:
            continue
        block = starts.get(number)
        if block is None:
            output.append(line if line.endswith("\n") else line + "\n")
            continue
        if block.kind == "solution":
            output.extend(stub_lines(block.indent, exercise_id))
        skip_until = block.end_line

    return re.sub(r"\s+\Z", "", "".join(output))
