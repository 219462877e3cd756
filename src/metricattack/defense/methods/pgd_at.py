"""``pgd-at``: PGD adversarial training (Madry et al., ICLR 2018) with a metric inner attack.

The inner maximisation moves each training image away, in feature space, from its identity:
PGD maximises ``‖f(x') − c_same‖²`` with ``c_same`` the mean clean feature of the *other*
images of its identity in the batch (its own clean feature when it has none: with the P×K
sampler every image has ``K − 1`` batch mates). The outer minimisation trains the recipe's loss
on the adversarial batch (Madry et al. train on adversarial examples only), plus
``clean_weight`` × the recipe's loss on the clean batch (0 by default).
"""

from __future__ import annotations

import torch
from torch import nn

from ...training.trainer import Losses
from .base import AdversarialObjective, DefenseMethod, WithCleanTerm, same_identity_centres


class PGDATSection(WithCleanTerm):
    """Settings of ``pgd-at``. Defaults: Madry et al.'s training attack (their CIFAR-10 recipe:
    PGD from a random start, ε = 8, α = 2, 7 steps) and adversarial examples only; the metric
    inner objective is our choice."""


class PGDATObjective(AdversarialObjective[PGDATSection]):
    def losses(self, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, number: int) -> Losses:
        centres = same_identity_centres(self.clean_features(images), labels)

        def objective(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return (self.model(x) - centres).pow(2).sum(1)

        adversarial = self.attack(images, objective)
        parts = {"adversarial": self.recipe(step, adversarial, labels, epoch)}
        return self.with_clean_term(parts, self.settings.clean_weight, step, images, labels, epoch)


METHOD = DefenseMethod(
    "PGD adversarial training: train on images pushed away from their identity's features",
    "PGD-AT",
    "pgd_at",
    PGDATSection,
    PGDATObjective,
    "Madry et al., ICLR 2018 (metric inner attack: ours)",
)
