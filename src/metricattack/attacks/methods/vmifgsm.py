"""VMI-FGSM (Wang & He, "Enhancing the Transferability of Adversarial Attacks through Variance
Tuning", CVPR 2021): MI-FGSM whose gradient is tuned by the previous step's gradient variance.

``ĝ = ∇L(p_n)``, ``G = ĝ + v_n`` (then the momentum step of :class:`~.iterative.MomentumSignMethod`),
``v_{n+1} = (1/N) Σ_k ∇L(x_n + r_k) − ĝ`` with ``r_k ~ U[−β·ε, β·ε]^d``, ``v_0 = 0``; ``p_n = x_n``
(VMI), or the Nesterov look-ahead in a subclass with ``nesterov = True`` (the paper's VNI-FGSM: its
variance then uses the look-ahead gradient ĝ and neighbours of ``x_n``, as the authors' code and
torchattacks' ``VNIFGSM``). Neighbours are not clipped to [0, 1] (the
paper's sampling). The noise of image ``i`` comes from its own generator
(``problem.generators("variance")``), N draws of its shape per step. Cost: 1 + N forward +
backward passes per step, except the last, whose variance would never be used (N passes saved).

Where torchattacks' ``VMIFGSM`` / ``VNIFGSM`` (3.5.1) depart from the paper (we follow the paper;
the parity test, ``tests/test_transfer_boosters.py``, sets ``samples=5``): N = 5 by default (the
paper: 20); its noise is ``randn_like(x).uniform_(−βε, βε)`` (uniform, as the paper, after a
normal draw it discards: the same distribution, another stream); it also computes the last
step's unused variance.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..problem import AttackProblem
from .base import register_method
from .iterative import Estimator, MomentumOptions, MomentumSignMethod


class VarianceOptions(MomentumOptions):
    """:class:`MomentumOptions` + the neighbourhood of the variance."""

    mu: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="momentum decay μ (Wang & He: 1)")
    samples: int = Field(default=20, ge=1, description="neighbours N sampled per step for the variance (Wang & He: 20)")
    beta: float = Field(
        default=1.5, gt=0, allow_inf_nan=False, description="neighbourhood radius beta*eps, uniform in each pixel (Wang & He: 3/2)"
    )


def neighbourhood_noise(like: torch.Tensor, generators: list[torch.Generator], radius: float) -> torch.Tensor:
    """``U[−radius, radius]`` shaped like ``like [B,...]``; row ``i`` drawn (float32) from ``generators[i]``."""
    rows = [torch.empty(like.shape[1:], dtype=torch.float32).uniform_(-radius, radius, generator=gen) for gen in generators]
    return torch.stack(rows).to(like.device, like.dtype)


@register_method("vmifgsm")
class VMIFGSM(MomentumSignMethod[VarianceOptions]):
    label = "VMI-FGSM"
    summary = "VMI-FGSM (Wang & He, CVPR 2021): MI-FGSM on gradients tuned by their variance around the previous iterate"
    Options = VarianceOptions
    quick_options = {"steps": 2, "samples": 2}

    @property
    def first_gradient_at_clean(self) -> bool:
        """Only with one step: the first step's gradient is at the clean image, but the variance it
        samples in the neighbourhood gives the second step a direction of its own."""
        return self.options.step_and_count()[1] == 1

    def estimator(self, problem: AttackProblem) -> Estimator:
        samples, steps = self.options.samples, self.options.step_and_count()[1]
        radius = self.options.beta * problem.radius
        generators = problem.generators("variance")
        variance = torch.zeros_like(problem.images)
        step = 0

        def estimate(x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
            nonlocal variance, step
            step += 1
            grad = problem.gradient(point)
            tuned = grad + variance
            if step < steps:
                total = torch.zeros_like(grad)
                for _ in range(samples):
                    total = total + problem.gradient(x + neighbourhood_noise(x, generators, radius))
                variance = total / samples - grad
            return tuned

        return estimate
