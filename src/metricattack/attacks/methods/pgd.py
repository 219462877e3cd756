"""PGD (Madry et al., ICLR 2018): I-FGSM from a uniform random point of the ε-ball.

``x_0 = clip_[0,1](x + U(−ε, ε))``, the noise of image ``i`` drawn from its own generator
(``AttackProblem.generators("start")``, keyed by the seed and the image's index), so it does
not depend on the batch the image is in.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..ops import uniform_noise
from ..problem import AttackProblem
from .base import register_method
from .iterative import IterativeOptions, IterativeSignMethod


class PGDOptions(IterativeOptions):
    random_start: bool = Field(
        default=True, description="start from a uniform random point of the eps-ball (false: the clean image, as I-FGSM)"
    )


@register_method("pgd")
class PGD(IterativeSignMethod[PGDOptions]):
    label = "PGD"
    summary = "PGD: I-FGSM from a uniform random start in the ε-ball"
    Options = PGDOptions

    @property
    def first_gradient_at_clean(self) -> bool:
        return not self.options.random_start

    def start(self, problem: AttackProblem) -> torch.Tensor:
        if not self.options.random_start:
            return super().start(problem)
        noise = uniform_noise(problem.images, problem.generators("start"), problem.radius)
        return (problem.images + problem.mask * noise).clamp_(0.0, 1.0)
