"""``self`` (SMA, the self metric attack of Bouniot et al., CVPR-W 2020; adv-reid's "embedding shift"):
push each probe's features away from its own clean features.

The attacker holds only the probe and the model: no gallery, no label, no other image. Loss of
probe ``x`` (perturbed ``x'``): ``L = d(f(x), f(x'))`` with ``d`` the attack metric (squared
Euclidean, cosine, Mahalanobis), maximised. It perturbs the **query** split, as adv-reid's
evaluation does, and is ranked against the clean gallery (the robustness protocol's
self-referenced attack, issue 21); every probe is attacked (labels are not read, so junk and
distractor probes too: the evaluation ignores probes without a true match).

The loss is at its minimum, 0, at the clean image, so its input gradient is exactly zero
there: a method that takes its first gradient at the clean image (FGSM, I-FGSM, MI-FGSM, PGD
with ``random_start=false``) would leave every image unchanged and is refused before any output
(:attr:`~metricattack.attacks.methods.base.AttackMethod.first_gradient_at_clean`); PGD's random
start (adv-reid runs SMA with advertorch's ``rand_init=True``), APGD's and methods that need no
gradient move the images.
"""

from __future__ import annotations

import torch
from torch import nn

from ...data.types import ReIDDataset
from ...metrics.distance import Metric
from ..objectives import LossPart, MetricLoss, ReferenceTargets
from .base import Selection, SplitFeatures, ThreatModel, register_threat


def own_references(count: int) -> list[tuple[int, ...]]:
    """Reference sets ``[(0,), (1,), ...]``: each image's only reference is itself."""
    return [(i,) for i in range(count)]


@register_threat("self")
class SelfThreat(ThreatModel):
    mode = "self"
    summary = "SMA: push each probe's features away from its own clean features (no gallery, no labels)"
    split = "query"
    references = "self"
    zero_gradient_at_clean = True

    def select(self, dataset: ReIDDataset, seed: int) -> Selection:
        return Selection(torch.ones(len(dataset.query), dtype=torch.bool))

    def part(self, model: nn.Module, metric: Metric, features: SplitFeatures, selection: Selection, objective: str) -> LossPart:
        return MetricLoss(model, metric, ReferenceTargets.build(metric, features.query, own_references(len(features.query))))
