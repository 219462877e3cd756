"""Tables 2/3: white-box (diagonal) and black-box mAP of every model under every single-model attack."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..jobs import Needs, single
from ..schema import MatrixCell, MatrixRow, Results, Table2
from ..tables import Table, fmt, method_label
from .base import Experiment

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext


def single_model_needs(cfg: BenchmarkConfig) -> Needs:
    """Every base model attacked alone with every method, tested on every model (test-only ones included)."""
    needs = Needs()
    for attacked in cfg.attacked_models():
        for method in cfg.attack.methods:
            needs.add(single(cfg, attacked, method), cfg.model_names())
    return needs


def matrix(ctx: RunContext) -> Table2:
    """The Table 2 section (also read by Fig. 3 and Table 4)."""
    names = ctx.cfg.model_names()
    rows = []
    for attacked in ctx.cfg.attacked_models():
        for method in ctx.cfg.attack.methods:
            job = single(ctx.cfg, attacked, method)
            cells = [MatrixCell(tested=t, ranking=ctx.evaluate(t, job), white_box=t == attacked, worst_in_column=False) for t in names]
            rows.append(MatrixRow(attacked=attacked, method=method, attack_id=job.id, cells=cells))
    for j in range(len(names)):
        worst = min(range(len(rows)), key=lambda i: rows[i].cells[j].ranking.mAP)
        rows[worst].cells[j].worst_in_column = True
    clean = {n: ctx.evaluate(n).mAP for n in names}
    return Table2(
        title=ctx.cfg.experiments.table2_title, epsilon=ctx.cfg.attack.eps, clean_mAP=clean, rows=rows, test_only=ctx.cfg.test_only_models()
    )


class Table2Experiment(Experiment):
    name = "table2"
    title = "Table 2 — white-box and black-box attacks"

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        return single_model_needs(cfg)

    def compute(self, ctx: RunContext) -> Table2:
        return matrix(ctx)

    def tables(self, res: Results) -> list[Table]:
        t = res.table2
        if t is None:
            return []
        tested = [c.tested for c in t.rows[0].cells] if t.rows else []
        table = Table(
            "table2",
            t.title,
            f"mAP under white-box (†, the attacked model itself) and black-box attacks, "
            f"ε = {t.epsilon:g}; clean mAP in the header; the worst cell of each column in bold"
            + (f"; test-only models (never attacked): {', '.join(t.test_only)}." if t.test_only else "."),
            ["Model", "Attack"] + [f"{name} ({fmt(t.clean_mAP[name])})" for name in tested],
            [],
            heading=f"{t.title} — white-box and black-box attacks",
            text_columns=2,
        )
        for i, row in enumerate(t.rows):
            table.rows.append([row.attacked, method_label(row.method)] + [fmt(c.ranking.mAP) for c in row.cells])
            for j, cell in enumerate(row.cells):
                if cell.white_box:
                    table.white_box.add((i, j + 2))
                if cell.worst_in_column:
                    table.bold.add((i, j + 2))
        return [table]


EXPERIMENT = Table2Experiment()
