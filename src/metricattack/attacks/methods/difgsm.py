"""DI-FGSM (Xie et al., "Improving Transferability of Adversarial Examples with Input Diversity", CVPR 2019).

At every step, with probability p, an image's gradient is taken through a random transformation
T of its input instead of the input itself: T resizes the image to a random size between its own
and ``resize_rate`` times it (bilinear) and pads it, at a random offset, to ``resize_rate`` times
its size (the paper: 299 px resized to rnd ∈ [299, 330), padded to 330). The model then resizes
that input to its own input size as it does any image. The step is MI-FGSM's
(:class:`~.iterative.MomentumSignMethod`): μ = 0 (the default) is the paper's DI²-FGSM, μ = 1 its
M-DI²-FGSM.

Randomness, per image and step, from the image's own generator (``problem.generators("diversity")``),
in this order: the resized height ``rnd ∈ [lo, hi)``, the top padding ``∈ [0, hi − rnd)``, the left
padding and the coin ``U(0, 1) < p``; the resized width keeps the image's aspect ratio. Images whose
transformed inputs share a size are evaluated together (``problem.gradient(x[rows], rows, transform)``),
so the batching never changes a result.

Where torchattacks' ``DIFGSM`` (3.5.1) departs from the paper (we follow the paper; the parity test,
``tests/test_transfer_boosters.py``, sets the options that reproduce torchattacks):

* it shrinks (``resize_rate`` 0.9: rnd ∈ [0.9·W, W), padded back to W); the paper enlarges (330/299);
* it resizes to rnd × rnd from the image's *width*, which squashes a 2:1 pedestrian into a square;
  we keep the aspect ratio (identical on square images);
* it draws one transformation and one coin per batch; we draw them per image;
* it pads with 0 in [0, 1] pixels (black); the paper pads zeros in its [−1, 1] input space, i.e.
  mid-grey (``pad_value`` 0.5 here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from ..problem import AttackProblem
from .base import register_method
from .iterative import Estimator, MomentumOptions, MomentumSignMethod


class DIOptions(MomentumOptions):
    """:class:`MomentumOptions` (μ default 0) + the input-diversity transformation's parameters."""

    mu: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="momentum decay μ (Xie et al.: 0 is DI2-FGSM, the default; 1 is their M-DI2-FGSM)",
    )
    diversity_prob: float = Field(
        default=0.5, ge=0, le=1, description="probability p that an image's input is transformed at a step (Xie et al.: 0.5)"
    )
    resize_rate: float = Field(
        default=330 / 299,
        gt=0,
        le=4,
        allow_inf_nan=False,
        description=(
            "inputs are resized to a random size between their own and resize_rate times it, then padded to the larger "
            "(Xie et al.: 299 -> [299, 330) padded to 330, rate 330/299; below 1, e.g. torchattacks' 0.9, they shrink "
            "and are padded back to their own size)"
        ),
    )
    pad_value: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="padding pixel value (Xie et al. pad zeros in their [-1, 1] input space: mid-grey 0.5; torchattacks pads 0, black)",
    )

    @field_validator("resize_rate")
    @classmethod
    def _not_one(cls, value: float) -> float:
        if value == 1:
            raise ValueError("resize_rate 1 would never transform an input; to turn input diversity off, set diversity_prob=0")
        return value


@dataclass(frozen=True)
class Resize:
    """One image's transformation: resized to ``size`` (h, w), pasted at (``top``, ``left``) into ``out`` (h, w)."""

    size: tuple[int, int]
    top: int
    left: int
    out: tuple[int, int]

    def apply(self, image: torch.Tensor, pad_value: float) -> torch.Tensor:
        """``image [1,3,H,W]`` -> ``[1,3,out_h,out_w]``."""
        (h, w), (out_h, out_w) = self.size, self.out
        resized = F.interpolate(image, size=[h, w], mode="bilinear", align_corners=False)
        return F.pad(resized, [self.left, out_w - w - self.left, self.top, out_h - h - self.top], value=pad_value)


def _span(size: int, rate: float) -> tuple[int, int]:
    """``(lo, hi)``: resized sizes are drawn from ``[lo, hi)`` and padded to ``hi``."""
    other = int(size * rate)
    return min(size, other), max(size, other)


def draw_resize(generator: torch.Generator, height: int, width: int, options: DIOptions) -> Resize | None:
    """One image's draw (module docstring); None when its input stays as it is (the coin, or an image
    too small for ``resize_rate`` to change its height by a pixel)."""
    lo_h, hi_h = _span(height, options.resize_rate)
    lo_w, hi_w = _span(width, options.resize_rate)
    if hi_h <= lo_h:
        return None
    rnd_h = int(torch.randint(lo_h, hi_h, (1,), generator=generator))
    rnd_w = min(max(int(rnd_h * width / height + 0.5), lo_w), hi_w - 1) if hi_w > lo_w else width
    top = int(torch.randint(0, hi_h - rnd_h, (1,), generator=generator))
    left = int(torch.randint(0, hi_w - rnd_w, (1,), generator=generator)) if hi_w > rnd_w else 0
    if not bool(torch.rand(1, generator=generator) < options.diversity_prob):
        return None
    return Resize((rnd_h, rnd_w), top, left, (hi_h, hi_w))


def diverse_gradient(problem: AttackProblem, point: torch.Tensor, generators: list[torch.Generator], options: DIOptions) -> torch.Tensor:
    """The input gradient at ``point [B,3,H,W]``, each image's through its own random transformation
    (one call per group of images whose transformed inputs share a size)."""
    if options.diversity_prob == 0:
        return problem.gradient(point)
    height, width = point.shape[-2:]
    draws = [draw_resize(gen, height, width, options) for gen in generators]
    groups: dict[tuple[int, int] | None, list[int]] = {}
    for row, resize in enumerate(draws):
        groups.setdefault(None if resize is None else resize.out, []).append(row)
    grad = torch.empty_like(point)
    for out, members in groups.items():
        rows = torch.tensor(members, dtype=torch.long)
        chosen = [draws[row] for row in members]

        def transform(z: torch.Tensor, chosen: list[Resize | None] = chosen) -> torch.Tensor:
            return torch.cat([r.apply(z[j : j + 1], options.pad_value) for j, r in enumerate(chosen) if r is not None])

        grad[rows] = problem.gradient(point[rows], rows, None if out is None else transform)
    return grad


DIOptionsT = TypeVar("DIOptionsT", bound=DIOptions)


class InputDiversityMethod(MomentumSignMethod[DIOptionsT]):
    """MI-FGSM whose gradient is taken through per-image input diversity (DI, and TI on top of it)."""

    @property
    def first_gradient_at_clean(self) -> bool:
        """Only without diversity: with ``diversity_prob > 0`` an image's gradient is taken at its random
        transformation, whose features differ from the clean ones (an image whose every coin leaves its
        input as it is stays unchanged, its zero gradients counted)."""
        return self.options.diversity_prob == 0

    def estimator(self, problem: AttackProblem) -> Estimator:
        generators = problem.generators("diversity")
        return lambda x, point: diverse_gradient(problem, point, generators, self.options)


@register_method("difgsm")
class DIFGSM(InputDiversityMethod[DIOptions]):
    label = "DI-FGSM"
    summary = "DI-FGSM (Xie et al., CVPR 2019): I-FGSM (or MI-FGSM) through random resize-and-pad of the input"
    Options = DIOptions
    quick_options = {"steps": 2}
