"""TI-FGSM (Dong et al., "Evading Defenses to Transferable Adversarial Examples by Translation-Invariant
Attacks", CVPR 2019): every gradient smoothed by a Gaussian kernel W before the step.

``G = W ∗ ∇L(x_n)`` (a depthwise convolution, zero padding), then the momentum step of
:class:`~.iterative.MomentumSignMethod` (μ = 0, the default: the paper's TI-FGSM run for the
configured steps; ``steps=1, alpha=eps`` is its single-step form; μ = 1 is TI-MI-FGSM, and
``diversity_prob`` > 0 adds DI's input diversity (:mod:`.difgsm`): TI-DIM, the paper's strongest).

**The kernel follows the attacked models' input size.** The paper's kernel is 15 px wide on its
299 px inputs (Inception); a re-ID model sees 256×128 or 64×32 pixels, where 15 px would cover
half a 64×32 input's width. The kernel is defined at ``kernel_reference`` px (299) and scaled to
each attacked model's input ``h × w`` by ``√(h·w) / kernel_reference`` (the same share of the
input's area), then mapped to the attacked images' own pixels (the gradient lives there; the model
resizes them to ``h × w``): radius ``r_y = (kernel_size − 1)/2 · √(h·w)/ref · H/h`` rows and
``r_x = … · W/w`` columns (a 64×32 model: about 1 px, a 3×3 kernel, on 64×32 images). With several
models (an ensemble) the radii are the models' mean (they coincide when the models' inputs have
one aspect ratio); a model that takes any size counts as one whose input is the image. Weights
``exp(−(i²/σ_y² + j²/σ_x²)/2)`` for ``|i| ≤ round(r_y)``, ``|j| ≤ round(r_x)``, normalised to sum
1, with ``σ = r / nsig``.

Where torchattacks' ``TIFGSM`` (3.5.1) departs from the paper (we follow the paper; the parity
test, ``tests/test_transfer_boosters.py``, sets the options that reproduce torchattacks):

* its Gaussian spans ±3 σ (``nsig`` 3, as the authors' released code): σ = k/3 for a kernel of
  radius k; the paper (Sec. 3.3) sets σ = k/√3 so that the kernel's radius is k (``nsig`` √3
  here), a flatter kernel;
* its kernel is 15 px whatever the input size (``kernel_size`` at ``kernel_reference`` = the
  image's size reproduces it);
* it applies DI with p = 0.5 by default (``resize_rate`` 0.9); the paper's TI-FGSM has none
  (``diversity_prob`` 0 here), and DI's own departures apply (:mod:`.difgsm`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field

from ..problem import AttackProblem, ModelInfo
from .base import register_method
from .difgsm import DIOptions, InputDiversityMethod
from .iterative import Estimator


class TIOptions(DIOptions):
    """:class:`DIOptions` (input diversity off) + the translation-invariant kernel."""

    diversity_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="probability of DI's input transformation at a step (Dong et al.'s TI-FGSM: 0; their TI-DIM: 0.7 with mu=1)",
    )
    kernel_size: int = Field(
        default=15,
        ge=1,
        description="Gaussian kernel width in pixels at a kernel_reference-pixel input (Dong et al.: 15), scaled to each model's input size",
    )
    kernel_reference: int = Field(
        default=299, ge=1, description="input side in pixels at which kernel_size holds (Dong et al.'s 299 px Inception inputs)"
    )
    nsig: float = Field(
        default=math.sqrt(3.0),
        gt=0,
        allow_inf_nan=False,
        description="kernel radius in standard deviations (Dong et al. Sec. 3.3: sigma = radius/sqrt(3); their code and torchattacks: 3)",
    )


def kernel_radii(image_size: tuple[int, int], models: Sequence[ModelInfo], options: TIOptions) -> tuple[float, float]:
    """``(r_y, r_x)``: the kernel's radius in rows and columns of an ``image_size`` (H, W) image (module docstring)."""
    height, width = image_size
    half = (options.kernel_size - 1) / 2
    sizes = [m.input_size or image_size for m in models] or [image_size]
    rows = [half * math.sqrt(h * w) / options.kernel_reference * height / h for h, w in sizes]
    cols = [half * math.sqrt(h * w) / options.kernel_reference * width / w for h, w in sizes]
    return sum(rows) / len(rows), sum(cols) / len(cols)


def _gaussian(radius: float, nsig: float) -> torch.Tensor:
    """Unnormalised weights ``exp(−(i·nsig/radius)²/2)`` for ``|i| ≤ round(radius)`` (float64)."""
    extent = int(math.floor(radius + 0.5))
    if extent == 0:
        return torch.ones(1, dtype=torch.float64)
    steps = torch.arange(-extent, extent + 1, dtype=torch.float64) * (nsig / radius)
    return torch.exp(-(steps**2) / 2)


def translation_kernel(image_size: tuple[int, int], models: Sequence[ModelInfo], options: TIOptions) -> torch.Tensor:
    """The depthwise kernel ``[3,1,2·round(r_y)+1, 2·round(r_x)+1]`` (float32, sums to 1 per channel)."""
    r_y, r_x = kernel_radii(image_size, models, options)
    weights = torch.outer(_gaussian(r_y, options.nsig), _gaussian(r_x, options.nsig))
    kernel = (weights / weights.sum()).to(torch.float32)
    return kernel.expand(3, 1, *kernel.shape).contiguous()


@register_method("tifgsm")
class TIFGSM(InputDiversityMethod[TIOptions]):
    label = "TI-FGSM"
    summary = "TI-FGSM (Dong et al., CVPR 2019): I-FGSM on gradients smoothed by a Gaussian kernel scaled to the model's input size"
    Options = TIOptions
    quick_options = {"steps": 2}

    def estimator(self, problem: AttackProblem) -> Estimator:
        gradient = super().estimator(problem)
        image_size = (int(problem.images.shape[-2]), int(problem.images.shape[-1]))
        kernel = translation_kernel(image_size, problem.models, self.options).to(problem.images.device, problem.images.dtype)
        if kernel.shape[-2:] == (1, 1):
            return gradient
        return lambda x, point: F.conv2d(gradient(x, point), kernel, padding="same", groups=3)
