"""MI-FGSM (Dong et al., CVPR 2018; the paper's Eq. 7): I-FGSM on momentum-accumulated gradients.

``g_{n+1} = μ·g_n + ∇L(x_n) / mean|∇L(x_n)|`` with the mean over the pixels of *each image*
(its L1 norm / numel; a zero gradient stays zero), ``x_{n+1} = Ψ(x_n + α·sign(g_{n+1}))``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..ops import per_image_l1_normalise
from ..problem import AttackProblem
from .base import register_method
from .iterative import IterativeOptions, IterativeSignMethod, Updater


class MomentumOptions(IterativeOptions):
    mu: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="momentum decay μ (the paper's 1)")


@register_method("mifgsm")
class MIFGSM(IterativeSignMethod[MomentumOptions]):
    label = "MI-FGSM"
    summary = "MI-FGSM (Eq. 7): I-FGSM on momentum-accumulated gradients"
    Options = MomentumOptions

    def updater(self, problem: AttackProblem) -> Updater:
        momentum = torch.zeros_like(problem.images)
        mu = self.options.mu

        def update(x: torch.Tensor) -> torch.Tensor:
            nonlocal momentum
            momentum = mu * momentum + per_image_l1_normalise(problem.gradient(x))
            return momentum

        return update
