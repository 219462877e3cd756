"""``classification`` (baseline): maximise the cross-entropy of each model's own classifier w.r.t.
the class it predicts for the clean image (test identities are not among the classifier's
classes); the same gallery images are attacked as in ``gallery``."""

from __future__ import annotations

from torch import nn

from ...metrics.distance import Metric
from ..objectives import ClassificationLoss, LossPart
from .base import Selection, SplitFeatures, register_threat
from .gallery import GalleryThreat


@register_threat("classification")
class ClassificationThreat(GalleryThreat):
    mode = "classification"
    summary = "baseline: attack each model's classifier on the gallery's images"
    objectives = ("cross_entropy",)
    needs_classifier = True

    def part(self, model: nn.Module, metric: Metric, features: SplitFeatures, selection: Selection, objective: str) -> LossPart:
        return ClassificationLoss(model)
