"""The sign-gradient loop that I-FGSM, MI-FGSM, PGD and the transfer boosters share.

``x_0 = start(x)``, ``x_{n+1} = Ψ(x_n + α·sign(u_n))`` for ``n < steps``, where ``u_n`` comes from
the method's :meth:`IterativeSignMethod.updater`: a fresh function per attacked batch that maps
``x_n`` to the direction to step (I-FGSM: the gradient; MI-FGSM: the momentum) and keeps that
batch's state in its closure. α and the steps come from :class:`IterativeOptions` (the paper's
defaults: α = min(1, ε), n = ⌊min(ε + 4, 1.25 ε)⌋).

:class:`MomentumSignMethod` is the momentum loop (MI-FGSM, Eq. 7) with a pluggable gradient
*estimate* and an optional Nesterov look-ahead: the transfer boosters (DI, TI, SI-NI, VMI, VNI)
differ only in their :meth:`MomentumSignMethod.estimator` (a gradient of transformed inputs,
smoothed, averaged over scale copies, variance-tuned) and in ``nesterov``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
from pydantic import Field

from ..ops import per_image_l1_normalise
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


class MomentumOptions(IterativeOptions):
    """:class:`IterativeOptions` + the momentum decay μ."""

    mu: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="momentum decay μ (the paper's 1)")


Estimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x_n, p_n) -> G [B,3,H,W]``: a method's gradient estimate for iterate ``x_n`` evaluated at ``p_n``
(``x_n`` itself, or the Nesterov look-ahead); a fresh one per attacked batch, keeping its state."""

MomentumOptionsT = TypeVar("MomentumOptionsT", bound=MomentumOptions)


class MomentumSignMethod(IterativeSignMethod[MomentumOptionsT]):
    """``g_{n+1} = μ·g_n + G(x_n, p_n) / mean|G(x_n, p_n)|`` (the mean over each image's own pixels),
    ``x_{n+1} = Ψ(x_n + α·sign(g_{n+1}))``, ``g_0 = 0``.

    ``p_n = x_n``, or with ``nesterov`` the look-ahead ``p_n = x_n + α·μ·g_n`` (NI-FGSM, Lin et al.,
    ICLR 2020). ``G`` comes from :meth:`estimator` (default: the input gradient at ``p_n``, which
    makes this MI-FGSM).
    """

    nesterov: ClassVar[bool] = False

    def estimator(self, problem: AttackProblem) -> Estimator:
        """A fresh gradient estimate ``(x_n, p_n) -> G`` for this batch (default: ``∇L(p_n)``)."""
        return lambda x, point: problem.gradient(point)

    def updater(self, problem: AttackProblem) -> Updater:
        mu = self.options.mu
        alpha = self.options.step_and_count()[0] / 255.0
        estimate = self.estimator(problem)
        momentum = torch.zeros_like(problem.images)

        def update(x: torch.Tensor) -> torch.Tensor:
            nonlocal momentum
            point = x + (mu * alpha) * momentum if self.nesterov else x
            momentum = mu * momentum + per_image_l1_normalise(estimate(x, point))
            return momentum

        return update
