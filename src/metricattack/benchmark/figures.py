"""The paper's figures as PNG files (matplotlib, Agg backend), drawn from ``results.json``.

``fig1`` and ``fig4`` also read the images the results point to (clean and adversarial
gallery files), so they are drawn from the run folder while the cached datasets exist.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .schema import Results  # noqa: E402
from .tables import METHOD_NAMES  # noqa: E402

TRUE_COLOUR = "#1f5fd6"  # blue: a true match (the paper marks proper positions in blue)
FALSE_COLOUR = "#d62728"  # red: a wrong match
DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _image(path: str) -> np.ndarray:
    """An RGB image as float array [H, W, 3] in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def fig1(res: Results, path: Path) -> Path | None:
    """Clean gallery image, perturbation rescaled to [0, 1], adversarial image; similarity to the probe."""
    f = res.fig1
    if f is None or not f.examples:
        return None
    n = len(f.examples)
    fig, axes = plt.subplots(n, 4, figsize=(6.4, 2.6 * n), squeeze=False)
    for row, ex in enumerate(f.examples):
        clean, adv = _image(ex.gallery_path), _image(ex.adversarial_path)
        delta = adv - clean
        span = delta.max() - delta.min()
        shown = (delta - delta.min()) / span if span > 0 else np.zeros_like(delta)
        kind = "true match" if ex.true_match else "wrong match"
        panels = [
            (_image(ex.query_path), "probe"),
            (clean, f"gallery ({kind})\nsim {ex.similarity_before:.3f}"),
            (shown, f"perturbation\n(L∞ {ex.linf:.0f}/255, rescaled)"),
            (adv, f"adversarial\nsim {ex.similarity_after:.3f}"),
        ]
        for ax, (img, title) in zip(axes[row], panels, strict=True):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"Fig. 1 — adversarial gallery images against {f.model}", fontsize=10)
    return _save(fig, path)


def fig3(res: Results, path: Path) -> Path | None:
    """mAP ratio (adversarial / clean) per tested model for every attack setting."""
    f = res.fig3
    if f is None or not f.points:
        return None
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
    ax.set_xticks(x, [f"{a}\n{METHOD_NAMES.get(m, m)}" for a, m in settings], fontsize=7)
    ax.set_ylabel("mAP ratio (adversarial / clean)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Fig. 3 — mAP ratio per attacked model and method (hatched = white-box)", fontsize=10)
    ax.legend(fontsize=7, ncol=min(4, len(tested)))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def fig4(res: Results, path: Path) -> Path | None:
    """Ranking lists of chosen probes: clean, non-targeted and targeted galleries."""
    f = res.fig4
    if f is None or not f.probes:
        return None
    rows = [(p, lst) for p in f.probes for lst in p.lists]
    cols = f.top_k + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.85 * cols, 1.9 * len(rows)), squeeze=False)
    for r, (probe, lst) in enumerate(rows):
        ax = axes[r][0]
        ax.imshow(_image(probe.path), interpolation="nearest")
        ax.set_title(f"probe {probe.pid}\n{lst.setting}", fontsize=7)
        ax.axis("off")
        for c in range(1, cols):
            ax = axes[r][c]
            ax.axis("off")
            if c - 1 >= len(lst.top):
                continue
            item = lst.top[c - 1]
            ax.imshow(_image(item.path), interpolation="nearest")
            colour = TRUE_COLOUR if item.correct else FALSE_COLOUR
            ax.set_title(f"#{item.rank}{' adv' if item.adversarial else ''}", fontsize=7, color=colour)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)
    fig.suptitle(
        f"Fig. 4 — top-{f.top_k} ranking lists on {f.model} (blue = true match, red = wrong match; 'adv' = adversarial image)", fontsize=9
    )
    return _save(fig, path)


def fig5(res: Results, path: Path) -> Path | None:
    """mAP against ε, one panel per method, one line per attack-metric / test-metric pair, and
    the chance level (the floor a perfect attack approaches) as a dashed line."""
    f = res.fig5
    if f is None or not f.curves:
        return None
    methods = list(dict.fromkeys(c.method for c in f.curves))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.3), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        for curve in (c for c in f.curves if c.method == method):
            pts = sorted(curve.points, key=lambda p: p.epsilon)
            ax.plot([p.epsilon for p in pts], [p.mAP for p in pts], marker="o", label=f"{curve.attack_metric}/{curve.test_metric}")
        if res.dataset.chance is not None:
            ax.axhline(res.dataset.chance.mAP, color="grey", linestyle="--", linewidth=1, label="chance (random ranking)")
        ax.set_title(f"{METHOD_NAMES.get(method, method)} on {f.model}", fontsize=10)
        ax.set_xlabel("ε (0..255 pixel units)")
        ax.set_ylabel("mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="attack / test metric", title_fontsize=7)
    fig.suptitle("Fig. 5 — mAP against ε", fontsize=10)
    return _save(fig, path)


ALL_FIGURES = {"fig1": fig1, "fig3": fig3, "fig4": fig4, "fig5": fig5}


def write_figures(res: Results, out_dir: Path) -> dict[str, Path]:
    """Draw every figure the results have data for; returns name → PNG path."""
    drawn = {}
    for name, fn in ALL_FIGURES.items():
        png = fn(res, out_dir / f"{name}.png")
        if png is not None:
            drawn[name] = png
    return drawn
