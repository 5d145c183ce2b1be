"""Plain-text and HTML tables for the reports that notebooks print."""

from __future__ import annotations

import html
from collections.abc import Sequence

MAX_CELL_CHARS = 90


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_cell_chars: int = MAX_CELL_CHARS) -> str:
    """Format rows as left-aligned columns under a header line; long cells are cut with ``...``."""
    cells = [[_clip(str(value), max_cell_chars) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(value)) for width, value in zip(widths, row)]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for row in cells:
        lines.append("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, row_colours: Sequence[str] | None = None) -> str:
    """Format rows as an HTML table; ``row_colours`` sets each row's text colour."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        style = f" style='color:{row_colours[index]}'" if row_colours else ""
        tds = "".join(f"<td style='text-align:left'>{html.escape(str(value))}</td>" for value in row)
        body.append(f"<tr{style}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
