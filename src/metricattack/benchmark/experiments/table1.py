"""Table 1: clean accuracy of every model (and the chance level of the test split)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..paper_numbers import paper_model, paper_values, table1
from ..schema import Results, Table1Row
from ..tables import Table, fmt
from .base import Experiment

if TYPE_CHECKING:
    from ..context import RunContext


class Table1(Experiment):
    name = "table1"
    title = "Table 1 — clean accuracy of the models"

    def compute(self, ctx: RunContext) -> list[Table1Row]:
        return [
            Table1Row(model=m.name, description=m.description, metric="euclidean", clean=ctx.evaluate(m.name), test_only=m.test_only)
            for m in ctx.cfg.models
        ]

    def tables(self, res: Results) -> list[Table]:
        if res.table1 is None:
            return []
        rows = [
            [
                r.model,
                r.description + (" (test only)" if r.test_only and not _says_test_only(r.description) else ""),
                fmt(r.clean.rank1),
                fmt(r.clean.rank5),
                fmt(r.clean.rank10),
                fmt(r.clean.mAP),
            ]
            for r in res.table1
        ]
        chance = res.dataset.chance
        if chance is not None:
            rows.append(
                ["chance", "a random ranking (expected)", fmt(chance.rank1), fmt(chance.rank5), fmt(chance.rank10), fmt(chance.mAP)]
            )
        table = Table(
            "table1",
            "Table 1",
            f"Clean accuracy of every model on {res.dataset.name} "
            f"({res.table1[0].metric if res.table1 else ''} distance, AP convention "
            f"'{res.provenance.ap_convention}')"
            + (
                "; test-only models are tested on every adversarial gallery, never attacked."
                if any(r.test_only for r in res.table1)
                else "."
            ),
            ["Model", "Backbone / loss", "Rank-1", "Rank-5", "Rank-10", "mAP"],
            rows,
            heading=self.title,
            text_columns=2,
        )
        values = paper_values(res.dataset.name, res.provenance.ap_convention)
        cells: dict[tuple[int, int], float | str] = {}
        if values is not None:
            paper = table1(values.dataset)
            for i, r in enumerate(res.table1):
                if (m := paper_model(r.model)) is not None:
                    cells |= {(i, 2): paper[m]["rank1"], (i, 5): paper[m]["mAP"]}
        table.add_paper(values, "Table 1", cells)
        return [table]


def _says_test_only(description: str) -> bool:
    """Whether a model's description already says it is test-only (then the table does not repeat it)."""
    return re.search(r"test[ -]only", description, re.IGNORECASE) is not None


EXPERIMENT = Table1()
