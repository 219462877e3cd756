"""Models built to trip the robustness checks: a re-ID model behind an input transform that masks gradients.

Wrapping a model's forward with a non-differentiable input transform is a classic way to look
robust without being robust (Athalye et al., ICML 2018): a gradient attack sees a zero gradient
and does not move, while the model is as easy to fool as before. :class:`Preprocessed` wraps any
model ``f`` as ``f(T(x))`` with one of the :data:`TRANSFORMS`:

* ``jpeg``: JPEG compression at ``quality`` (PIL, 8-bit), no gradient through it;
* ``quantize``: 8-bit quantisation, rounding to ``levels`` (256) values per channel (``torch.round``: zero gradient);
* ``resize``: a resize chain, down to ``scale`` of the size and back (bilinear) with 8-bit
  rounding after each resize, as an image pipeline of uint8 images does: zero gradient;
* ``off-grid``: images off the 1/255 grid rounded to it (zero gradient there): attacks that stay on
  the grid (I-FGSM, MI-FGSM) see the gradient, those with a random start (PGD, APGD) do not;
* ``noise``: Gaussian noise of ``sigma`` (0..255 units) drawn anew at every forward pass: the
  features change between two passes of the same image.

Each has its counterpart that restores a useful gradient: BPDA (Backward Pass Differentiable
Approximation) for the deterministic ones, ``T(x)`` in the forward pass and a differentiable
stand-in ``A`` in the backward pass: ``T(x).detach() + (A(x) − A(x).detach())`` has the values of
``T(x)``, so the features, the losses and the ranking are the trapped model's own, and the gradient
``J_A(x)ᵀ ∇f(T(x))`` (writing it as ``A(x) + (T(x) − A(x)).detach()``, the approximation's forward
with a straight-through correction to the real output, is the same tensor with the same gradient).
``A`` is the identity for ``quantize`` and ``off-grid`` (``T`` moves a pixel by at most half a
level), the chain without its rounding for ``resize``, and for ``jpeg``
:func:`~.diffjpeg.differentiable_jpeg`, libjpeg's steps in torch with a surrogate derivative for the
rounding of the quantised DCT coefficients: a perturbation JPEG would remove (high frequencies,
chroma detail) gets little gradient. EOT
(Expectation over Transformation) for ``noise``, gradients averaged over several passes (the
attack's ``eot`` option), the model unchanged. :func:`counterpart` says which.

:data:`MINIATURE` is the protocol the traps are checked with in the tests and in
``benchmarks/bench_robustness_traps.py``: the versions' cascade and checks with budgets of seconds.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import MetricAttackError
from ..registry import Registry
from .diffjpeg import differentiable_jpeg
from .protocol import AttackStep, Protocol

MINIATURE = Protocol(
    version="miniature",
    epsilons=[8],
    cascade=[
        AttackStep(name="apgd-metric", method="apgd", objective="metric", steps=6, runs=2),
        AttackStep(name="apgd-margin-t", method="apgd", objective="margin-targeted", steps=6),
        AttackStep(name="apgd-self", method="apgd", objective="self", steps=6, runs=2),
        AttackStep(name="square", method="square", objective="margin", steps=20),
    ],
    reference_methods=["fgsm", "ifgsm"],
    sweep_epsilons=[4, 64],
    sweep_steps=4,
    eot=2,
)
"""The miniature protocol of the trap models' checks (the tests' and ``benchmarks/bench_robustness_traps.py``'s,
one definition): the versions' cascade (two starts of APGD on the metric and self losses, as theirs) with
6 APGD iterations and 20 Square queries, ε 8, the paper's FGSM and I-FGSM as reference attacks, a sweep at
ε 4 and 64 (4 iterations), 2 EOT samples. Too small for a robustness number (its ``convergence`` check
flags on clean models); it shows which checks a trap trips."""


def _to_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the 1/255 grid (as an 8-bit image would hold it), zero gradient."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """JPEG round trip of each image of ``x [B,3,H,W]`` (no gradient flows through it)."""
    out = []
    for image in x.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()))
    decoded = torch.stack(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0
    return decoded + 0.0 * x  # in the graph, with a zero gradient (as a rounding step gives)


def quantize(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """``round(x·(levels−1)) / (levels−1)``: ``levels`` grey levels per channel, zero gradient."""
    return torch.round(x.clamp(0.0, 1.0) * (levels - 1)) / (levels - 1)


def resize_chain(x: torch.Tensor, scale: float = 0.5, rounding: bool = True) -> torch.Tensor:
    """Down to ``scale`` of the size and back up (bilinear, antialiased down), 8-bit rounding after
    each (``rounding=False``: without it, differentiable: the chain's BPDA approximation)."""
    h, w = x.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    level = _to_uint8_levels if rounding else (lambda z: z)
    down = level(F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True))
    return level(F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False))


def smooth_resize_chain(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """:func:`resize_chain` without its rounding (the backward pass of its BPDA)."""
    return resize_chain(x, scale, rounding=False)


def off_grid(x: torch.Tensor, tolerance: float = 1e-3) -> torch.Tensor:
    """``x`` where it lies on the 1/255 grid (within ``tolerance`` of a level, in 0..255 units),
    rounded to it elsewhere (zero gradient there): only attacks whose iterates stay on the grid
    (I-FGSM and MI-FGSM with α = 1 from the clean image, Square with an integer ε) see the
    model's gradient; a random start does not."""
    levels = x * 255.0
    on = ((levels - torch.round(levels)).abs() < tolerance).flatten(1).all(1).view(-1, 1, 1, 1)
    return torch.where(on, x, _to_uint8_levels(x))


def noise(x: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    """``x + N(0, (σ/255)²)`` drawn anew at every call (global torch RNG), clipped to [0,1]."""
    return (x + torch.randn_like(x) * (sigma / 255.0)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Transform:
    """An input transform of :data:`TRANSFORMS`: ``apply(x, **options)``, and the attack that sees
    through it: ``"bpda"`` (the backward pass of ``approximation``, the identity by default) or ``"eot"``
    (average gradients)."""

    apply: Callable[..., torch.Tensor]
    counterpart: Literal["bpda", "eot"]
    summary: str
    approximation: Callable[..., torch.Tensor] | None = None
    """BPDA's differentiable stand-in for ``apply`` in the backward pass (None: the identity)."""


TRANSFORMS: Registry[Transform] = Registry("input transform")
"""Input transform name → :class:`Transform` (the trap models of the robustness checks)."""
TRANSFORMS.register("jpeg", Transform(jpeg, "bpda", "JPEG compression (quality 75), no gradient", approximation=differentiable_jpeg))
TRANSFORMS.register("quantize", Transform(quantize, "bpda", "8-bit quantisation (256 levels per channel), zero gradient"))
TRANSFORMS.register(
    "resize",
    Transform(resize_chain, "bpda", "resize to half size and back with 8-bit rounding, zero gradient", approximation=smooth_resize_chain),
)
TRANSFORMS.register("off-grid", Transform(off_grid, "bpda", "images off the 1/255 grid rounded to it (zero gradient there)"))
TRANSFORMS.register("noise", Transform(noise, "eot", "Gaussian noise (σ = 8/255) drawn at every forward pass"))


def counterpart(transform: str) -> Literal["bpda", "eot"]:
    """How an attack sees through ``transform``: ``"bpda"`` (wrap with ``bpda=True``) or ``"eot"`` (the attack's ``eot`` option)."""
    return TRANSFORMS.get(transform).counterpart


class Preprocessed(nn.Module):
    """``model(T(x))`` for a :data:`TRANSFORMS` name; ``bpda=True`` gives the same features with the
    transform's approximation (the identity by default) as ``T``'s backward pass. Carries the wrapped model's ``feature_dim`` and ``input_size``.

    Args:
        model: images ``[B,3,H,W]`` in [0,1] → features ``[B, D]``.
        transform: a :data:`TRANSFORMS` name.
        bpda: BPDA backward pass (for the deterministic transforms only).
        options: the transform's options (``quality``, ``levels``, ``scale``, ``sigma``).
    """

    def __init__(self, model: nn.Module, transform: str, *, bpda: bool = False, **options: Any) -> None:
        super().__init__()
        rule = TRANSFORMS.get(transform)
        if bpda and rule.counterpart != "bpda":
            raise MetricAttackError(f"the {transform} transform is random: attack it with EOT (eot > 1), not BPDA")
        self.model, self.transform, self.bpda, self.options = model, transform, bpda, dict(options)
        self.transform_fn, self.approximation = rule.apply, rule.approximation
        for name in ("feature_dim", "input_size", "num_classes"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transform_fn(x, **self.options)
        if self.bpda:
            a = x if self.approximation is None else self.approximation(x, **self.options)
            t = t.detach() + (a - a.detach())  # the values of T(x), the gradient of the approximation
        return self.model(t)

    def extra_repr(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"transform={self.transform!r}, bpda={self.bpda}" + (f", {options}" if options else "")
