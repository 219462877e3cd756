"""Table 4: leave-one-out ensemble attacks, tested on the ensemble (white-box) and the hold-out model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..jobs import AttackJob, Needs, ensembles
from ..paper_numbers import BASE_MODELS, paper_model, paper_values, table4
from ..schema import EnsembleRow, Results, Table4
from ..tables import Table, fmt, method_label
from .base import Experiment
from .table2 import matrix, single_model_needs

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext


def ensemble_job(cfg: BenchmarkConfig, members: tuple[str, ...], method: str) -> AttackJob:
    return AttackJob(members, "gallery", method, cfg.attack.eps, cfg.attack.metric)


class Table4Experiment(Experiment):
    name = "table4"
    title = "Table 4 — multi-model (ensemble) attacks"

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        needs = single_model_needs(cfg)  # the best single-model transfer comes from Table 2
        for _, members in ensembles(cfg):
            for method in cfg.ensemble_methods():
                needs.add(ensemble_job(cfg, members, method), cfg.model_names())
        return needs

    def compute(self, ctx: RunContext) -> Table4:
        t2 = matrix(ctx)
        rows = []
        for holdout, members in ensembles(ctx.cfg):
            for method in ctx.cfg.ensemble_methods():
                job = ensemble_job(ctx.cfg, members, method)
                mean_dist = torch.stack([ctx.distances(m, ctx.gallery(m, job)) for m in members]).mean(0)
                singles = [
                    c.ranking.mAP for r in t2.rows if r.method == method and r.attacked in members for c in r.cells if c.tested == holdout
                ]
                rows.append(
                    EnsembleRow(
                        holdout=holdout,
                        ensemble=list(members),
                        method=method,
                        attack_id=job.id,
                        ensemble_mAP=100 * ctx.rank(mean_dist).mAP,
                        holdout_mAP=ctx.evaluate(holdout, job).mAP,
                        best_single_transfer_mAP=min(singles) if singles else None,
                        single_attack_ids=[r.attack_id for r in t2.rows if r.method == method and r.attacked in members],
                        test_only_mAP={t: ctx.evaluate(t, job).mAP for t in ctx.cfg.test_only_models()},
                    )
                )
        return Table4(epsilon=ctx.cfg.attack.eps, rows=rows)

    def tables(self, res: Results) -> list[Table]:
        t = res.table4
        if t is None:
            return []
        test_only = list(dict.fromkeys(name for row in t.rows for name in row.test_only_mAP))
        rows, bold = [], set()
        for row in t.rows:
            rows.append(
                [
                    f"-{row.holdout}",
                    method_label(row.method),
                    "+".join(row.ensemble),
                    fmt(row.ensemble_mAP),
                    fmt(row.holdout_mAP),
                    fmt(row.best_single_transfer_mAP),
                    *(fmt(row.test_only_mAP.get(name)) for name in test_only),
                ]
            )
        for col in (3, 4, *range(6, 6 + len(test_only))):
            by_holdout: dict[str, list[tuple[float, int]]] = {}
            for i, r in enumerate(rows):
                if r[col] != "–":
                    by_holdout.setdefault(r[0], []).append((float(r[col]), i))
            for group in by_holdout.values():
                if len(group) > 1:  # one method per hold-out model: no worst to mark
                    bold.add((min(group)[1], col))
        table = Table(
            "table4",
            "Table 4",
            f"Multi-model attacks on every leave-one-out ensemble (ε = {t.epsilon:g}): mAP of "
            "the ensemble (white-box; distance = mean of member distances) and of the hold-out model "
            "(black-box), next to the best single-model transfer to the hold-out model from Table 2"
            + (f", and of the test-only models {', '.join(test_only)}" if test_only else "")
            + ". White-box cells shaded and marked †"
            + ("; the worst attack per hold-out model in bold." if bold else "."),
            [
                "Hold-out",
                "Attack",
                "Ensemble",
                "Ensemble mAP",
                "Hold-out mAP",
                "Best single-model transfer",
                *(f"{n} mAP" for n in test_only),
            ],
            rows,
            bold=bold,
            white_box={(i, 3) for i in range(len(rows))},
            heading=self.title,
            text_columns=3,
        )
        values = paper_values(res.dataset.name, res.provenance.ap_convention, res.provenance.config.get("attack", {}))
        if values is not None:
            table.add_paper(values, "Table 4", _paper_cells(t, test_only, table4(values.dataset)))
        return [table]


def _paper_cells(t: Table4, test_only: list[str], paper: dict[tuple[str, str], dict[str, float]]) -> dict[tuple[int, int], float | str]:
    """The paper's Table 4 cells of our rows whose ensemble is the paper's (the three other base models B1-B4)."""
    columns = {3: "ensemble", 4: "holdout"} | {6 + k: m for k, name in enumerate(test_only) if (m := paper_model(name)) is not None}
    cells: dict[tuple[int, int], float | str] = {}
    for i, row in enumerate(t.rows):
        holdout = paper_model(row.holdout)
        same_ensemble = holdout in BASE_MODELS and sorted(map(str, map(paper_model, row.ensemble))) == sorted(set(BASE_MODELS) - {holdout})
        if same_ensemble and (key := (str(holdout), row.method)) in paper:
            cells |= {(i, j): paper[key][name] for j, name in columns.items() if name in paper[key]}
    return cells


EXPERIMENT = Table4Experiment()
