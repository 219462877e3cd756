"""Drawing helpers shared by the experiments' figures (matplotlib, Agg backend).

Figures are drawn from ``results.json`` by the experiments (:mod:`.experiments`); Fig. 1 and
Fig. 4 also read the images the results point to (clean and adversarial gallery files), so
they are drawn from the run folder while the cached datasets exist.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..io import atomic_path  # noqa: E402

TRUE_COLOUR = "#1f5fd6"  # blue: a true match (the paper marks proper positions in blue)
FALSE_COLOUR = "#d62728"  # red: a wrong match
DPI = 110


def save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def image(path: str) -> np.ndarray:
    """An RGB image as float array [H, W, 3] in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
