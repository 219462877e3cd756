"""APGD (Croce & Hein, ICML 2020): step-size-free L∞ PGD with momentum, checkpoints and restarts.

For one starting point ``x⁽⁰⁾`` in the ε-ball, with ``P`` the projection on the ball ∩ [0,1] and
``f`` the problem's per-image signed loss (:class:`~metricattack.attacks.problem.AttackProblem`, ascended):

* ``z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η·sign ∇f(x⁽ᵏ⁾))`` and
  ``x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))``, momentum ``α = 0.75``
  (``α = 1`` for the first step), initial step ``η = 2ε``;
* the best point ``x_max`` (highest ``f`` so far, per image) is kept, and it is the output;
* at the checkpoints ``w_j = ⌈p_j N⌉`` (``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``; :func:`checkpoints`) an image's step is
  halved and its iterate reset to ``x_max`` (with the gradient stored there) when
  (:func:`halve_step`)

  1. fewer than ``ρ·(w_j − w_{j−1})`` of the steps since ``w_{j−1}`` increased ``f``
     (``ρ = 0.75``): ``Σ_{i=w_{j−1}}^{w_j−1} 1[f(x⁽ⁱ⁺¹⁾) > f(x⁽ⁱ⁾)] < ρ (w_j − w_{j−1})``, or
  2. the step was not halved at ``w_{j−1}`` and ``f_max`` did not grow since then.

Where the paper's text and the implementations differ (auto-attack's ``autopgd_base.py`` and
torchattacks 3.5.1's ``APGD``, which share these details), this module follows the paper:
condition 1's first window compares ``f(x⁽¹⁾)`` with ``f(x⁽⁰⁾)`` (theirs compares it with a
not-yet-written zero entry of the loss history), the inequality is strict (theirs: ``≤``),
condition 2 applies from the first checkpoint on (theirs: from the second), and the checkpoints
are the paper's ``⌈p_j N⌉`` (theirs subtract ``int(0.03 N)`` from ``int(0.22 N)``-long windows,
the same for N = 100). ``tests/test_apgd.py`` checks the images are bit-identical to
torchattacks' when none of these cases occurs.

The registered method ``apgd`` (:class:`APGD`) starts each of its ``restarts`` runs from a uniform
point of the ε-ball drawn per image (``problem.generators("restart-r")``) and keeps, per image, the
run of highest ``f(x_max)``; ``eot`` averages that many gradients per step (a model whose output is
random). Cost: ``1 + N`` forward and backward passes per image, start and EOT sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field

from ...errors import MetricAttackError
from ..ops import uniform_noise
from ..problem import AttackProblem
from .base import AttackMethod, MethodOptions, register_method

RHO = 0.75  # condition 1: the share of increasing steps below which the step is halved
MOMENTUM = 0.75  # α, the weight of the new step against the previous direction
FIRST_WINDOW, WINDOW_SHRINK, MIN_WINDOW = 22, 3, 6  # the checkpoint schedule, in hundredths of N


def checkpoints(steps: int) -> tuple[int, ...]:
    """The iterations ``w_1 < w_2 < … ≤ steps`` at which the step size may be halved.

    ``w_j = ⌈p_j · steps⌉`` with ``p_1 = 0.22`` and windows shrinking by 0.03 down to 0.06,
    computed in exact hundredths (``p_2 = 0.41`` must give ``⌈41⌉``, not a float's ``⌈41.0000001⌉``).

    >>> checkpoints(100)
    (22, 41, 57, 70, 80, 87, 93, 99)
    """
    if steps < 1:
        raise MetricAttackError(f"APGD needs at least one iteration, got {steps}")
    out: list[int] = []
    p, window = FIRST_WINDOW, FIRST_WINDOW  # hundredths
    while True:
        w = -(-p * steps // 100)  # ceil(p/100 * steps) in integers
        if w > steps:
            return tuple(out)
        if not out or w > out[-1]:
            out.append(w)
        window = max(window - WINDOW_SHRINK, MIN_WINDOW)
        p += window


def halve_step(
    increases: torch.Tensor, window: int, best: torch.Tensor, best_at_last: torch.Tensor, halved_last: torch.Tensor, rho: float = RHO
) -> torch.Tensor:
    """``[B]`` bool: which images halve their step at a checkpoint (conditions 1 or 2 of the paper).

    Args:
        increases: ``[B]`` number of steps since the last checkpoint that increased ``f``.
        window: ``w_j − w_{j−1}``, the number of those steps.
        best: ``[B]`` ``f_max`` now; ``best_at_last``: ``f_max`` at the last checkpoint (``f(x⁽⁰⁾)`` at the first).
        halved_last: ``[B]`` whether the step was halved at the last checkpoint (False at the first).
    """
    return (increases < rho * window) | (~halved_last & (best <= best_at_last))


def loss_and_gradient(problem: AttackProblem, x: torch.Tensor, samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The problem's signed losses ``[B]`` and input gradient at ``x``, each averaged over ``samples``
    forward/backward passes (EOT, for a model whose output is random)."""
    if samples == 1:
        return problem.loss_and_gradient(x)
    loss_sum, grad_sum = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype), torch.zeros_like(x)
    for _ in range(samples):
        loss, grad = problem.loss_and_gradient(x)
        loss_sum += loss
        grad_sum += grad
    return loss_sum / samples, grad_sum / samples


@dataclass(frozen=True)
class APGDResult:
    """One APGD run.

    Attributes:
        best: ``[B,3,H,W]`` ``x_max``, the point of highest objective (the attack's output).
        best_loss: ``[B]`` ``f(x_max)``.
        losses: ``[N+1, B]`` ``f(x⁽ᵏ⁾)`` of every iterate as computed (before a reset to ``x_max``).
        halved: ``[len(checkpoints), B]`` bool, whose step was halved at each checkpoint.
    """

    best: torch.Tensor
    best_loss: torch.Tensor
    losses: torch.Tensor
    halved: torch.Tensor


def apgd_run(
    problem: AttackProblem, start: torch.Tensor, *, steps: int, rho: float = RHO, momentum: float = MOMENTUM, eot: int = 1
) -> APGDResult:
    """One APGD run from ``start`` (projected here) on ``problem`` (see the module docstring).

    Args:
        problem: the images, their signed loss, ε (``problem.radius``) and the call counters.
        start: ``[B,3,H,W]`` the starting point.
        steps: iterations ``N`` (the paper's 100).
        eot: gradients averaged per step.
    """
    x = problem.project(start.detach())
    loss, grad = loss_and_gradient(problem, x, eot)
    best, best_loss, best_grad = x.clone(), loss.clone(), grad.clone()
    step = torch.full((x.shape[0], 1, 1, 1), 2.0 * problem.radius, dtype=x.dtype, device=x.device)
    marks = checkpoints(steps)
    history = [loss]
    halved_rows: list[torch.Tensor] = []
    increases = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    best_at_last, halved_last, last_mark = best_loss.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device), 0
    previous = x.clone()
    for k in range(steps):
        with torch.no_grad():
            a = momentum if k > 0 else 1.0
            direction = x - previous
            previous = x
            z = problem.project(x + step * torch.sign(grad))
            x = problem.project(x + (z - x) * a + direction * (1 - a))
        new_loss, grad = loss_and_gradient(problem, x, eot)
        increases += new_loss > loss
        loss = new_loss
        history.append(loss)
        improved = loss > best_loss
        best[improved], best_grad[improved], best_loss[improved] = x[improved], grad[improved], loss[improved]
        if k + 1 in marks:
            halve = halve_step(increases, k + 1 - last_mark, best_loss, best_at_last, halved_last, rho)
            step[halve] /= 2.0
            x, grad = x.clone(), grad.clone()
            x[halve], grad[halve] = best[halve], best_grad[halve]
            halved_rows.append(halve)
            increases.zero_()
            best_at_last, halved_last, last_mark = best_loss.clone(), halve, k + 1
    halved = torch.stack(halved_rows) if halved_rows else torch.zeros((0, x.shape[0]), dtype=torch.bool)
    return APGDResult(best.detach(), best_loss, torch.stack(history), halved)


class APGDOptions(MethodOptions):
    steps: int = Field(default=100, ge=1, description="iterations per start (the paper's 100)")
    restarts: int = Field(default=1, ge=1, description="random starts; per image the one of highest loss is kept")
    rho: float = Field(
        default=RHO,
        gt=0,
        le=1,
        description="condition 1: halve the step when fewer than rho of the steps since the last checkpoint raised the loss",
    )
    momentum: float = Field(default=MOMENTUM, ge=0, le=1, description="weight alpha of the new step against the previous direction")
    eot: int = Field(default=1, ge=1, description="gradients averaged per step (EOT, for a model whose output is random)")


@register_method("apgd")
class APGD(AttackMethod[APGDOptions]):
    label = "APGD"
    summary = "APGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum 0.75, step halving at checkpoints, random restarts"
    Options = APGDOptions
    quick_options = {"steps": 3}

    @property
    def first_gradient_at_clean(self) -> bool:
        return False  # every start is a random point of the ε-ball

    def run(self, problem: AttackProblem) -> torch.Tensor:
        o = self.options
        best, best_loss = problem.images.clone(), torch.full((problem.batch_size,), -torch.inf, device=problem.images.device)
        for restart in range(o.restarts):
            noise = uniform_noise(problem.images, problem.generators(f"restart-{restart}"), problem.radius)
            run = apgd_run(problem, problem.images + noise, steps=o.steps, rho=o.rho, momentum=o.momentum, eot=o.eot)
            better = run.best_loss > best_loss
            best[better], best_loss[better] = run.best[better], run.best_loss[better]
        return best
