"""The one image preprocessing path: every feature is ``model(images at native size)``.

Models resize with :func:`resize_to_input` inside their differentiable ``forward`` and then
normalise, so train, evaluate, fit-metric, attack, defend and benchmark see an image the same
way, and attacks take gradients through the resize. Training needs batches of one size from
images of mixed sizes (DukeMTMC-reID), so its loader calls the same :func:`resize_to_input` on
each image: the model then receives images at its input size and does not resize again, which
gives the same bits as resizing inside the model.

Resize: bilinear, ``align_corners=False``, antialiased (:data:`ANTIALIAS`). Antialiasing makes
a downscale average every source pixel (a triangle filter as wide as the scale factor) instead
of sampling two pixels per output pixel per axis, which is how PIL's bilinear resize (torchreid's
and fast-reid's test transform) works; it is differentiable. Measured on synthetic pedestrians at
128×64 shrunk to a 64×32 model input (``benchmarks/bench_resize.py``, ``benchmarks/RESULTS.md``):
antialiased, the resize is within one grey level of PIL's and a PIL-resizing victim scores our
white-box adversarial copy as we do (ResNet-50 mAP 1.08 vs 1.09); aliased, it differs by up to 44
grey levels and the attack is weaker against that victim than it looks to us (0.85 vs 2.56).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ANTIALIAS = True
"""Antialiased bilinear downscaling (see the module docstring for the measurement behind it)."""


def resize_to_input(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``images [B,3,H,W]`` in [0,1] to ``size = (h, w)``; unchanged when already that size.

    Differentiable; each image is resized on its own (a batch of one gives the same bits).
    The output stays in [0,1] (bilinear weights are non-negative and sum to 1).
    """
    height, width = int(size[0]), int(size[1])
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=ANTIALIAS)
