"""Hand-crafted re-ID baseline: joint colour histograms over horizontal stripes.

A LOMO-lite reference point: no learning, so a trained CNN must beat it clearly. Not
differentiable (used for evaluation only).
"""

from __future__ import annotations

import torch

from ..errors import MetricAttackError


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` RGB in [0,1] → HSV in [0,1] (hue as a fraction of a turn)."""
    r, g, b = images.unbind(dim=1)
    vmax, _ = images.max(dim=1)
    vmin, _ = images.min(dim=1)
    delta = vmax - vmin
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(vmax == r, ((g - b) / safe) % 6, torch.where(vmax == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    sat = torch.where(vmax > 0, delta / torch.where(vmax > 0, vmax, torch.ones_like(vmax)), torch.zeros_like(vmax))
    return torch.stack([hue, sat, vmax], dim=1)


def color_histogram_features(
    images: torch.Tensor, bins: int = 8, stripes: int = 6, color_space: str = "hsv", sqrt: bool = True
) -> torch.Tensor:
    """Joint ``bins``³ colour histograms of ``stripes`` horizontal bands, concatenated.

    images: ``[B,3,H,W]`` float in [0,1]. Returns ``[B, stripes * bins**3]``: each band's
    histogram sums to 1, is square-rooted when ``sqrt`` (Hellinger mapping, so a few big
    background bins do not dominate Euclidean distances), then the whole vector is
    L2-normalised (unit rows).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise MetricAttackError(f"color_histogram_features expects images [B,3,H,W], got shape {tuple(images.shape)}")
    if bins < 1 or stripes < 1 or stripes > images.shape[2]:
        raise MetricAttackError(f"bins={bins} and stripes={stripes} must be ≥ 1 and stripes ≤ image height {images.shape[2]}")
    if color_space not in ("hsv", "rgb"):
        raise MetricAttackError(f"color_space must be 'hsv' or 'rgb', got {color_space!r}")
    x = images.detach().float().clamp(0.0, 1.0)
    if color_space == "hsv":
        x = rgb_to_hsv(x)
    q = (x * bins).long().clamp_(max=bins - 1)  # [B,3,H,W] bin per channel
    joint = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # [B,H,W]
    b, h, w = joint.shape
    band = (torch.arange(h, device=x.device) * stripes // h).view(1, h, 1)  # stripe of each row
    index = (band * bins**3 + joint).reshape(b, -1)
    hist = torch.zeros(b, stripes * bins**3, device=x.device).scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
    hist = hist.view(b, stripes, -1)
    hist = hist / hist.sum(dim=2, keepdim=True).clamp_min(1.0)
    hist = hist.reshape(b, -1)
    if sqrt:
        hist = hist.sqrt()
    return hist / hist.norm(dim=1, keepdim=True).clamp_min(1e-12)


class ColorHistogramExtractor(torch.nn.Module):
    """A parameter-free "model" for the colour-histogram baseline.

    ``forward(images [B,3,H,W] in [0,1]) -> [B, stripes * bins**3]`` unit rows, so it can be
    passed wherever a re-ID model is used for feature extraction (no ``input_size``: images
    keep their native size).
    """

    def __init__(self, color_space: str = "hsv", bins: int = 8, stripes: int = 6) -> None:
        super().__init__()
        self.color_space, self.bins, self.stripes = color_space, bins, stripes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return color_histogram_features(images, self.bins, self.stripes, self.color_space)
