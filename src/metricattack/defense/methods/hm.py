"""``hm``: hardness manipulation (Zhou & Patel, "Enhancing Adversarial Robustness for Deep
Metric Learning", CVPR 2022; robrank ``defenses/amd.py``, the ``ghmetsmi`` recipe).

Per batch: *source* triplets ``(a, p, n)`` are mined on the clean features (softhard, see
:mod:`.triplets`); each gets a destination hardness ``H*`` (hardness ``H = d(a,p) − d(a,n)``).
The inner attack perturbs all three images of every source triplet until its hardness reaches
``H*``: it minimises ``min(0, H(a',p',n') − H*)²`` (robrank's "ET" alignment; a triplet already
harder is left alone, its gradient is zero). The model is trained with the triplet loss
``max(0, H(a',p',n') + margin)`` on the perturbed triplets, plus ``ics_weight`` × the
intra-class structure term ``max(0, d(a, a') − d(a, p))`` (clean ``a, p``: the perturbed anchor
stays closer to its clean self than to its positive), all on retrieval features in training mode.

``H*``: with ``gradual`` (robrank's "gradual adversary"), ``−margin × min(1, max(0, L)/margin)``
with ``L`` the previous batch's adversarial triplet loss: easy targets while the model cannot
rank them, then up to the boundary ``H* = 0`` as its loss falls. Our choice: ``L`` starts at
``margin`` (robrank: 2.0, the same after clipping) at every epoch start, so a resumed run equals
an uninterrupted one. Without ``gradual``, the hardness of the anchor's *destination* triplet
(semihard by default) mined on the clean features.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ...attacks.spec import AttackSpec
from ...training.trainer import Losses
from .base import AdversarialObjective, DefenseMethod, WithCleanTerm, distances, inner_attack
from .triplets import NegativeRule, PositiveRule, hardness, mine_triplets, triplet_margin_loss


class HMSection(WithCleanTerm):
    """Settings of ``hm``. Defaults from robrank (``configs/configs_rank.py`` 224×224 datasets,
    ``defenses/amd.py``: ``ghmetsmi`` = gradual, ET, softhard source, semihard destination, ICS
    weight 0.5): I-FGSM from the clean image, ε = 8, α = 1, 32 steps, margin 0.2, the adversarial
    losses only."""

    attack: AttackSpec = inner_attack(method="ifgsm", eps=8.0, alpha=1.0, steps=32)
    margin: float = Field(0.2, gt=0, description="triplet margin on the retrieval features")
    source: PositiveRule = Field("softhard", description="how source triplets are mined (positives and negatives alike)")
    destination: NegativeRule = Field("semihard", description="negatives of the destination triplets (without gradual)")
    gradual: bool = Field(True, description="destination hardness from the previous batch's loss (gradual adversary)")
    ics_weight: float = Field(0.5, ge=0.0, description="weight of the intra-class structure term")


class HMObjective(AdversarialObjective[HMSection]):
    def losses(self, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, number: int) -> Losses:
        s, device = self.settings, images.device
        if number == 0:
            self.previous = s.margin
        clean = self.clean_features(images)
        rule: NegativeRule = "softhard" if s.source == "softhard" else "random"
        a, p, n = (t.to(device) for t in mine_triplets(clean, labels, self.generator, positive=s.source, negative=rule, margin=s.margin))
        if s.gradual:
            target = torch.full((a.numel(),), -s.margin * min(1.0, max(0.0, self.previous) / s.margin), device=device)
        else:
            _, dp, dn = (t.to(device) for t in mine_triplets(clean, labels, self.generator, negative=s.destination, margin=s.margin))
            target = hardness(clean[a], clean[dp], clean[dn])
        count = a.numel()
        rows = torch.cat([images[a], images[p], images[n]])  # [3T]: anchors, positives, negatives
        triplet = torch.arange(3 * count, device=device) % count

        def shortfall(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            f = self.model(x)
            h = hardness(f[:count], f[count : 2 * count], f[2 * count :])
            return (h - target).clamp(max=0.0).pow(2)[triplet]  # each triplet on its three rows

        adversarial = self.model(self.attack(rows, shortfall, minimise=True))
        adv_a, adv_p, adv_n = adversarial[:count], adversarial[count : 2 * count], adversarial[2 * count :]
        parts = {"adversarial": triplet_margin_loss(adv_a, adv_p, adv_n, s.margin)}
        self.previous = float(parts["adversarial"].detach())
        if s.ics_weight > 0:
            anchor_positive = self.model(torch.cat([images[a], images[p]]))
            clean_a, clean_p = anchor_positive[:count], anchor_positive[count:]
            parts["ics"] = s.ics_weight * torch.relu(distances(clean_a, adv_a) - distances(clean_a, clean_p)).mean()
        return self.with_clean_term(parts, s.clean_weight, step, images, labels, epoch)


METHOD = DefenseMethod(
    "hardness manipulation: train triplets an attack made as hard as a gradually rising target",
    "HM",
    "hm",
    HMSection,
    HMObjective,
    "Zhou & Patel, CVPR 2022 (robrank)",
    needs_pk=True,
)
