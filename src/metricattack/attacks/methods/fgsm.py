"""FGSM (Goodfellow et al.; the paper's Eq. 5): one step of size ε along the gradient's sign.

``x' = clip_[0,1](x + ε·sign(∇L(x)))``.
"""

from __future__ import annotations

import torch

from ..problem import AttackProblem
from .base import AttackMethod, MethodOptions, register_method


@register_method("fgsm")
class FGSM(AttackMethod[MethodOptions]):
    label = "FGSM"
    summary = "FGSM (Eq. 5): one step of size ε"

    def run(self, problem: AttackProblem) -> torch.Tensor:
        grad = problem.gradient(problem.images)
        return (problem.images + problem.radius * problem.mask * grad.sign()).clamp_(0.0, 1.0)
