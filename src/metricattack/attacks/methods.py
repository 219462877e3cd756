"""FGSM, I-FGSM, MI-FGSM and PGD as one stepper over a per-image objective (the flags of :class:`~.spec.AttackMethod`).

An *objective* is any callable ``objective(images [B,3,H,W], indices [B]) -> losses [B]``
where ``losses[i]`` depends on image ``i`` only (models in eval mode), so a batch can mix
images of many identities. :func:`perturb` ascends the objective (descends it when
``minimise``, the targeted attack of Eq. 8) inside the L∞ ball of radius ε and in [0,1]:

* FGSM (Eq. 5):   ``x' = clip(x + ε·sign(∇))``, one step of size ε;
* I-FGSM (Eq. 6): ``x_{n+1} = Ψ(x_n + α·sign(∇))``;
* MI-FGSM (Eq. 7): ``g_{n+1} = μ·g_n + ∇ / mean|∇|`` with the mean over the pixels of *each
  image* (its L1 norm / numel), then ``x_{n+1} = Ψ(x_n + α·sign(g_{n+1}))``;
* PGD: I-FGSM from ``x + U(−ε, ε)``; the noise of image ``i`` comes from a generator seeded by
  ``(seed, indices[i])``, so it does not depend on which batch the image is in.

``Ψ`` clips to ``[x − ε, x + ε] ∩ [0, 1]``. Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import MetricAttackError
from .spec import AttackSpec

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# mean |gradient| below this counts as a zero gradient (MI-FGSM normalisation).
_TINY = 1e-30


def project(x: torch.Tensor, original: torch.Tensor, eps: float) -> torch.Tensor:
    """``Ψ``: clip ``x`` into the L∞ ball of radius ``eps`` (in [0,1] units) around ``original`` and into [0,1]."""
    return torch.minimum(torch.maximum(x, original - eps), original + eps).clamp_(0.0, 1.0)


def input_gradient(objective: Objective, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``∂ Σ_i objective(x, indices)_i / ∂x`` (``[B,3,H,W]``); model weights get no gradient."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = objective(x, indices)
        if losses.shape != (x.shape[0],):
            raise MetricAttackError(f"an attack objective must return one loss per image, shape [{x.shape[0]}], got {tuple(losses.shape)}")
        (grad,) = torch.autograd.grad(losses.sum(), x)
    return grad


def per_image_l1_normalise(grad: torch.Tensor) -> torch.Tensor:
    """``grad / mean|grad|`` with the mean over each image's own pixels (zero gradients stay zero)."""
    scale = grad.abs().mean(dim=tuple(range(1, grad.dim())), keepdim=True)
    return grad / scale.clamp_min(_TINY)


def random_start_noise(like: torch.Tensor, indices: torch.Tensor, seed: int, eps: float) -> torch.Tensor:
    """Uniform noise in ``[−eps, eps]`` shaped like ``like``; image ``i`` seeded by ``(seed, indices[i])``."""
    rows = []
    for index in indices.tolist():
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (1 << 62))
        rows.append(torch.rand(like.shape[1:], generator=gen, dtype=torch.float32))
    return (torch.stack(rows).to(like.device, like.dtype) * 2.0 - 1.0) * eps


def perturb(
    images: torch.Tensor,
    objective: Objective,
    spec: AttackSpec,
    *,
    indices: torch.Tensor,
    active: torch.Tensor | None = None,
    minimise: bool = False,
) -> torch.Tensor:
    """Adversarial versions of ``images [B,3,H,W]`` in [0,1] (a new tensor).

    Args:
        objective: per-image losses, see the module docstring.
        spec: method, ε, α, steps, μ, random start, seed.
        indices: ``[B]`` the images' positions in the attacked split (or batch): passed to
            ``objective``, which looks up each image's references by them, and seed PGD's
            noise. Required: a slice ``images[s:e]`` must say ``indices=arange(s, e)``, or it
            would be attacked toward the references of images ``0..e-s-1``.
        active: ``[B]`` bool; inactive images are returned unchanged. Default: all active.
        minimise: descend the objective (targeted attack) instead of ascending it.

    For one batch of images with their own reference features, :class:`~metricattack.MetricAttack`
    does all of this in one call.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise MetricAttackError(f"attack images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    batch = images.shape[0]
    if not isinstance(indices, torch.Tensor) or indices.shape != (batch,):
        raise MetricAttackError(f"indices must be a tensor [{batch}] (one position per image), got {getattr(indices, 'shape', indices)}")
    active = torch.ones(batch, dtype=torch.bool) if active is None else active
    mask = active.to(images.device, images.dtype).view(-1, 1, 1, 1)
    original = images.detach()
    eps, alpha = spec.eps / 255.0, spec.alpha / 255.0
    direction = -1.0 if minimise else 1.0

    rule = spec.rule
    x = original.clone()
    if spec.uses_random_start:
        x = (original + mask * random_start_noise(original, indices, spec.seed, eps)).clamp_(0.0, 1.0)
    momentum = torch.zeros_like(original) if rule.momentum else None
    for _ in range(spec.num_steps):
        grad = input_gradient(objective, x, indices)
        if rule.single_step:
            return (original + (direction * eps) * mask * grad.sign()).clamp_(0.0, 1.0)
        if momentum is not None:
            momentum = spec.mu * momentum + per_image_l1_normalise(grad)
            grad = momentum
        x = project(x + (direction * alpha) * mask * grad.sign(), original, eps)
    return x.detach()


def quantize(adversarial: torch.Tensor, original: torch.Tensor, eps: float) -> torch.Tensor:
    """``uint8`` pixels of ``adversarial`` rounded to the 1/255 grid and re-projected.

    ``original`` must lie on the grid (decoded 8-bit images); every returned pixel differs
    from ``round(255·original)`` by at most ``⌊ε⌋`` (ε in 0..255 units) and lies in 0..255.
    """
    base = original.detach().mul(255.0).round()
    radius = float(int(eps + 1e-6))
    q = adversarial.detach().mul(255.0).round()
    q = torch.minimum(torch.maximum(q, base - radius), base + radius).clamp_(0.0, 255.0)
    return q.to(torch.uint8)


def linf_255(adversarial: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image L∞ distance ``[B]`` in 0..255 units."""
    diff = (adversarial.detach().float() - original.detach().float()).abs() * 255.0
    return diff.flatten(1).amax(dim=1)
