"""A rendered table (Markdown, CSV, and the report's HTML) and the number format of the paper.

Experiments (:mod:`.experiments`) build their tables as :class:`Table` objects from
results.json. Markdown and the report mark white-box cells with ``†`` (the report also shades
them, as the paper does) and the worst cell of each column in **bold**; the paper's own value of
a cell, when there is one (:mod:`.paper_numbers`), follows ours labelled "paper". CSV holds our
plain numbers.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..attacks.methods import METHODS
from ..io import atomic_write_text
from .paper_numbers import PaperValues


@dataclass
class Table:
    """A rendered table: ``rows[i][j]`` are display strings; ``bold``/``white_box`` hold (i, j)."""

    name: str
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    white_box: set[tuple[int, int]] = field(default_factory=set)
    heading: str = ""  # the report's section heading (default: the title)
    text_columns: int = 1  # leading columns holding text (left-aligned in the report)
    paper: dict[tuple[int, int], str] = field(default_factory=dict)  # (i, j) → the paper's value of that cell
    paper_header: dict[int, str] = field(default_factory=dict)  # j → the paper's value in column j's header
    paper_note: str = ""  # where the paper's values come from (shown above the table)
    paper_reference: bool = False  # the paper's values are for another dataset (a scale, not the same measurement)

    def add_paper(
        self, values: PaperValues | None, source: str, cells: dict[tuple[int, int], float | str], header: dict[int, float] | None = None
    ) -> None:
        """Show the paper's ``cells`` ((i, j) → value) and ``header`` values (j → value) from its
        ``source`` (e.g. "Table 2") beside ours, labelled by ``values`` (nothing when None or empty)."""
        if values is None or not cells:
            return
        self.paper = {k: v if isinstance(v, str) else fmt(v) for k, v in cells.items()}
        self.paper_header = {j: fmt(v) for j, v in (header or {}).items()}
        self.paper_note = values.note(source)
        self.paper_reference = values.reference

    def cell(self, i: int, j: int) -> str:
        """Cell (i, j) as Markdown: ours, † when white-box, bold when worst, then the paper's value."""
        text = self.rows[i][j] + ("†" if (i, j) in self.white_box else "")
        if (i, j) in self.bold:
            text = f"**{text}**"
        return text + (f" (paper {self.paper[(i, j)]})" if (i, j) in self.paper else "")

    def markdown(self) -> str:
        header = [h + (f" (paper {self.paper_header[j]})" if j in self.paper_header else "") for j, h in enumerate(self.header)]
        lines = [
            f"**{self.title}.** {self.caption}" + (f" {self.paper_note}" if self.paper_note else ""),
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(":---" if j < self.text_columns else "---:" for j in range(len(header))) + "|",
        ]
        for i, row in enumerate(self.rows):
            lines.append("| " + " | ".join(self.cell(i, j) for j in range(len(row))) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def write(self, folder: Path) -> None:
        """Write ``<name>.md`` and ``<name>.csv`` into ``folder``."""
        atomic_write_text(folder / f"{self.name}.md", self.markdown())
        atomic_write_text(folder / f"{self.name}.csv", self.csv())


def fmt(value: float | None) -> str:
    """Paper-style number: 4 significant digits (77.52, 7.054, 0.367); '–' for missing."""
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def method_label(method: str) -> str:
    """The paper's name of an attack method (``ifgsm`` → ``I-FGSM``; the registry's label)."""
    return (METHODS.get(method).label if method in METHODS else "") or method
