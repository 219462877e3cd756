"""``opposite`` (ODFA, the opposite-direction feature attack of Zheng et al., "U-turn", IJCV 2022;
layumi/U_turn): drive each probe's features toward the opposite of its own clean features.

Like ``self``, the attacker holds only the probe and the model (no gallery, no label). Loss of
probe ``x`` (perturbed ``x'``): ``L = d(f(x'), −f(x))`` with ``d`` the attack metric, **minimised**
(U-turn descends the mean squared error between the L2-normalised feature and ``−f(x)``; for the
squared Euclidean metric on L2-normalised features it is ``2 + 2 cos(f(x'), f(x))``, so pulling
toward ``−f(x)`` turns the feature around). For every metric here ``−f(x)`` embeds to ``−e(f(x))``
(a linear projection or an L2 normalisation), so the reference is the opposite point in the
metric's own space too. It perturbs the **query** split (U-turn crafts adversarial queries),
ranked against the clean gallery; every probe is attacked (no label is read).

**Its gradient at the clean image is zero on L2-normalised features** (this toolkit's models by
default, and the cosine metric): on the unit sphere ``‖e' + e‖² = 4 − ‖e' − e‖²``, so ODFA is SMA
there (``self``, same loss up to a constant and a sign) and the clean feature, the point of the sphere
farthest from ``−e``, is a stationary point. U-turn's I-FGSM takes its first step from the sign of
round-off error in that gradient (about 1e-5 of the gradient inside the ball, measured on the test
fixture): a step that changes with the hardware, the batch and the library, and is exactly zero
for some images. So, as for ``self``, a method that takes its first gradient at the clean image
(FGSM, I-FGSM, MI-FGSM, TI-FGSM, PGD without its random start) is refused before any output
(``zero_gradient_at_clean``); PGD's random start, DI's transformed inputs, SI-NI's scale copies,
VMI/VNI's neighbourhood and methods without gradient move the probes. With features of free norm and
the Euclidean metric, or a Mahalanobis metric, the gradient there is not zero, but the threat model
is chosen before any feature is computed, so the refusal is the same.
"""

from __future__ import annotations

import torch
from torch import nn

from ...data.types import ReIDDataset
from ...metrics.distance import Metric
from ..objectives import LossPart, MetricLoss, ReferenceTargets
from .base import Selection, SplitFeatures, ThreatModel, register_threat
from .self import own_references


@register_threat("opposite")
class OppositeThreat(ThreatModel):
    mode = "opposite"
    summary = "ODFA: pull each probe's features toward the opposite of its own clean features (no gallery, no labels)"
    split = "query"
    references = "self"
    minimise = True
    zero_gradient_at_clean = True

    def select(self, dataset: ReIDDataset, seed: int) -> Selection:
        return Selection(torch.ones(len(dataset.query), dtype=torch.bool))

    def part(self, model: nn.Module, metric: Metric, features: SplitFeatures, selection: Selection, objective: str) -> LossPart:
        opposite = -features.query
        return MetricLoss(model, metric, ReferenceTargets.build(metric, opposite, own_references(len(opposite))))
