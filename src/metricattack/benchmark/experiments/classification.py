"""Metric attack vs classification attack on one model (paper Sec. 5.1: mAP 77.52 → 0.367 vs 52.93),
with the mean distance from probes to their true positives."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..jobs import AttackJob, Needs, single
from ..schema import ClassificationVsMetric, Results
from ..tables import Table, fmt, method_label
from .base import Experiment

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext


def _tp_distance(ctx: RunContext, model: str, gallery: torch.Tensor) -> float:
    """Mean squared-Euclidean distance between queries and their true positives (other camera)."""
    from ...attacks.runner import mean_true_positive_distance, true_positive_pairs

    return mean_true_positive_distance(ctx.metric(model, "euclidean"), ctx.clean[model].query, gallery, true_positive_pairs(ctx.dataset))


class ClassificationExperiment(Experiment):
    name = "classification"
    title = "Metric attack vs classification attack"

    def _jobs(self, cfg: BenchmarkConfig) -> tuple[str, str, AttackJob, AttackJob]:
        m, method = cfg.chosen_model("classification"), cfg.experiments.classification.method
        return m, method, single(cfg, m, method), single(cfg, m, method, setting="classification")

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        m, _, metric_job, cls_job = self._jobs(cfg)
        needs = Needs()
        needs.add(metric_job, [m])
        needs.add(cls_job, [m])
        return needs

    def compute(self, ctx: RunContext) -> ClassificationVsMetric:
        m, method, metric_job, cls_job = self._jobs(ctx.cfg)
        return ClassificationVsMetric(
            model=m,
            method=method,
            metric_attack_id=metric_job.id,
            classification_attack_id=cls_job.id,
            clean=ctx.evaluate(m),
            metric_attack=ctx.evaluate(m, metric_job),
            classification_attack=ctx.evaluate(m, cls_job),
            mean_tp_distance={
                "clean": _tp_distance(ctx, m, ctx.gallery(m)),
                "metric_attack": _tp_distance(ctx, m, ctx.gallery(m, metric_job)),
                "classification_attack": _tp_distance(ctx, m, ctx.gallery(m, cls_job)),
            },
        )

    def tables(self, res: Results) -> list[Table]:
        c = res.classification
        if c is None:
            return []
        cls = c.classification_attack
        rows = [
            ["clean", fmt(c.clean.rank1), fmt(c.clean.mAP), fmt(c.mean_tp_distance.get("clean"))],
            [
                f"metric attack ({method_label(c.method)})",
                fmt(c.metric_attack.rank1),
                fmt(c.metric_attack.mAP),
                fmt(c.mean_tp_distance.get("metric_attack")),
            ],
            [
                f"classification attack ({method_label(c.method)} on cross-entropy)",
                fmt(cls.rank1) if cls else "not run",
                fmt(cls.mAP) if cls else "not run",
                fmt(c.mean_tp_distance.get("classification_attack")),
            ],
        ]
        return [
            Table(
                "classification",
                "Metric vs classification attack",
                f"White-box attacks on {c.model}: the paper reports mAP 77.52 → 0.367 (metric) vs 52.93 "
                "(classification) and a mean distance to true positives 0.80 → 1.42 (its distance convention is not stated; "
                "ours is squared Euclidean).",
                ["Gallery", "Rank-1", "mAP", "Mean distance to true positives"],
                rows,
                heading=self.title,
            )
        ]


EXPERIMENT = ClassificationExperiment()
