"""Drawing helpers shared by the experiments' figures (matplotlib, Agg backend).

Figures are drawn from ``results.json`` by the experiments (:mod:`.experiments`); Fig. 1 and
Fig. 4 also read the images the results point to (clean and adversarial gallery files), so
they are drawn from the run folder while the cached datasets exist.

Every figure is drawn at the size the report shows it: ``figsize × DPI`` pixels, at most
:data:`DISPLAY_WIDTH_PX` wide (the report's text column), never scaled by the browser, with no
text smaller than :data:`MIN_FONT_PT` (≈ 11 px; matplotlib's default text is 10 pt). :func:`save` refuses a figure that breaks
this, so a figure that would be unreadable in the report fails when it is drawn.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from PIL import Image  # noqa: E402

from ..io import atomic_path  # noqa: E402

TRUE_COLOUR = "#1f5fd6"  # blue: a true match (the paper marks proper positions in blue)
FALSE_COLOUR = "#d62728"  # red: a wrong match
DPI = 96  # 1 pt = 4/3 px: a figure's pixel size is figsize × 96, shown 1:1 in the report
DISPLAY_WIDTH_PX = 960  # the report's text column (report.html.j2: body max-width)
FULL_WIDTH_IN = DISPLAY_WIDTH_PX / DPI  # a figure as wide as the column, in inches
MIN_FONT_PT = 8.0  # 8 pt at 96 dpi = 10.7 px, the smallest text a figure may hold


class UnreadableFigure(ValueError):
    """A figure that the report would have to shrink, or whose text is too small to read."""


def figure(width_in: float, height_in: float, rows: int = 1, cols: int = 1, sharey: bool = False) -> tuple[plt.Figure, np.ndarray]:
    """A figure of ``width_in × height_in`` inches (× :data:`DPI` = its pixels in the report) with a
    ``rows × cols`` grid of axes (always a 2-D array) and constrained layout, so titles, labels and
    legends placed ``outside`` the axes stay inside the figure without changing its size."""
    return plt.subplots(rows, cols, figsize=(width_in, height_in), dpi=DPI, squeeze=False, layout="constrained", sharey=sharey)


def check_readable(fig: plt.Figure) -> None:
    """Raise :class:`UnreadableFigure` when ``fig`` is wider than the report's column or holds
    visible text below :data:`MIN_FONT_PT`."""
    width_px = fig.get_figwidth() * DPI
    if width_px > DISPLAY_WIDTH_PX + 0.5:
        raise UnreadableFigure(f"figure is {width_px:.0f} px wide; the report shows at most {DISPLAY_WIDTH_PX} px")
    small = sorted(
        {
            (t.get_fontsize(), t.get_text())
            for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and float(t.get_fontsize()) < MIN_FONT_PT
        }
    )
    if small:
        raise UnreadableFigure(f"text below {MIN_FONT_PT:g} pt: {small[:3]}")
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    fig.draw_without_rendering()  # runs the constrained layout
    legends = [*fig.legends, *(leg for ax in fig.axes if (leg := ax.get_legend()) is not None)]
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible() and ax.has_data()]
    suptitle = getattr(fig, "_suptitle", None)  # matplotlib keeps it outside fig.texts
    if isinstance(suptitle, Text) and suptitle.get_text():
        boxes.append(suptitle.get_window_extent(renderer))
    for legend in legends:
        box = legend.get_window_extent(renderer)
        if any(box.overlaps(other) for other in boxes):
            raise UnreadableFigure(f"legend {[t.get_text() for t in legend.get_texts()][:3]} covers an axes or the title")
    drawn = fig.get_tightbbox(renderer)  # in inches: everything that is drawn, text included
    if drawn is not None and not _contains(Bbox.from_bounds(0, 0, fig.get_figwidth(), fig.get_figheight()).padded(1 / DPI), drawn):
        raise UnreadableFigure(f"something is drawn outside the figure (cut off): drawn {drawn.bounds}, figure {fig.get_size_inches()}")


def _contains(outer: Bbox, inner: Bbox) -> bool:
    return bool(outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1)


def save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG of exactly figsize × :data:`DPI` pixels (no tight-bbox cropping, which
    would change its size); refuses unreadable figures (:func:`check_readable`)."""
    try:
        check_readable(fig)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return path


def image(path: str) -> np.ndarray:
    """An RGB image as float array [H, W, 3] in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG file."""
    with Image.open(path) as img:
        return img.size
