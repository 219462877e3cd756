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

from ..figures import FULL_WIDTH_IN, figure, save
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
                "the paper compares HACNN and Mancs, on DukeMTMC-reID) on every single-model attack of Table 2 (a large ratio = "
                "robust; the dotted line at 1 = unchanged by the attack)."
            )
            path = _ratio_bars(f.points, f.test_only, "Fig. 3 — mAP ratio of the test-only models per attack setting", folder / "fig3.png")
            figures.append(Figure("fig3", path, "Fig. 3 — mAP ratio of the test-only models", caption))
        if not base:
            return figures
        caption = (
            "Extra (not in the paper): the same ratio for the base models, per attacked model and method; hatched bars are "
            "white-box (the attacked model itself); the dotted line at 1 = unchanged by the attack."
            + ("" if f.test_only else " The paper's Fig. 3 shows test-only models (HACNN vs Mancs); this run has none.")
        )
        title = "Extra: mAP ratio of the base models per attack setting"
        path = _ratio_bars(f.points, base, title, folder / "fig3_base.png")
        figures.append(Figure("fig3_base", path, "Extra — mAP ratio of the base models", caption))
        return figures


PANELS_PER_ROW = 4


def _ratio_bars(points: list[RatioPoint], tested: list[str], title: str, path: Path) -> Path:
    """One panel per attacked model (up to :data:`PANELS_PER_ROW` a row), one group of bars per
    method, one bar per model of ``tested`` (hatched when white-box); y from 0 to above the
    largest ratio, a dotted line at 1 (= unchanged by the attack), the legend below the panels."""
    attacked = list(dict.fromkeys(p.attacked for p in points))
    methods = list(dict.fromkeys(p.method for p in points))
    lookup = {(p.attacked, p.method, p.tested): p for p in points}
    shown = [lookup[k] for k in lookup if k[2] in tested]
    top = max([1.0, *(p.ratio for p in shown)])
    cols = min(PANELS_PER_ROW, len(attacked))
    rows = -(-len(attacked) // cols)
    fig, axes = figure(FULL_WIDTH_IN, 1.0 + 2.6 * rows, rows, cols, sharey=True)
    width = 0.8 / len(tested)
    x = np.arange(len(methods))
    colours = [f"C{k}" for k in range(len(tested))]
    for ax, source in zip(axes.flat, attacked, strict=False):
        for k, name in enumerate(tested):
            cells = [lookup.get((source, m, name)) for m in methods]
            bars = ax.bar(
                x + (k - (len(tested) - 1) / 2) * width, [np.nan if c is None else c.ratio for c in cells], width, color=colours[k]
            )
            for bar, cell in zip(bars, cells, strict=True):
                bar.set_hatch("//" if cell is not None and cell.white_box else "")
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(x, [method_label(m) for m in methods])
        ax.set_title(f"attacks on {source}")
        ax.set_ylim(0, 1.1 * top)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("adversarial / clean mAP")
    for ax in axes.flat[len(attacked) :]:
        ax.set_visible(False)
    handles = [Patch(facecolor=colours[k], label=f"tested on {name}") for k, name in enumerate(tested)]
    if any(p.white_box for p in shown):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="white-box (the attacked model)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    fig.suptitle(title)
    return save(fig, path)


EXPERIMENT = Fig3Experiment()
