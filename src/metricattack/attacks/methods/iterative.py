"""The sign-gradient loop that I-FGSM, MI-FGSM, PGD (and their transfer variants) share.

``x_0 = start(x)``, ``x_{n+1} = Ψ(x_n + α·sign(u_n))`` for ``n < steps``, where ``u_n`` comes from
the method's :meth:`IterativeSignMethod.updater`: a fresh function per attacked batch that maps
``x_n`` to the direction to step (I-FGSM: the gradient; MI-FGSM: the momentum; a transfer
booster: a gradient of transformed inputs, smoothed, look-ahead, ...) and keeps that batch's
state (momentum, variance) in its closure. α and the steps come from :class:`IterativeOptions`
(the paper's defaults: α = min(1, ε), n = ⌊min(ε + 4, 1.25 ε)⌋).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from ..problem import AttackProblem
from .base import AttackMethod, MethodOptions, OptionsT


def paper_steps(eps: float) -> int:
    """The paper's iteration count ``max(1, int(min(ε + 4, 1.25 ε)))`` (ε in 0..255 units)."""
    return max(1, int(min(eps + 4.0, 1.25 * eps)))


class IterativeOptions(MethodOptions):
    """Step size and iterations of a sign-gradient method (0..255 units)."""

    alpha: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="step size in 0..255 units, at most eps (default the paper's 1, or eps when eps < 1)",
    )
    steps: int | None = Field(default=None, ge=1, description="iterations (default the paper's min(eps + 4, 1.25 eps), rounded down)")

    def resolve(self, eps: float) -> IterativeOptions:
        alpha = min(1.0, float(eps)) if self.alpha is None else self.alpha
        if alpha > eps:
            raise ValueError(f"alpha (step size {alpha:g}) must not exceed eps ({eps:g}); both are in 0..255 units")
        return self.model_copy(update={"alpha": alpha, "steps": paper_steps(eps) if self.steps is None else self.steps})

    def step_and_count(self) -> tuple[float, int]:
        """``(α in 0..255 units, steps)`` of resolved options."""
        if self.alpha is None or self.steps is None:
            raise RuntimeError("iterative options must be resolved (AttackSpec does it) before the attack runs")
        return self.alpha, self.steps


Updater = Callable[[torch.Tensor], torch.Tensor]


class IterativeSignMethod(AttackMethod[OptionsT]):
    """``Ψ(x + α·sign(u))`` for the configured steps; subclasses choose :meth:`start` and :meth:`updater`."""

    def start(self, problem: AttackProblem) -> torch.Tensor:
        """``x_0``: the clean images (PGD: a random point of the ε-ball)."""
        return problem.images.clone()

    def updater(self, problem: AttackProblem) -> Updater:
        """A fresh ``x_n -> u_n`` for this batch (default: the input gradient)."""
        return problem.gradient

    def run(self, problem: AttackProblem) -> torch.Tensor:
        options = self.options
        assert isinstance(options, IterativeOptions)  # every subclass's Options derives from it
        alpha, steps = options.step_and_count()
        alpha /= 255.0
        mask = problem.mask
        x = self.start(problem)
        update = self.updater(problem)
        for _ in range(steps):
            x = problem.project(x + alpha * mask * update(x).sign())
        return x.detach()
