"""Beyond the paper: attack methods that came after it, white-box and transferred, with intervals.

``experiments.beyond.methods`` (empty: not run) × every attacked model × ``epsilons`` (default 5
and 8): the paper's non-targeted gallery attack with that method, tested on every model (the
attacked one white-box, the others black-box), exactly as Table 2's cells; each cell's mAP comes
with its bootstrap interval over queries (the ``confidence`` section, the findings' bootstrap:
:class:`~..evidence.Bootstrap`). One table per ε.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..evidence import Bootstrap, ap_key
from ..jobs import AttackJob, Needs, single
from ..schema import Beyond, BeyondCell, BeyondRow, Results
from ..tables import Table, fmt, method_label
from .base import Experiment

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext

METRIC = "euclidean"  # Table 2's test metric


def jobs(cfg: BenchmarkConfig) -> list[AttackJob]:
    """Every attack of the experiment (ε, then attacked model, then method)."""
    section = cfg.experiments.beyond
    return [
        single(cfg, model, method, epsilon=eps) for eps in section.epsilons for model in cfg.attacked_models() for method in section.methods
    ]


class BeyondExperiment(Experiment):
    name = "beyond"
    title = "Beyond the paper — later attack methods, white-box and black-box"

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        needs = Needs()
        for job in jobs(cfg):
            needs.add(job, cfg.model_names())
        return needs

    def compute(self, ctx: RunContext) -> Beyond | None:
        cfg = ctx.cfg
        if not cfg.experiments.beyond.methods:
            return None
        names = cfg.model_names()
        rankings = {(job, t): ctx.evaluate(t, job, METRIC) for job in [None, *jobs(cfg)] for t in names}  # fills the evidence
        boot = Bootstrap(ctx.evidence, cfg.confidence.resamples, cfg.confidence.seed, cfg.confidence.level)

        def cell(job: AttackJob | None, tested: str) -> BeyondCell:
            interval = boot.interval(boot.mAP(ap_key(tested, None if job is None else job.id, METRIC)))
            white = job is not None and job.sources == (tested,)
            return BeyondCell(tested=tested, mAP=rankings[(job, tested)].mAP, interval=interval, white_box=white)

        rows = [
            BeyondRow(
                attacked=job.sources[0],
                method=job.method,
                epsilon=job.epsilon,
                attack_id=job.id,
                options=cfg.attack.spec(job.method, job.epsilon, cfg.seed).resolved()["options"],
                cells=[cell(job, t) for t in names],
            )
            for job in jobs(cfg)
        ]
        section = cfg.experiments.beyond
        return Beyond(
            metric=METRIC,
            methods=list(section.methods),
            epsilons=list(section.epsilons),
            confidence=cfg.confidence.level,
            clean=[cell(None, t) for t in names],
            rows=rows,
        )

    def tables(self, res: Results) -> list[Table]:
        b = res.beyond
        if b is None:
            return []
        tested = [c.tested for c in b.clean]
        header = ["Model", "Attack"] + [f"{c.tested} ({fmt(c.mAP)})" for c in b.clean]
        out = []
        for eps in b.epsilons:
            chosen = [r for r in b.rows if r.epsilon == eps]
            table = Table(
                f"beyond_eps{eps:g}",
                f"Beyond the paper, ε = {eps:g}",
                f"mAP (%) [{b.confidence:.0%} bootstrap interval over queries] under each later method's non-targeted gallery "
                f"attack at ε = {eps:g} (0..255 units, the benchmark's α and steps, each method's options as recorded in "
                f"results.json), white-box (shaded, marked †: the attacked model itself) and black-box on the other models; "
                f"columns: the tested model with its clean mAP ({', '.join(tested)}).",
                header,
                [],
                heading=f"{self.title}, ε = {eps:g}",
                text_columns=2,
            )
            for i, row in enumerate(chosen):
                table.rows.append(
                    [row.attacked, method_label(row.method)]
                    + [f"{fmt(c.mAP)} [{fmt(c.interval[0])}, {fmt(c.interval[1])}]" for c in row.cells]
                )
                table.white_box |= {(i, j + 2) for j, c in enumerate(row.cells) if c.white_box}
            out.append(table)
        return out

    def not_run(self, res: Results) -> str | None:
        if res.beyond is not None:
            return None
        return "not run in this run: experiments.beyond.methods is empty (or the experiment was not selected)."


EXPERIMENT = BeyondExperiment()
