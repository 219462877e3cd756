"""``MetricAttack``: the adversarial metric attack of one batch, in one call.

The same engine as ``metricattack attack``, the defense and the benchmark
(:func:`~metricattack.attacks.perturb.perturb` over a
:class:`~metricattack.attacks.objectives.MetricLoss`), for images and reference features
held in memory: each image is pushed away from (``targeted=True``: pulled toward) its own
reference features under the chosen metric, inside the L∞ ball of radius ε and in [0,1].

Example::

    >>> import metricattack as ma
    >>> atk = ma.MetricAttack(model, eps=5)                      # I-FGSM, ε = 5/255, α = 1/255, 6 steps
    >>> adv = atk(gallery_images, probe_features)                # [B,3,H,W] in [0,1], within ε
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..compute import make_compute
from ..errors import MetricAttackError, MetricAttackWarning
from ..metrics.distance import Metric, build_metric
from ..metrics.learned import LEARNED_METRICS
from ..models.contract import check_model
from .objectives import MetricLoss, ReferenceTargets
from .perturb import perturb
from .problem import CallCounts, ModelInfo
from .spec import AttackSpec, make_spec

References = torch.Tensor | Sequence[torch.Tensor]


def as_metric(metric: Any) -> Metric:
    """``metric`` as a :class:`Metric`: a metric object, a fitted XQDA / KISSME result (its
    ``.metric``), or the name of a parameter-free metric (``"euclidean"``, ``"cosine"``)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(getattr(metric, "metric", None), Metric):  # LearnedFit of fit_xqda / fit_kissme / fit_learned
        return metric.metric
    if isinstance(metric, str):
        if metric.lower() in LEARNED_METRICS:
            raise MetricAttackError(
                f"metric {metric!r} must be fitted first: pass the fitted object (fit_learned_metric(...)) "
                "or load_metric('<model>.xqda.safetensors')"
            )
        return build_metric(metric)
    raise MetricAttackError(f"metric must be a metric name, a Metric or a fitted XQDA/KISSME result, got {type(metric).__name__}")


class MetricAttack:
    """Adversarial metric attack (Bai et al., Sec. 3) on any re-ID feature extractor.

    Args:
        model: an ``nn.Module`` mapping images ``[B,3,H,W]`` in [0,1] to features ``[B,D]``
            (any input size: the model resizes and normalises inside). Put in eval mode during
            the attack and returned to its previous mode; its weights get no gradient.
        metric: ``"euclidean"`` (squared, paper Eq. 3), ``"cosine"``, a
            :class:`~metricattack.metrics.distance.Metric` (e.g. a loaded XQDA file) or a fitted
            XQDA / KISSME result.
        method: ``"fgsm"`` (Eq. 5), ``"ifgsm"`` (Eq. 6), ``"mifgsm"`` (Eq. 7), ``"pgd"``, or
            another registered attack method (``metricattack.METHODS``).
        eps: L∞ radius ε in 0..255 pixel units.
        targeted: pull each image toward its references (Eq. 8) instead of pushing it away.
        seed: seeds the per-image randomness (PGD's random start); image ``i`` of a batch draws
            from ``(seed, i)``.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the model computes under
            autocast in that dtype (:mod:`metricattack.compute`); gradients, steps, projection and
            the result stay float32 (fp16: through a loss scale), so the result is within ε exactly.
        **options: the method's options, by name (``alpha``, ``steps``, ``mu``, ``random_start``, ...:
            ``METHODS.get(method).Options``; defaults: the paper's α = 1, n = min(ε + 4, 1.25 ε), μ = 1).

    Calling ``atk(images, references)``:

    * ``images``: ``[B,3,H,W]`` float in [0,1];
    * ``references``: ``[B,R,D]`` features, or a list of ``B`` tensors ``[R_i,D]`` (``R_i`` may
      differ, and 0 leaves image ``i`` unchanged), in the model's feature space: image ``i``
      maximises (targeted: minimises) the mean metric distance to its ``R_i`` references.

    Returns a new tensor ``[B,3,H,W]`` in [0,1] of ``images``' dtype with ``|adv − images| ≤ ε/255``
    exactly (the attack computes in float32; a float16 / bfloat16 / float64 result is re-projected in
    its own dtype, :func:`in_dtype`); the inputs are not modified; an empty batch gives an empty
    result. NaN or inf in the images, the references or the model's output is an error naming the
    image. Images left unchanged or with an exactly zero input gradient are named in a
    :class:`~metricattack.errors.MetricAttackWarning`; ``atk.counts`` holds the last call's per-image
    forward / backward passes and zero gradients. Round to the 1/255 grid with
    :func:`~metricattack.attacks.ops.quantize` before saving 8-bit images. The attack's own state and
    randomness are per image (PGD's start is keyed by the image's position in the batch), so with a
    model whose output for an image does not depend on the batch, the batching changes no image; a
    convolutional network's batched kernels can round differently with another batch size, which
    can flip the sign of near-zero gradient components and move some pixels by a step
    (measured in ``benchmarks/bench_batching.py``).

    Example::

        >>> atk = MetricAttack(model, eps=5)                      # non-targeted I-FGSM, ε = 5
        >>> same_id = query_feats[None].expand(len(gallery), -1, -1)   # [B, R, D]
        >>> adv = atk(gallery, same_id)
        >>> (adv - gallery).abs().max() <= 5 / 255
        tensor(True)
        >>> pull = MetricAttack(model, method="mifgsm", eps=8, targeted=True, metric=xqda)
        >>> adv = pull(gallery, [target_feats[i : i + 1] for i in range(len(gallery))])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        metric: Any = "euclidean",
        method: str = "ifgsm",
        eps: float = 5,
        targeted: bool = False,
        seed: int = 0,
        precision: str = "fp32",
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise MetricAttackError(f"MetricAttack needs an nn.Module mapping images to features, got {type(model).__name__}")
        self.model = model
        self.metric = as_metric(metric)
        if not isinstance(targeted, bool):
            raise MetricAttackError(f"MetricAttack: targeted must be True or False, got {targeted!r}")
        self.spec: AttackSpec = make_spec("MetricAttack", method=method, eps=eps, seed=seed, **options)
        self.compute = make_compute("MetricAttack", precision=precision)
        self.targeted = targeted
        self.counts: CallCounts | None = None

    def __repr__(self) -> str:
        s = self.spec
        options = "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v!r}" for k, v in s.options.model_dump().items())
        precision = "" if self.compute.is_default else f", precision={self.compute.precision!r}"
        return (
            f"MetricAttack(model={type(self.model).__name__}, metric={self.metric.name!r}, method={s.method!r}, "
            f"eps={s.eps:g}, targeted={self.targeted}, seed={s.seed}{precision}{options})"
        )

    def __call__(self, images: torch.Tensor, references: References) -> torch.Tensor:
        """Adversarial ``images`` (see the class docstring)."""
        _check_images(images)
        gradient = self.spec.build().uses_gradient
        check_model(self.model, device=images.device, purpose="attack", gradient=gradient)  # one message, not a traceback
        flat, ref_sets = _flatten_references(references, images.shape[0])
        if images.shape[0] == 0:
            self.counts = CallCounts.zeros(0)
            return images.detach().clone()
        targets = ReferenceTargets.build(self.metric, flat, ref_sets)
        loss = MetricLoss(self.model, self.metric, targets)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.compute.applied([self.model]):
                result = perturb(
                    images.detach().float(),
                    loss,
                    self.spec,
                    indices=torch.arange(images.shape[0]),
                    active=targets.active,
                    minimise=self.targeted,
                    models=(ModelInfo.of(self.model),),
                )
        finally:
            self.model.train(was_training)
        self.counts = result.counts
        _warn_unmoved(result.counts, targets.active, result.images, images)
        return in_dtype(result.images, images, self.spec.eps / 255.0)


def in_dtype(adversarial: torch.Tensor, original: torch.Tensor, radius: float) -> torch.Tensor:
    """``adversarial`` (computed in float32) in ``original``'s dtype, re-projected there so that
    ``|result − original| ≤ radius`` holds exactly (in float64 arithmetic) and ``result`` stays in [0,1]:
    after the cast, the clip into the ball is rounded in the output dtype, and any value it rounded
    outward is moved one representable step toward the original."""
    out = adversarial.to(original.dtype)
    if original.dtype == torch.float32:
        return out
    ref = original.detach()
    out = torch.minimum(torch.maximum(out, ref - radius), ref + radius).clamp_(0.0, 1.0)
    for _ in range(4):
        outside = (out.double() - ref.double()).abs() > radius
        if not bool(outside.any()):
            break
        out = torch.where(outside, torch.nextafter(out, ref), out)
    return out


def _warn_unmoved(counts: CallCounts, active: torch.Tensor, adversarial: torch.Tensor, images: torch.Tensor) -> None:
    """A zero gradient is never a silent no-op: warn naming the batch positions of attacked images it left unchanged."""
    unmoved = active & (adversarial.flatten(1) == images.detach().float().flatten(1)).all(1).cpu()
    zero = active & (counts.zero_gradient > 0)
    if bool(unmoved.any() or zero.any()):
        warnings.warn(
            f"MetricAttack: images {torch.nonzero(unmoved).flatten().tolist()} were left unchanged and images "
            f"{torch.nonzero(zero).flatten().tolist()} had an exactly zero input gradient at some step "
            "(per-image counts: the attack's .counts)",
            MetricAttackWarning,
            stacklevel=3,
        )


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise MetricAttackError(f"images must be a float tensor [B, 3, H, W] with values in [0, 1], got {shape}")
    finite = torch.isfinite(images.detach()).flatten(1).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise MetricAttackError(
            f"images {bad[:10].tolist()} contain NaN or inf pixels (image indices in the batch); images must be finite, in [0, 1]"
        )
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise MetricAttackError(
            f"images must have values in [0, 1] (pixels / 255, not normalised), got [{float(images.min()):.3g}, {float(images.max()):.3g}]"
        )


def _flatten_references(references: References, batch: int) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """All reference rows ``[ΣR_i, D]`` and, per image, the row indices of its references."""
    if isinstance(references, torch.Tensor):
        if references.dim() != 3:
            raise MetricAttackError(
                f"references must be [B, R, D] (R reference features per image) or a list of B tensors [R_i, D], "
                f"got shape {tuple(references.shape)}; for one reference per image use references[:, None]"
            )
        per_image: Sequence[torch.Tensor] = list(references)
    else:
        per_image = list(references)
    if len(per_image) != batch:
        raise MetricAttackError(f"got references for {len(per_image)} images but {batch} images")
    dims = {r.shape[-1] for r in per_image if isinstance(r, torch.Tensor) and r.dim() == 2}
    for i, refs in enumerate(per_image):
        if not isinstance(refs, torch.Tensor) or refs.dim() != 2 or len(dims) != 1:
            shape = tuple(refs.shape) if isinstance(refs, torch.Tensor) else type(refs).__name__
            raise MetricAttackError(f"references of image {i} must be a [R, D] tensor with the same D for every image, got {shape}")
    for i, refs in enumerate(per_image):
        if not bool(torch.isfinite(refs.detach()).all()):
            raise MetricAttackError(f"references of image {i} contain NaN or inf; reference features must be finite")
    sets, start = [], 0
    for refs in per_image:
        sets.append(tuple(range(start, start + refs.shape[0])))
        start += refs.shape[0]
    flat = torch.cat([r.detach().float() for r in per_image]) if per_image else torch.zeros(0, 0)
    return flat, sets
