"""Fig. 3: the ratio of adversarial to clean mAP for every tested model and attack setting of Table 2."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..figures import plt, save
from ..jobs import Needs
from ..schema import Fig3, RatioPoint, Results
from ..tables import method_label
from .base import Experiment, Figure
from .table2 import matrix, single_model_needs

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext


class Fig3Experiment(Experiment):
    name = "fig3"
    title = "Fig. 3 — mAP ratio"

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        return single_model_needs(cfg)

    def compute(self, ctx: RunContext) -> Fig3:
        t2 = matrix(ctx)
        points = [
            RatioPoint(
                tested=c.tested,
                attacked=r.attacked,
                method=r.method,
                white_box=c.white_box,
                ratio=c.ranking.mAP / t2.clean_mAP[c.tested] if t2.clean_mAP[c.tested] > 0 else 0.0,
            )
            for r in t2.rows
            for c in r.cells
        ]
        return Fig3(points=points)

    def figures(self, res: Results, folder: Path) -> list[Figure]:
        """mAP ratio (adversarial / clean) per tested model for every attack setting."""
        f = res.fig3
        if f is None or not f.points:
            return []
        settings = list(dict.fromkeys((p.attacked, p.method) for p in f.points))
        tested = list(dict.fromkeys(p.tested for p in f.points))
        lookup = {(p.attacked, p.method, p.tested): p for p in f.points}
        width = 0.8 / len(tested)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(settings) * max(1, len(tested)) / 2), 3.4))
        x = np.arange(len(settings))
        for k, name in enumerate(tested):
            values = [lookup[(a, m, name)].ratio if (a, m, name) in lookup else np.nan for a, m in settings]
            hatches = ["//" if (a, m, name) in lookup and lookup[(a, m, name)].white_box else "" for a, m in settings]
            bars = ax.bar(x + (k - (len(tested) - 1) / 2) * width, values, width, label=f"tested on {name}")
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
        ax.set_xticks(x, [f"{a}\n{method_label(m)}" for a, m in settings], fontsize=7)
        ax.set_ylabel("mAP ratio (adversarial / clean)")
        ax.set_ylim(0, 1.05)
        ax.set_title("Fig. 3 — mAP ratio per attacked model and method (hatched = white-box)", fontsize=10)
        ax.legend(fontsize=7, ncol=min(4, len(tested)))
        ax.grid(axis="y", alpha=0.3)
        caption = "Ratio of adversarial to clean mAP for every tested model and attack setting (a large ratio = robust)."
        return [Figure("fig3", save(fig, folder / "fig3.png"), self.title, caption)]


EXPERIMENT = Fig3Experiment()
