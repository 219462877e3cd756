"""Attack one batch: an :class:`~.spec.AttackSpec`'s method on an objective, with the contract enforced.

:func:`perturb` builds the :class:`~.problem.AttackProblem`, runs the spec's method and returns
its images projected into the ε-ball and [0,1], inactive images restored bit for bit, with the
per-image call counts. Every attack in metricattack (the ``attack`` command, the benchmark, the
defense, :class:`~metricattack.MetricAttack`) goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import MetricAttackError
from .problem import AttackProblem, MethodResult, ModelInfo, Objective
from .spec import AttackSpec


def perturb(
    images: torch.Tensor,
    objective: Objective,
    spec: AttackSpec,
    *,
    indices: torch.Tensor,
    active: torch.Tensor | None = None,
    minimise: bool = False,
    models: Sequence[ModelInfo] = (),
) -> MethodResult:
    """Adversarial versions of ``images [B,3,H,W]`` in [0,1] (new tensors; the inputs are not modified).

    Args:
        objective: per-image losses ``(images, indices) -> [B]`` (:mod:`.problem`).
        spec: method, ε, seed and the method's options.
        indices: ``[B]`` the images' positions in the attacked split (or batch): passed to
            ``objective``, which looks up each image's references by them, and key each image's
            randomness. Required: a slice ``images[s:e]`` must say ``indices=arange(s, e)``, or it
            would be attacked toward the references of images ``0..e-s-1``.
        active: ``[B]`` bool; inactive images are returned unchanged. Default: all active.
        minimise: descend the objective (targeted threat models) instead of ascending it.
        models: what the method may know of the attacked models (input sizes).

    Returns the images and per-image counts (forward / backward passes, zero gradients).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise MetricAttackError(f"attack images must have shape [B, 3, H, W], got {tuple(getattr(images, 'shape', ()))}")
    batch = images.shape[0]
    if not isinstance(indices, torch.Tensor) or indices.shape != (batch,):
        raise MetricAttackError(f"indices must be a tensor [{batch}] (one position per image), got {getattr(indices, 'shape', indices)}")
    active = torch.ones(batch, dtype=torch.bool) if active is None else active.to("cpu", torch.bool)
    method = spec.build()
    original = images.detach()
    problem = AttackProblem(
        original,
        objective,
        indices=indices.to("cpu", torch.long),
        active=active,
        radius=spec.eps / 255.0,
        direction=-1.0 if minimise else 1.0,
        seed=spec.seed,
        models=tuple(models),
    )
    out = method.run(problem)
    if out.shape != original.shape:
        raise RuntimeError(f"attack method {spec.method} returned images of shape {tuple(out.shape)} for {tuple(original.shape)}")
    if not method.uses_gradient and bool(problem.counts.backward.any()):
        raise RuntimeError(f"attack method {spec.method} declares uses_gradient = False but took an input gradient")
    keep = active.to(original.device).view(-1, 1, 1, 1)
    adversarial = torch.where(keep, problem.project(out.detach()), original)
    return MethodResult(adversarial, problem.counts)
