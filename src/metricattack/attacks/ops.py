"""Pure tensor helpers every attack method is built on (no state, no model).

Shapes: images ``[B,3,H,W]`` in [0,1]; radii in [0,1] pixel units (ε/255) unless a name says
``_255``. Inputs are never modified.

* :func:`project` -- ``Ψ``: clip into the L∞ ball around the clean images and into [0,1];
* :func:`per_image_l1_normalise` -- ``g / mean|g|`` over each image's own pixels (MI-FGSM);
* :func:`image_seed` / :func:`image_generators` / :func:`uniform_noise` -- randomness keyed by
  ``(seed, image index, purpose)``, so an image's draws never depend on its batch;
* :func:`quantize` / :func:`linf_255` -- the 1/255 grid of saved images and measured L∞.
"""

from __future__ import annotations

import hashlib

import torch

from ..errors import MetricAttackError

# mean |gradient| below this counts as a zero gradient (MI-FGSM normalisation).
_TINY = 1e-30
_SEED_MODULUS = 1 << 62


def project(x: torch.Tensor, original: torch.Tensor, radius: float) -> torch.Tensor:
    """``Ψ``: clip ``x`` into the L∞ ball of ``radius`` (in [0,1] units) around ``original`` and into [0,1] (a new tensor)."""
    return torch.minimum(torch.maximum(x, original - radius), original + radius).clamp_(0.0, 1.0)


def per_image_l1_normalise(grad: torch.Tensor) -> torch.Tensor:
    """``grad / mean|grad|`` with the mean over each image's own pixels (zero gradients stay zero)."""
    scale = grad.abs().mean(dim=tuple(range(1, grad.dim())), keepdim=True)
    return grad / scale.clamp_min(_TINY)


def image_seed(seed: int, index: int, purpose: str) -> int:
    """The seed of image ``index``'s generator for ``purpose`` (e.g. ``"start"``, ``"restart-2"``, ``"squares"``).

    ``"start"`` keeps the key PGD's random start has always used, ``(seed·1000003 + index) mod 2⁶²``,
    so PGD's images are unchanged; every other purpose hashes ``(seed, index, purpose)`` (SHA-256),
    so two purposes of one image draw independent streams.
    """
    if purpose == "start":
        return (int(seed) * 1_000_003 + int(index)) % _SEED_MODULUS
    digest = hashlib.sha256(f"{int(seed)}/{int(index)}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % _SEED_MODULUS


def image_generators(seed: int, indices: torch.Tensor, purpose: str) -> list[torch.Generator]:
    """One fresh CPU generator per image, seeded by :func:`image_seed` ``(seed, indices[i], purpose)``."""
    return [torch.Generator().manual_seed(image_seed(seed, index, purpose)) for index in indices.tolist()]


def uniform_noise(like: torch.Tensor, generators: list[torch.Generator], radius: float) -> torch.Tensor:
    """Uniform noise in ``[−radius, radius]`` shaped like ``like [B,...]``; row ``i`` drawn (float32) from ``generators[i]``."""
    rows = [torch.rand(like.shape[1:], generator=gen, dtype=torch.float32) for gen in generators]
    return (torch.stack(rows).to(like.device, like.dtype) * 2.0 - 1.0) * radius


def quantize(adversarial: torch.Tensor, original: torch.Tensor, eps: float) -> torch.Tensor:
    """``uint8`` pixels of ``adversarial`` rounded to the 1/255 grid and re-projected.

    ``original`` must lie on the grid (decoded 8-bit images); every returned pixel differs
    from ``round(255·original)`` by at most ``⌊ε⌋`` (ε in 0..255 units) and lies in 0..255.
    A NaN, infinite, negative or bool ``eps`` is a MetricAttackError.
    """
    if isinstance(eps, bool) or not (isinstance(eps, int | float) and 0 <= eps < float("inf")):
        raise MetricAttackError(f"quantize: eps must be a finite number >= 0 in 0..255 units, got {eps!r}")
    base = original.detach().mul(255.0).round()
    radius = float(int(eps + 1e-6))
    q = adversarial.detach().mul(255.0).round()
    q = torch.minimum(torch.maximum(q, base - radius), base + radius).clamp_(0.0, 255.0)
    return q.to(torch.uint8)


def linf_255(adversarial: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image L∞ distance ``[B]`` in 0..255 units."""
    diff = (adversarial.detach().float() - original.detach().float()).abs() * 255.0
    return diff.flatten(1).amax(dim=1)
