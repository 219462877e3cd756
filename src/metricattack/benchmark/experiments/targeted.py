"""Targeted attack: how many attacked gallery images reach the top of their target probe's ranking."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...wording import agree, counted
from ..evidence import hits_key
from ..jobs import AttackJob, Needs, single
from ..schema import Results, Targeted
from ..tables import Table, fmt, method_label
from .base import Experiment

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext

TOP_K = 10  # the findings' evidence: did each attacked image reach its target's top-10


class TargetedExperiment(Experiment):
    name = "targeted"
    title = "Targeted attack success"

    def _job(self, cfg: BenchmarkConfig) -> tuple[str, AttackJob]:
        m = cfg.chosen_model("targeted")
        return m, single(cfg, m, cfg.experiments.targeted.method, threat="targeted")

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        m, job = self._job(cfg)
        return Needs.tested_on(m, job)

    def compute(self, ctx: RunContext) -> Targeted:
        from ...attacks.evaluation import target_ranks, targeted_success

        m, job = self._job(ctx.cfg)
        targets, metric, queries = ctx.targets(), ctx.metric(m, "euclidean"), ctx.clean[m].query
        after = targeted_success(metric, queries, ctx.gallery(m, job), ctx.dataset, targets)
        before = targeted_success(metric, queries, ctx.gallery(m), ctx.dataset, targets)
        for clean, gallery in ((False, ctx.gallery(m, job)), (True, ctx.gallery(m))):
            hits = target_ranks(metric, queries, gallery, ctx.dataset, targets) < TOP_K
            ctx.evidence[hits_key(job.id, clean)] = hits.double().numpy()
        return Targeted(
            model=m,
            method=job.method,
            attack_id=job.id,
            num_images=int(after["num_targets"]),
            top1_rate=after["top1"],
            top10_rate=after["top10"],
            clean_top1_rate=before["top1"],
            clean_top10_rate=before["top10"],
            after=ctx.evaluate(m, job),
        )

    def tables(self, res: Results) -> list[Table]:
        t = res.targeted
        if t is None:
            return []
        rows = [
            ["before attack", f"{100 * t.clean_top1_rate:.1f}%", f"{100 * t.clean_top10_rate:.1f}%"],
            [f"after targeted {method_label(t.method)}", f"{100 * t.top1_rate:.1f}%", f"{100 * t.top10_rate:.1f}%"],
        ]
        return [
            Table(
                "targeted",
                "Targeted attack",
                f"Share of the {counted(t.num_images, 'attacked gallery image')} of {t.model} "
                f"that {agree(t.num_images, 'ranks', 'rank')} in the top-1 / top-10 of {agree(t.num_images, 'its', 'their')} "
                "target probe; mAP after the attack "
                f"{fmt(t.after.mAP)}.",
                ["Gallery", "Top-1 of target", "Top-10 of target"],
                rows,
                heading=self.title,
            )
        ]


EXPERIMENT = TargetedExperiment()
