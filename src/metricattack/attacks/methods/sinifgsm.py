"""SI-NI-FGSM (Lin et al., "Nesterov Accelerated Gradient and Scale Invariance for Adversarial
Attacks", ICLR 2020): MI-FGSM with a Nesterov look-ahead, on gradients averaged over scale copies.

``p_n = x_n + α·μ·g_n`` (the look-ahead of :class:`~.iterative.MomentumSignMethod` with
``nesterov``), ``G = (1/m) Σ_{i<m} ∇_p L(S_i(p_n))`` with the scale copies ``S_i(p) = c + (p − c)/2^i``,
then ``g_{n+1} = μ·g_n + G/mean|G|`` and the step. ``S_0`` is the image itself. Cost: m forward +
backward passes per step.

Where torchattacks' ``SINIFGSM`` (3.5.1) departs from the paper (we follow the paper; the parity
test, ``tests/test_transfer_boosters.py``, sets ``scale_center=0`` to reproduce torchattacks):
the paper's ``S_i(x) = x/2^i`` acts on its [−1, 1] inputs, so pixel values shrink toward mid-grey
(``scale_center`` 0.5 in [0, 1] pixels); torchattacks divides [0, 1] pixels, shrinking them toward
black (``c = 0``).
"""

from __future__ import annotations

from functools import partial

import torch
from pydantic import Field

from ..problem import AttackProblem
from .base import register_method
from .iterative import Estimator, MomentumOptions, MomentumSignMethod


class SIOptions(MomentumOptions):
    """:class:`MomentumOptions` + the scale copies."""

    mu: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="momentum decay μ, also the look-ahead's (Lin et al.: 1)")
    scales: int = Field(default=5, ge=1, description="scale copies m: the gradient is averaged over S_i(x) for i < m (Lin et al.: 5)")
    scale_center: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description=(
            "copies S_i(x) = c + (x - c) / 2^i shrink pixel values toward c (Lin et al. divide their [-1, 1] inputs: "
            "mid-grey 0.5; torchattacks divides [0, 1] pixels: 0)"
        ),
    )


def scale_copy(images: torch.Tensor, exponent: int, center: float) -> torch.Tensor:
    """``S_i(x) = c + (x − c) / 2^i`` (differentiable)."""
    return center + (images - center) / 2**exponent


@register_method("sinifgsm")
class SINIFGSM(MomentumSignMethod[SIOptions]):
    label = "SI-NI-FGSM"
    summary = "SI-NI-FGSM (Lin et al., ICLR 2020): Nesterov look-ahead, gradients averaged over scaled copies"
    Options = SIOptions
    quick_options = {"steps": 2, "scales": 2}
    nesterov = True

    @property
    def first_gradient_at_clean(self) -> bool:
        """Only with one scale copy: the copies ``S_i(x)``, ``i ≥ 1``, are not the clean image."""
        return self.options.scales == 1

    def estimator(self, problem: AttackProblem) -> Estimator:
        copies, center = self.options.scales, self.options.scale_center

        def estimate(x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
            total = torch.zeros_like(point)
            for i in range(copies):
                transform = None if i == 0 else partial(scale_copy, exponent=i, center=center)  # S_0 is the image itself
                total = total + problem.gradient(point, transform=transform)
            return total / copies

        return estimate
