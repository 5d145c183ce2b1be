"""The error raised for a solution notebook that cannot be turned into a lab."""

from __future__ import annotations

from pathlib import Path


class NotebookFormatError(ValueError):
    """A solution notebook breaks the authoring rules; the message names the place to fix.

    ``cell_index`` is 0-based, as in ``nb.cells``. ``line`` is 1-based within the cell source.
    """

    def __init__(
        self,
        path: Path | str,
        message: str,
        *,
        cell_index: int | None = None,
        cell_id: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.message = message
        self.cell_index = cell_index
        self.cell_id = cell_id
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        place = str(self.path)
        if self.cell_index is not None:
            place += f", cell {self.cell_index}"
            if self.cell_id:
                place += f" (id {self.cell_id!r})"
        if self.line is not None:
            place += f", line {self.line}"
        return f"{place}: {self.message}"

    def at_cell(self, path: Path | str, cell_index: int, cell_id: str | None) -> NotebookFormatError:
        """Return a copy of this error located in a notebook cell."""
        return NotebookFormatError(path, self.message, cell_index=cell_index, cell_id=cell_id, line=self.line)
