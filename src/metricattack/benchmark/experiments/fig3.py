"""Fig. 3: the ratio of adversarial to clean mAP on every single-model attack of Table 2.

The paper draws it for its two test-only models (HACNN vs Mancs, Bai et al. Sec. 5.1): a model
whose clean mAP is lower can still be the more robust one. The same ratios of the base models
are drawn as a separate, extra figure (``fig3_base.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.patches import Patch

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
        return Fig3(points=points, test_only=ctx.cfg.test_only_models())

    def figures(self, res: Results, folder: Path) -> list[Figure]:
        """The paper's figure (test-only models) and, as an extra, the same ratios of the base models."""
        f = res.fig3
        if f is None or not f.points:
            return []
        base = list(dict.fromkeys(p.tested for p in f.points if p.tested not in f.test_only))
        figures = []
        if f.test_only:
            caption = (
                f"The paper's Fig. 3: ratio of adversarial to clean mAP of the test-only models ({', '.join(f.test_only)}; "
                "the paper compares HACNN and Mancs) on every single-model attack of Table 2 (a large ratio = robust)."
            )
            path = _ratio_bars(f.points, f.test_only, "Fig. 3 — mAP ratio of the test-only models per attack setting", folder / "fig3.png")
            figures.append(Figure("fig3", path, "Fig. 3 — mAP ratio of the test-only models", caption))
        if not base:
            return figures
        caption = (
            "Extra (not in the paper): the same ratio for the base models, per attacked model and method; hatched bars are "
            "white-box (the attacked model itself)."
            + ("" if f.test_only else " The paper's Fig. 3 shows test-only models (HACNN vs Mancs); this run has none.")
        )
        title = "mAP ratio of the base models per attack setting (extra; hatched = white-box)"
        path = _ratio_bars(f.points, base, title, folder / "fig3_base.png")
        figures.append(Figure("fig3_base", path, "Extra — mAP ratio of the base models", caption))
        return figures


def _ratio_bars(points: list[RatioPoint], tested: list[str], title: str, path: Path) -> Path:
    """Grouped bars: one group per attack setting (attacked model, method), one bar per model of ``tested``."""
    settings = list(dict.fromkeys((p.attacked, p.method) for p in points))
    lookup = {(p.attacked, p.method, p.tested): p for p in points}
    width = 0.8 / len(tested)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(settings) * max(2, len(tested))), 3.6))
    x = np.arange(len(settings))
    top, handles = 1.0, []
    for k, name in enumerate(tested):
        values = [lookup[(a, m, name)].ratio if (a, m, name) in lookup else np.nan for a, m in settings]
        hatches = ["//" if (a, m, name) in lookup and lookup[(a, m, name)].white_box else "" for a, m in settings]
        bars = ax.bar(x + (k - (len(tested) - 1) / 2) * width, values, width)
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        handles.append(Patch(facecolor=bars.patches[0].get_facecolor(), label=f"tested on {name}"))
        top = max(top, float(np.nanmax(values)) if not np.all(np.isnan(values)) else top)
    ax.set_xticks(x, [f"{a}\n{method_label(m)}" for a, m in settings], fontsize=8)
    ax.set_ylabel("mAP ratio (adversarial / clean)")
    ax.set_ylim(0, 1.08 * top)
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


EXPERIMENT = Fig3Experiment()
