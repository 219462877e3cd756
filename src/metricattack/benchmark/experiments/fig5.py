"""Fig. 5: mAP against ε for every attack-metric / test-metric pair (Euclidean and Mahalanobis)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..figures import FULL_WIDTH_IN, figure, save
from ..jobs import Needs, single
from ..schema import Curve, CurvePoint, Fig5, Results
from ..tables import method_label
from .base import Experiment, Figure

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext


class Fig5Experiment(Experiment):
    name = "fig5"
    title = "Fig. 5 — mAP against ε"

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        m, f = cfg.chosen_model("fig5"), cfg.experiments.fig5
        needs = Needs()
        for metric in f.metrics:
            needs.learn(m, metric)
            for method in f.methods:
                for eps in f.epsilons:
                    needs.add(single(cfg, m, method, epsilon=eps, metric=metric), [m])
        return needs

    def compute(self, ctx: RunContext) -> Fig5:
        m, f = ctx.cfg.chosen_model("fig5"), ctx.cfg.experiments.fig5
        clean = {t: ctx.evaluate(m, metric=t) for t in f.metrics}
        curves = []
        for method in f.methods:
            for am in f.metrics:
                for tm in f.metrics:
                    points = [CurvePoint(epsilon=0.0, mAP=clean[tm].mAP, attack_id=None)]
                    for eps in f.epsilons:
                        job = single(ctx.cfg, m, method, epsilon=eps, metric=am)
                        points.append(CurvePoint(epsilon=eps, mAP=ctx.evaluate(m, job, tm).mAP, attack_id=job.id))
                    curves.append(Curve(method=method, attack_metric=am, test_metric=tm, points=points))
        return Fig5(model=m, curves=curves, clean=clean)

    def figures(self, res: Results, folder: Path) -> list[Figure]:
        """mAP against ε, one panel per method, one line per attack-metric / test-metric pair, and
        the chance level (the floor a perfect attack approaches) as a dashed line."""
        f = res.fig5
        if f is None or not f.curves:
            return []
        methods = list(dict.fromkeys(c.method for c in f.curves))
        wide = len(methods) > 1
        fig, axes = figure(FULL_WIDTH_IN if wide else 6.5, 4.2, 1, len(methods), sharey=True)
        top = 0.0
        for ax, method in zip(axes[0], methods, strict=True):
            for k, curve in enumerate(c for c in f.curves if c.method == method):
                pts = sorted(curve.points, key=lambda p: p.epsilon)
                top = max(top, *(p.mAP for p in pts))
                ax.plot(
                    [p.epsilon for p in pts],
                    [p.mAP for p in pts],
                    marker="o",
                    color=f"C{k}",
                    label=f"{curve.attack_metric} / {curve.test_metric}",
                )
            if res.dataset.chance is not None:
                ax.axhline(res.dataset.chance.mAP, color="grey", linestyle="--", linewidth=1, label="chance (a random ranking)")
            ax.set_title(f"({chr(ord('a') + methods.index(method))}) {method_label(method)} on {f.model}")
            ax.set_xlabel("ε (0..255 pixel units)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("mAP (%)")
        axes[0][0].set_ylim(0, 1.05 * top)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(len(labels), 3 if wide else 2),
            title="attack metric / test metric",
            frameon=False,
        )
        fig.suptitle("Fig. 5 — mAP against ε")
        caption = "mAP against the perturbation bound ε; the legend reads attack metric / test metric; the dashed line is the chance level (a random ranking)."
        return [Figure("fig5", save(fig, folder / "fig5.png"), self.title, caption)]


EXPERIMENT = Fig5Experiment()
