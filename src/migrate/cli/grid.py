"""Rows of values for people: a table on a terminal, aligned plain text everywhere else.

No value is ever cut. On a terminal, a cell too wide for the screen folds onto the
next line instead of ending in ``…``; without a terminal (a pipe, a file, a CI log)
the rows are plain text at their full width — every column aligned with two spaces,
no box characters — so a log keeps every figure and ``grep`` finds any row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from rich.console import Console
from rich.table import Table

Justify = Literal["left", "right"]


@dataclass
class Grid:
    """A titled table of text cells; ``right`` names the columns aligned right (figures)."""

    columns: Sequence[str]
    title: str | None = None
    right: frozenset[str] = frozenset()
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(tuple(cells))

    def print(self, console: Console) -> None:
        if console.is_terminal:
            console.print(self._table())
            return
        for line in self.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)

    def lines(self) -> list[str]:
        """The plain text: the title, the header, then one line per row, columns aligned."""
        out = [self.title] if self.title else []
        everything = [tuple(self.columns), *self.rows]
        widths = [max(len(row[i]) for row in everything) for i in range(len(self.columns))]
        for row in everything:
            cells = [
                cell.rjust(width) if name in self.right else cell.ljust(width)
                for cell, width, name in zip(row, widths, self.columns, strict=True)
            ]
            out.append("  ".join(cells).rstrip())
        return out

    def _table(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        for name in self.columns:
            justify: Justify = "right" if name in self.right else "left"
            # fold: a cell wider than the screen goes on over more lines, never ends in "…"
            table.add_column(name, justify=justify, overflow="fold")
        for row in self.rows:
            table.add_row(*row)
        return table
