"""Attack objectives: per-image losses on a metric (or a classifier), for one or many models.

**Metric loss.** Image ``x`` with a reference set ``R(x)`` (the probes it must move away
from or toward) has the loss ``L(x) = mean_{r ∈ R(x)} d(r, x)`` with ``d`` any
:class:`~metricattack.metrics.distance.Metric` (squared Euclidean Eq. 3, cosine, Mahalanobis
Eq. 4). The paper sums over probes; the mean differs by a positive factor per image, which
changes neither ``sign(∇)`` nor MI-FGSM's per-image normalised gradient, so the adversarial
images are the same, and the mean is a readable distance. Every ``Metric`` is
``d(r, x) = s‖e(r) − e(x)‖²`` with ``e = metric.embed``, hence exactly

    ``mean_r d(r, x) = s‖c − e(x)‖² + s·mean_r‖e(r) − c‖²``,  ``c = mean_r e(r)``,

so each image needs one centroid and one constant (:class:`ReferenceTargets`), computed once
per model from detached reference features: cost and memory do not grow with ``|R(x)|``.

**Reference sets** (which probes each image is measured against) are chosen by the threat
models (:mod:`metricattack.attacks.threats`); images with an empty reference set are not attacked.

**Classification baseline** (:class:`ClassificationLoss`): cross-entropy of the model's own
classifier w.r.t. the class it predicts on the clean image (test identities are not classes
of the classifier, so the prediction stands in for the label).

**Ensembles** (:class:`EnsembleLoss`): the mean of the per-model losses; each model embeds
images with its own input size and normalisation, and its features only meet its own
metric and reference features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..data.types import DISTRACTOR_PID, JUNK_PID
from ..errors import MetricAttackError
from ..metrics.distance import Metric

RefSets = list[tuple[int, ...]]


def as_list(values: Sequence[int] | torch.Tensor) -> list[int]:
    """Identity labels as a list of ints."""
    return values.tolist() if isinstance(values, torch.Tensor) else [int(v) for v in values]


def is_identity(pid: int) -> bool:
    """True for a real identity (not junk −1, not distractor 0)."""
    return pid not in (JUNK_PID, DISTRACTOR_PID)


class LossPart(Protocol):
    """One model's per-image loss: ``prepare(clean, indices)`` once per batch on the clean images
    (e.g. the classifier's predictions), then ``part(images, indices) -> [B]``."""

    def prepare(self, clean: torch.Tensor, indices: torch.Tensor) -> None: ...

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ReferenceTargets:
    """Per attacked image: centroid of its embedded references and their mean squared spread.

    Attributes:
        centroids: ``[N, k]`` ``c_i = mean_r e(r)`` (zeros when inactive).
        spreads: ``[N]`` ``s·mean_r ‖e(r) − c_i‖²`` (the constant part of the loss).
        active: ``[N]`` bool, False for an empty reference set.
        reference_dim: dimension D of the reference features (before ``metric.embed``).
    """

    centroids: torch.Tensor
    spreads: torch.Tensor
    active: torch.Tensor
    reference_dim: int = 0

    @classmethod
    def build(cls, metric: Metric, reference_features: torch.Tensor, ref_sets: RefSets) -> ReferenceTargets:
        """From detached ``reference_features [R, D]`` and one reference set per attacked image."""
        with torch.no_grad():
            metric.check_features(reference_features, "reference features")
            emb = metric.embed(reference_features.detach().float())
            centroids = emb.new_zeros((len(ref_sets), emb.shape[1]))
            spreads = emb.new_zeros(len(ref_sets))
            cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
            for i, refs in enumerate(ref_sets):
                if not refs:
                    continue
                if refs not in cache:
                    rows = emb[list(refs)]
                    c = rows.mean(0)
                    cache[refs] = (c, metric.scale * (rows - c).pow(2).sum(1).mean())
                centroids[i], spreads[i] = cache[refs]
        active = torch.tensor([bool(r) for r in ref_sets], dtype=torch.bool)
        return cls(centroids, spreads, active, int(reference_features.shape[1]))


class MetricLoss:
    """``L_i = mean_{r ∈ R(i)} d(r, model(x_i))`` for one model and its metric (see module docstring).

    With ``pull`` (a second reference set per image), ``L_i = mean_{r ∈ R(i)} d(r, f(x_i)) −
    mean_{r ∈ P(i)} d(r, f(x_i))``: pushed away from ``R(i)`` and pulled toward ``P(i)`` at once (the
    ``fna`` threat model); both are computed from one forward pass.
    """

    def __init__(self, model: nn.Module, metric: Metric, targets: ReferenceTargets, *, pull: ReferenceTargets | None = None) -> None:
        self.model, self.metric, self.targets, self.pull = model, metric, targets, pull

    def prepare(self, clean: torch.Tensor, indices: torch.Tensor) -> None:
        """Nothing to prepare: the references are fixed."""

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        features = self.model(images)
        if features.dim() != 2 or features.shape[0] != images.shape[0]:
            raise MetricAttackError(
                f"the model returned features of shape {tuple(features.shape)} for {images.shape[0]} images; expected [B, D]"
            )
        emb = self.metric.embed(features)
        loss = self._mean_distance(self.targets, emb, features.shape[1], indices)
        return loss if self.pull is None else loss - self._mean_distance(self.pull, emb, features.shape[1], indices)

    def _mean_distance(self, targets: ReferenceTargets, emb: torch.Tensor, dim: int, indices: torch.Tensor) -> torch.Tensor:
        """``[B]`` mean distance of the embedded features ``emb`` to each image's references in ``targets``."""
        if emb.shape[1] != targets.centroids.shape[1]:
            raise MetricAttackError(
                f"the model gives {dim}-d features but the references are "
                f"{targets.reference_dim}-d; references must be features of the attacked model"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(targets.active)):
            raise MetricAttackError(
                f"image indices {int(indices.min())}..{int(indices.max())} are outside the {len(targets.active)} "
                "images this loss has references for (pass each image's index in the attacked split)"
            )
        idx = indices.to(targets.centroids.device)
        centroids = targets.centroids[idx].to(emb.device, emb.dtype)
        spreads = targets.spreads[idx].to(emb.device, emb.dtype)
        return self.metric.scale * (emb - centroids).pow(2).sum(1) + spreads


class ClassificationLoss:
    """Cross-entropy of ``model.classify`` w.r.t. its prediction on the clean image (I-FGSM baseline)."""

    def __init__(self, model: nn.Module) -> None:
        classify = getattr(model, "classify", None)
        if not callable(classify):
            raise MetricAttackError(
                f"the classification attack needs a model with a classifier (classify()); {type(model).__name__} has none"
            )
        self.model = model
        self.classify: Callable[[torch.Tensor], torch.Tensor] = classify
        self.labels: dict[int, int] = {}

    @torch.no_grad()
    def prepare(self, clean: torch.Tensor, indices: torch.Tensor) -> None:
        """Record the predicted class of each clean image of the batch."""
        predicted = self.classify(clean).argmax(1).tolist()
        self.labels.update(zip(indices.tolist(), predicted, strict=True))

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        try:
            labels = torch.tensor([self.labels[i] for i in indices.tolist()], device=images.device)
        except KeyError as exc:
            raise MetricAttackError(f"classification loss: image {exc.args[0]} was not prepared on its clean version") from None
        return F.cross_entropy(self.classify(images), labels, reduction="none")


class EnsembleLoss:
    """Mean of per-model losses (paper Sec. 3.4.3); one part is just that part's loss."""

    def __init__(self, parts: Sequence[LossPart]) -> None:
        if not parts:
            raise MetricAttackError("an attack needs at least one model")
        self.parts = list(parts)

    def prepare(self, clean: torch.Tensor, indices: torch.Tensor) -> None:
        for part in self.parts:
            part.prepare(clean, indices)

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        total = self.parts[0](images, indices)
        for part in self.parts[1:]:
            total = total + part(images, indices)
        return total / len(self.parts)


def metrics_per_model(models: Sequence[nn.Module], metrics: Metric | Sequence[Metric]) -> list[Metric]:
    """One metric per model: a shared metric is repeated, a list must match ``models``.

    Raises MetricAttackError when a metric that needs one feature space (``feature_dim``, e.g.
    a Mahalanobis matrix of size D) is given a model whose features have another dimension.
    """
    if isinstance(metrics, Metric):
        metrics = [metrics] * len(models)
    metrics = list(metrics)
    if len(metrics) != len(models):
        raise MetricAttackError(f"got {len(metrics)} metrics for {len(models)} models; give one shared metric or one per model")
    for i, (model, metric) in enumerate(zip(models, metrics, strict=True)):
        dim = getattr(model, "feature_dim", None)
        if metric.feature_dim is not None and dim is not None and int(dim) != metric.feature_dim:
            dims = ", ".join(str(getattr(m, "feature_dim", "?")) for m in models)
            raise MetricAttackError(
                f"metric {metric.name!r} works in one {metric.feature_dim}-d feature space but model {i} gives "
                f"{dim}-d features (model feature dims: {dims}); use one metric per model or a metric without a fixed dimension"
            )
    return metrics
