"""A rendered table (Markdown, CSV, and the report's HTML) and the number format of the paper.

Experiments (:mod:`.experiments`) build their tables as :class:`Table` objects from
results.json. Markdown marks white-box cells with ``†`` and the worst cell of each column in
**bold** (the paper shades / bolds them); CSV holds the plain numbers.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..attacks.spec import METHODS
from ..io import atomic_write_text


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

    def markdown(self) -> str:
        lines = [
            f"**{self.title}.** {self.caption}",
            "",
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join("---" for _ in self.header) + "|",
        ]
        for i, row in enumerate(self.rows):
            cells = []
            for j, text in enumerate(row):
                if (i, j) in self.white_box:
                    text = f"{text}†"
                if (i, j) in self.bold:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
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
