"""Square attack (Andriushchenko et al., ECCV 2020), L∞: random search with square updates, forward passes only.

A *scorer* ``score(images, indices) -> (losses [B], done [B])`` gives per-image losses to
ascend and whether an image has reached the attack's goal (its search stops there); it is called
under ``torch.no_grad()``, so the model is only ever run forward: the attack sees what a black-box
user sees (here, the features a model returns).

* start: vertical stripes, ``x⁽⁰⁾ = P(x + ε·s)`` with one random sign ``s`` per channel and column;
* iteration ``i``: a square of side ``h⁽ⁱ⁾`` (:func:`square_side`) at a uniformly random position,
  in which channel ``c`` of the current best image is moved by ``±2ε`` (one random sign per
  channel), then projected: the square's pixels land on ``x ± ε``. The candidate replaces the
  current best when its loss is higher, or when it reaches the goal;
* ``p`` (the share of pixels in a square) starts at ``p_init`` and halves at iterations 10, 50,
  200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000, rescaled to the number of iterations
  (:func:`square_fraction`).

Randomness is drawn per image from a generator seeded by ``(seed, indices[i])`` (:class:`SquareDraws`),
so an image's attack does not depend on its batch. Departures of torchattacks 3.5.1's ``Square``
(and of the authors' code) from the paper, where this module follows the paper: one square
position is drawn per iteration for the whole batch (here, per image), the position is drawn from
``{0, …, H − h − 1}`` (the paper: ``{0, …, H − h}``), and a square wider than a non-square image
(``h > W``) is not clipped to the image. ``tests/test_square.py`` replays torchattacks' random
draws through :class:`SquareDraws`' interface and checks the images are bit-identical.

Cost: ``1 + iterations`` forward passes per image at most (fewer once it is done); no backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import MetricAttackError

Scorer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

P_INIT = 0.8  # the authors' default share of the image in the first squares (L∞)
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # iterations (of 10,000) at which p halves


def square_fraction(iteration: int, iterations: int, p_init: float = P_INIT) -> float:
    """``p`` at ``iteration`` (0-based) of ``iterations``: ``p_init`` halved once per mark of
    :data:`HALVINGS` passed, the marks rescaled from 10,000 iterations (``i·10000 // iterations``)."""
    rescaled = iteration * 10_000 // iterations
    return p_init / 2 ** sum(rescaled > mark for mark in HALVINGS)


def square_side(p: float, height: int, width: int) -> int:
    """Side of a square covering a share ``p`` of a ``height × width`` image: ``round(√(p·H·W))``, in 1..min(H, W)."""
    return max(1, min(int(round(math.sqrt(p * (height * width)))), height, width))


class Draws(Protocol):
    """Where Square's randomness comes from (per image, see :class:`SquareDraws`)."""

    def stripes(self, shape: torch.Size) -> torch.Tensor:
        """``[B, C, 1, W]`` signs (±1) of the starting stripes."""
        ...

    def square(
        self, iteration: int, side: int, height: int, width: int, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the images ``rows`` of the batch still searching: top ``[b]``, left ``[b]`` (in
        ``0..H−side``, ``0..W−side``) and signs ``[b, C]`` of this iteration's squares."""
        ...


class SquareDraws:
    """Per-image random draws of a Square attack, made up front: image ``i`` uses a generator seeded
    by ``(seed, indices[i])`` for its stripes, then per iteration two uniforms (the square's position)
    and ``C`` signs, so its attack is the same in any batch."""

    def __init__(self, indices: torch.Tensor, iterations: int, channels: int, width: int, seed: int) -> None:
        stripes, uniforms, signs = [], [], []
        for index in indices.tolist():
            gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (1 << 62))
            stripes.append(torch.randint(0, 2, (channels, 1, width), generator=gen) * 2.0 - 1.0)
            uniforms.append(torch.rand((iterations, 2), generator=gen, dtype=torch.float64))
            signs.append(torch.randint(0, 2, (iterations, channels), generator=gen) * 2.0 - 1.0)
        self._stripes, self._uniforms, self._signs = torch.stack(stripes), torch.stack(uniforms), torch.stack(signs)

    def stripes(self, shape: torch.Size) -> torch.Tensor:
        return self._stripes

    def square(
        self, iteration: int, side: int, height: int, width: int, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u = self._uniforms[rows, iteration]
        top = (u[:, 0] * (height - side + 1)).long().clamp_(max=height - side)
        left = (u[:, 1] * (width - side + 1)).long().clamp_(max=width - side)
        return top, left, self._signs[rows, iteration]


def _project(x: torch.Tensor, original: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.clamp(torch.min(torch.max(x, original - eps), original + eps), 0.0, 1.0)


def _window(top: torch.Tensor, left: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    """``[b, 1, H, W]`` float mask of each image's square."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1).float()


@dataclass(frozen=True)
class SquareResult:
    """One Square run: ``best [B,3,H,W]`` (the output), its ``best_loss [B]``, ``done [B]`` (goal
    reached) and ``forwards [B]`` (forward passes spent per image, the start included)."""

    best: torch.Tensor
    best_loss: torch.Tensor
    done: torch.Tensor
    forwards: torch.Tensor


@torch.no_grad()
def square_run(
    score: Scorer,
    images: torch.Tensor,
    *,
    eps: float,
    iterations: int,
    indices: torch.Tensor,
    draws: Draws,
    p_init: float = P_INIT,
) -> SquareResult:
    """Square attack on ``images [B,3,H,W]`` in [0,1] (``eps`` in [0,1] units), see the module docstring."""
    if images.dim() != 4:
        raise MetricAttackError(f"Square needs images [B, C, H, W], got {tuple(images.shape)}")
    if iterations < 0:
        raise MetricAttackError(f"Square needs a non-negative number of iterations, got {iterations}")
    original = images.detach()
    _, channels, height, width = original.shape
    best = _project(original + eps * draws.stripes(original[:, :, :1].shape).to(original), original, eps)
    best_loss, done = score(best, indices)
    best_loss, done = best_loss.clone(), done.clone()
    forwards = torch.ones(original.shape[0], dtype=torch.long)
    for i in range(iterations):
        rows = torch.nonzero(~done).flatten()
        if rows.numel() == 0:
            break
        side = square_side(square_fraction(i, iterations, p_init), height, width)
        top, left, signs = draws.square(i, side, height, width, rows)
        delta = _window(top, left, side, height, width) * (2.0 * eps * signs.to(original)[:, :, None, None])
        candidate = _project(best[rows] + delta, original[rows], eps)
        loss, reached = score(candidate, indices[rows])
        accept = (loss > best_loss[rows]) | reached
        best_loss[rows] = torch.where(loss > best_loss[rows], loss, best_loss[rows])
        best[rows] = torch.where(accept.view(-1, 1, 1, 1), candidate, best[rows])
        done[rows] = reached
        forwards[rows] += 1
    return SquareResult(best, best_loss, done, forwards)
