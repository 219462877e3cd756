"""Square attack (Andriushchenko et al., ECCV 2020), L∞: random search with square updates, forward passes only.

Square evaluates only :meth:`~metricattack.attacks.problem.AttackProblem.loss_and_done` (forward
passes, no gradient): the problem's signed loss, to ascend, and per image whether it has reached
the objective's goal (an objective with a ``score`` method says, e.g. a probe's AP at chance;
otherwise never), where its search stops. The model is only ever run forward: the attack sees
what a black-box user sees (here, the features a model returns).

* start: vertical stripes, ``x⁽⁰⁾ = P(x + ε·s)`` with one random sign ``s`` per channel and column;
* iteration ``i``: a square of side ``h⁽ⁱ⁾`` (:func:`square_side`) at a uniformly random position,
  in which channel ``c`` of the current best image is moved by ``±2ε`` (one random sign per
  channel), then projected: the square's pixels land on ``x ± ε``. The candidate replaces the
  current best when its loss is higher, or when it reaches the goal;
* ``p`` (the share of pixels in a square) starts at ``p_init`` and halves at iterations 10, 50,
  200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000, rescaled to the number of iterations
  (:func:`square_fraction`).

Randomness is drawn per image from ``problem.generators("square")`` (:class:`SquareDraws`), so an
image's attack does not depend on its batch. Departures of torchattacks 3.5.1's ``Square``
(and of the authors' code) from the paper, where this module follows the paper: one square
position is drawn per iteration for the whole batch (here, per image), the position is drawn from
``{0, …, H − h − 1}`` (the paper: ``{0, …, H − h}``), and a square wider than a non-square image
(``h > W``) is not clipped to the image. ``tests/test_square.py`` replays torchattacks' random
draws through :class:`SquareDraws`' interface and checks the images are bit-identical.

The registered method ``square`` (:class:`Square`, ``uses_gradient = False``) runs ``queries``
iterations. Cost: ``1 + queries`` forward passes per image at most (fewer once it is done); no
backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from pydantic import Field

from ...errors import MetricAttackError
from ..problem import AttackProblem
from .base import AttackMethod, MethodOptions, register_method

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
    """Per-image random draws of a Square attack, made up front from one generator per image
    (``problem.generators("square")``): its stripes, then per iteration two uniforms (the square's
    position) and ``C`` signs, so its attack is the same in any batch."""

    def __init__(self, generators: list[torch.Generator], iterations: int, channels: int, width: int) -> None:
        stripes, uniforms, signs = [], [], []
        for gen in generators:
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


def _window(top: torch.Tensor, left: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    """``[b, 1, H, W]`` float mask of each image's square."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1).float()


@dataclass(frozen=True)
class SquareResult:
    """One Square run: ``best [B,3,H,W]`` (the output), its ``best_loss [B]`` and ``done [B]`` (goal reached)."""

    best: torch.Tensor
    best_loss: torch.Tensor
    done: torch.Tensor


@torch.no_grad()
def square_run(problem: AttackProblem, *, iterations: int, draws: Draws, p_init: float = P_INIT) -> SquareResult:
    """Square attack on ``problem`` (ε = ``problem.radius``), see the module docstring."""
    if iterations < 0:
        raise MetricAttackError(f"Square needs a non-negative number of iterations, got {iterations}")
    original = problem.images
    _, channels, height, width = original.shape
    eps = problem.radius
    best = problem.project(original + eps * draws.stripes(original[:, :, :1].shape).to(original))
    best_loss, done = problem.loss_and_done(best)
    best_loss, done = best_loss.clone(), done.clone()
    for i in range(iterations):
        rows = torch.nonzero(~done).flatten()
        if rows.numel() == 0:
            break
        side = square_side(square_fraction(i, iterations, p_init), height, width)
        top, left, signs = draws.square(i, side, height, width, rows)
        delta = _window(top, left, side, height, width) * (2.0 * eps * signs.to(original)[:, :, None, None])
        candidate = problem.project(best[rows] + delta, rows)
        loss, reached = problem.loss_and_done(candidate, rows)
        accept = (loss > best_loss[rows]) | reached
        best_loss[rows] = torch.where(loss > best_loss[rows], loss, best_loss[rows])
        best[rows] = torch.where(accept.view(-1, 1, 1, 1), candidate, best[rows])
        done[rows] = reached
    return SquareResult(best, best_loss, done)


class SquareOptions(MethodOptions):
    queries: int = Field(
        default=5000, ge=0, description="iterations (forward passes after the first; the paper's budget 10000, AutoAttack's 5000)"
    )
    p_init: float = Field(
        default=P_INIT, gt=0, le=1, description="share of the image covered by the first squares (halved on the paper's schedule)"
    )


@register_method("square")
class Square(AttackMethod[SquareOptions]):
    label = "Square"
    summary = "Square attack (Andriushchenko et al., ECCV 2020): score-based random search with square updates, forward passes only"
    Options = SquareOptions
    uses_gradient = False
    quick_options = {"queries": 5}

    def run(self, problem: AttackProblem) -> torch.Tensor:
        o = self.options
        draws = SquareDraws(problem.generators("square"), o.queries, problem.images.shape[1], problem.images.shape[-1])
        return square_run(problem, iterations=o.queries, draws=draws, p_init=o.p_init).best
