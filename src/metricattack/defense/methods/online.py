"""``online``: online adversarial training with push and pull guides (ours, in the spirit of GOAT).

Every batch gets adversarial copies made against the current model. Per image the maximised
objective is ``push·‖f(x') − c_same‖² − pull·‖f(x') − f_other‖²`` with ``c_same`` the mean
clean feature of the *other* same-identity images of the batch (its own clean feature when it
has none) and ``f_other`` the clean feature of one image of another identity of the batch,
drawn with the seeded generator (Bouniot et al., CVPRW 2020, use push and pull guides in the
same spirit; :mod:`.goat` is their published recipe). The loss is the recipe's loss on the
batch ``[clean; adversarial]`` (labels repeated).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ...attacks.spec import AttackSpec
from ...training.trainer import Losses
from .base import AdversarialObjective, DefenseMethod, InnerAttack, inner_attack, same_identity_centres

Guide = Literal["push", "pull"]
GUIDES: tuple[Guide, ...] = ("push", "pull")


class OnlineSection(InnerAttack):
    """Settings of ``online`` (all our choice): I-FGSM, ε = 2, α = 1, 2 steps, push and pull guides."""

    attack: AttackSpec = inner_attack(method="ifgsm", eps=2.0, alpha=1.0, steps=2)
    guides: list[Guide] = Field(default_factory=lambda: list(GUIDES), min_length=1)

    @model_validator(mode="after")
    def _unique_guides(self) -> OnlineSection:
        if len(set(self.guides)) != len(self.guides):
            raise ValueError(f"guides must not repeat, got {self.guides}")
        return self


def guide_references(features: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Push and pull references of every image of a batch.

    Args:
        features: ``[B, D]`` detached clean features; labels: ``[B]``.
    Returns:
        ``(push [B, D], pull [B, D])``: the mean feature of the other images of the same label
        (the image's own feature when it has none), and the feature of one image of another
        label drawn uniformly with ``generator`` (the image's own feature when there is none).
    """
    push = same_identity_centres(features, labels)
    different = (labels.unsqueeze(0) != labels.unsqueeze(1)).cpu()
    has = different.any(1)
    pull = features.clone()
    if has.any():
        drawn = torch.multinomial(different[has].double(), 1, generator=generator).squeeze(1)
        pull[has.to(features.device)] = features[drawn.to(features.device)]
    return push, pull


class OnlineObjective(AdversarialObjective[OnlineSection]):
    def losses(self, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, number: int) -> Losses:
        clean = self.clean_features(images)
        push, pull = guide_references(clean, labels, self.generator)
        use_push, use_pull = float("push" in self.settings.guides), float("pull" in self.settings.guides)

        def objective(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            f = self.model(x)
            return use_push * (f - push).pow(2).sum(1) - use_pull * (f - pull).pow(2).sum(1)

        adversarial = self.attack(images, objective)
        return self.run.losses(step(torch.cat([images, adversarial])), torch.cat([labels, labels]), epoch)


METHOD = DefenseMethod(
    "online adversarial training: every batch plus its copies pushed from same-identity and pulled toward other features",
    "online",
    "online",
    OnlineSection,
    OnlineObjective,
    "ours",
)
