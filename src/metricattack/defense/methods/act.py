"""``act``: the anti-collapse triplet defense (Zhou et al., "Adversarial Attack and Defense in
Deep Ranking", arXiv:2106.03614 / TPAMI 2024; robrank ``defenses/pnp.py``).

Per batch: triplets ``(a, p, n)`` are mined on the clean features (:mod:`.triplets`; random
positive and negative, as robrank's triplet loss); the inner attack perturbs each positive and
negative image to *collapse* them, minimising ``d(f(p'), f(n'))`` (both move, from the clean
images); the model is trained with the triplet loss ``max(0, d(a, p') − d(a, n') + margin)``
on the retrieval features of the clean anchors and the perturbed positives and negatives
(training mode), so that an adversary cannot make a positive and a negative look alike.
``clean_weight`` adds the recipe's own loss on the clean batch (robrank: none).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ...attacks.spec import AttackSpec
from ...training.trainer import Losses
from .base import AdversarialObjective, DefenseMethod, WithCleanTerm, distances, inner_attack
from .triplets import mine_triplets, triplet_margin_loss


class ACTSection(WithCleanTerm):
    """Settings of ``act``. Defaults from robrank (``configs/configs_rank.py``, its 224×224
    datasets; ``losses/triplet.py``): I-FGSM from the clean image (no random start), ε = 8,
    α = 1, 32 steps, triplet margin 0.2 on normalised features, the adversarial loss only."""

    attack: AttackSpec = inner_attack(method="ifgsm", eps=8.0, alpha=1.0, steps=32)
    margin: float = Field(0.2, gt=0, description="triplet margin on the retrieval features")


class ACTObjective(AdversarialObjective[ACTSection]):
    def losses(self, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, number: int) -> Losses:
        anchors, positives, negatives = mine_triplets(self.clean_features(images), labels, self.generator)
        device = images.device
        anchors, positives, negatives = anchors.to(device), positives.to(device), negatives.to(device)
        count = anchors.numel()
        pairs = torch.cat([images[positives], images[negatives]])  # [2T]: positives, then negatives
        partner = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(device)

        def collapse(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            f = self.model(x)
            return distances(f, f[partner])  # each pair counted twice: same gradient direction

        collapsed = self.attack(pairs, collapse, minimise=True)
        anchor_features, pair_features = self.model(images[anchors]), self.model(collapsed)
        parts = {"adversarial": triplet_margin_loss(anchor_features, pair_features[:count], pair_features[count:], self.settings.margin)}
        return self.with_clean_term(parts, self.settings.clean_weight, step, images, labels, epoch)


METHOD = DefenseMethod(
    "anti-collapse triplet: train triplets whose positive and negative an attack tried to collapse",
    "ACT",
    "act",
    ACTSection,
    ACTObjective,
    "Zhou et al., arXiv:2106.03614 (robrank)",
    needs_pk=True,
)
