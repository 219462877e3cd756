"""``goat``: guided online adversarial training with the furthest-negative attack (Bouniot et
al., "Vulnerability of Person Re-Identification Models to Metric Adversarial Attacks", CVPRW
2020; CEA-LIST/adv-reid ``utils/evaluation.py``).

Per batch, every image gets ``push_guides`` pushing guides: images of its identity drawn
uniformly (with replacement) from the *whole* training set, their features taken by the current
model; with ``pull`` (FNA), one pulling guide: the clean feature of the furthest image of
another identity in the batch. PGD maximises ``Σ_g ‖f(x') − f(g)‖² − ‖f(x') − f(pull)‖²``, and
the model is trained with the recipe's loss on the adversarial batch only (adv-reid), plus
``clean_weight`` × the recipe's loss on the clean batch. Our choices: guides are read without
augmentation, the attack runs in eval mode (adv-reid attacks the model in training mode), and
the pulling guide is the furthest image *of another identity* (adv-reid: of any other image).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ...attacks.spec import AttackSpec
from ...training.trainer import Losses, TrainingRun
from .base import AdversarialObjective, DefenseMethod, WithCleanTerm, inner_attack


class GOATSection(WithCleanTerm):
    """Settings of ``goat``. Defaults from adv-reid (``train.py`` ``--adv --push --pull``,
    ``create_adv_batch``): PGD from a random start, ε = 5, α = 1, 7 steps, 4 pushing guides, one
    pulling guide, the adversarial batch only."""

    attack: AttackSpec = inner_attack(method="pgd", eps=5.0, alpha=1.0, steps=7)
    push_guides: int = Field(4, ge=1, description="pushing guides per image (same identity, whole training set)")
    pull: bool = Field(True, description="pull toward the furthest other identity of the batch (FNA)")


class GOATObjective(AdversarialObjective[GOATSection]):
    def __init__(self, settings: GOATSection, run: TrainingRun) -> None:
        super().__init__(settings, run)
        by_label: dict[int, list[int]] = {}
        for index, label in enumerate(run.images.labels):
            by_label.setdefault(int(label), []).append(index)
        self.by_label = {label: torch.tensor(indices) for label, indices in by_label.items()}

    def guides(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, k, D]`` features of ``k`` images of each image's identity (eval mode, no augmentation)."""
        k = self.settings.push_guides
        chosen = []
        for label in labels.tolist():
            pool = self.by_label[int(label)]
            chosen.append(pool[torch.randint(len(pool), (k,), generator=self.generator)])
        images = self.run.images.plain(torch.cat(chosen).tolist()).to(labels.device)
        return self.clean_features(images).view(len(labels), k, -1)

    def losses(self, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, number: int) -> Losses:
        push = self.guides(labels)
        pull = torch.zeros_like(push[:, 0])
        use_pull = torch.zeros(len(labels), device=images.device)
        if self.settings.pull:
            clean = self.clean_features(images)
            d = torch.cdist(clean, clean).masked_fill(labels.unsqueeze(0) == labels.unsqueeze(1), -1.0)
            furthest = d.argmax(1)
            use_pull = (d.amax(1) >= 0).to(images.dtype)  # an image of another identity is in the batch
            pull = clean[furthest]

        def objective(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            f = self.model(x)
            return (f.unsqueeze(1) - push).pow(2).sum((1, 2)) - use_pull * (f - pull).pow(2).sum(1)

        adversarial = self.attack(images, objective)
        parts = {"adversarial": self.recipe(step, adversarial, labels, epoch)}
        return self.with_clean_term(parts, self.settings.clean_weight, step, images, labels, epoch)


METHOD = DefenseMethod(
    "guided online adversarial training: PGD pushes from same-identity guides and pulls toward the furthest negative",
    "GOAT",
    "goat",
    GOATSection,
    GOATObjective,
    "Bouniot et al., CVPRW 2020 (CEA-LIST/adv-reid)",
)
