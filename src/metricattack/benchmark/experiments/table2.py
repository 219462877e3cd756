"""Tables 2/3: white-box (diagonal) and black-box mAP of every model under every single-model attack."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..jobs import Needs, single
from ..paper_numbers import MARKET, paper_model, paper_values, table2, table2_clean
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
        test_only = f"; test-only models (never attacked): {', '.join(t.test_only)}." if t.test_only else "."
        table = Table(
            "table2",
            t.title,
            f"mAP under white-box attacks (shaded and marked †: the attacked model itself) and black-box attacks, "
            f"ε = {t.epsilon:g}; rows: the attacked model and method, columns: the tested model with its clean mAP; "
            f"the worst cell of each column in bold{test_only}",
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
        attack = res.provenance.config.get("attack", {})
        values = paper_values(res.dataset.name, res.provenance.ap_convention, attack)
        if values is not None:
            paper, clean = table2(values.dataset), table2_clean(values.dataset)
            cells: dict[tuple[int, int], float | str] = {}
            for i, row in enumerate(t.rows):
                attacked = paper.get((paper_model(row.attacked) or "", row.method), {})
                cells |= {(i, j + 2): attacked[m] for j, c in enumerate(row.cells) if (m := paper_model(c.tested)) in attacked}
            header = {j + 2: clean[m] for j, name in enumerate(tested) if (m := paper_model(name)) in clean}
            table.add_paper(values, "Table 2" if values.dataset == MARKET else "Table 3", cells, header)
        return [table, self._rank1(res, t, tested)]

    def _rank1(self, res: Results, t: Table2, tested: list[str]) -> Table:
        """The same galleries' rank-1 (the paper puts its rank-1 numbers in its supplementary material)."""
        clean = {r.model: r.clean.rank1 for r in res.table1 or []}
        table = Table(
            "table2_rank1",
            f"{t.title} (rank-1)",
            f"Rank-1 accuracy on the galleries of {t.title} (white-box shaded and marked †; the worst cell of each column in "
            "bold, ties included); the column header gives the clean rank-1 when Table 1 ran. The paper reports rank-1 only in its "
            "supplementary material, which is not reproduced here.",
            ["Model", "Attack"] + [f"{name} ({fmt(clean[name])})" if name in clean else name for name in tested],
            [],
            heading=f"{t.title} (rank-1) — white-box and black-box attacks",
            text_columns=2,
        )
        for i, row in enumerate(t.rows):
            table.rows.append([row.attacked, method_label(row.method)] + [fmt(c.ranking.rank1) for c in row.cells])
            table.white_box |= {(i, j + 2) for j, c in enumerate(row.cells) if c.white_box}
        for j in range(len(tested)):
            worst = min(row.cells[j].ranking.rank1 for row in t.rows)
            table.bold |= {(i, j + 2) for i, row in enumerate(t.rows) if row.cells[j].ranking.rank1 == worst}
        return table


EXPERIMENT = Table2Experiment()
