"""APGD (Croce & Hein, ICML 2020): step-size-free L∞ PGD with momentum, checkpoints and restarts.

For one starting point ``x⁽⁰⁾`` in the ε-ball, with ``P`` the projection on the ball ∩ [0,1] and
``f`` a per-image objective to *ascend* (any ``objective(images, indices) -> losses [B]``):

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

Cost: ``1 + N`` forward and backward passes per image and start (times ``eot`` samples).
Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import MetricAttackError

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

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


def loss_and_gradient(objective: Objective, x: torch.Tensor, indices: torch.Tensor, samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image losses ``[B]`` and ``∂ Σ losses / ∂x`` ``[B,3,H,W]``, each averaged over ``samples``
    forward/backward passes (EOT, for a model whose output is random); weights get no gradient."""
    loss_sum = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    grad_sum = torch.zeros_like(x)
    for _ in range(samples):
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            losses = objective(leaf, indices)
            if losses.shape != (x.shape[0],):
                raise MetricAttackError(
                    f"an attack objective must return one loss per image, shape [{x.shape[0]}], got {tuple(losses.shape)}"
                )
            (grad,) = torch.autograd.grad(losses.sum(), leaf)
        loss_sum += losses.detach()
        grad_sum += grad
    return loss_sum / samples, grad_sum / samples


def _project(x: torch.Tensor, original: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.clamp(torch.min(torch.max(x, original - eps), original + eps), 0.0, 1.0)


@dataclass(frozen=True)
class APGDResult:
    """One APGD run.

    Attributes:
        best: ``[B,3,H,W]`` ``x_max``, the point of highest objective (the attack's output).
        best_loss: ``[B]`` ``f(x_max)``.
        losses: ``[N+1, B]`` ``f(x⁽ᵏ⁾)`` of every iterate as computed (before a reset to ``x_max``).
        halved: ``[len(checkpoints), B]`` bool, whose step was halved at each checkpoint.
        zero_gradient: ``[B]`` bool, the gradient at the starting point is exactly zero
            (the attack cannot move: a masking symptom, or a start at a stationary point).
        forwards: forward passes per image (``backwards`` the same).
    """

    best: torch.Tensor
    best_loss: torch.Tensor
    losses: torch.Tensor
    halved: torch.Tensor
    zero_gradient: torch.Tensor
    forwards: int

    @property
    def backwards(self) -> int:
        return self.forwards


def apgd_run(
    objective: Objective,
    images: torch.Tensor,
    start: torch.Tensor,
    *,
    eps: float,
    steps: int,
    indices: torch.Tensor,
    rho: float = RHO,
    momentum: float = MOMENTUM,
    eot: int = 1,
) -> APGDResult:
    """One APGD run from ``start`` (see the module docstring); ``eps`` in [0,1] units (ε/255).

    Args:
        objective: per-image losses to ascend, ``objective(x, indices) -> [B]``.
        images: ``[B,3,H,W]`` clean images in [0,1]; ``start``: the starting point (projected here).
        steps: iterations ``N`` (the paper's 100).
        indices: ``[B]`` the images' positions, passed to ``objective``.
        eot: forward/backward passes averaged per gradient (a random model's expectation).
    """
    original = images.detach()
    x = _project(start.detach(), original, eps)
    loss, grad = loss_and_gradient(objective, x, indices, eot)
    zero_gradient = grad.flatten(1).abs().sum(1) == 0
    best, best_loss, best_grad = x.clone(), loss.clone(), grad.clone()
    step = torch.full((x.shape[0], 1, 1, 1), 2.0 * eps, dtype=x.dtype, device=x.device)
    marks = checkpoints(steps)
    history = [loss]
    halved_rows: list[torch.Tensor] = []
    increases = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    best_at_last, halved_last, last_mark = best_loss.clone(), torch.zeros_like(zero_gradient), 0
    previous = x.clone()
    for k in range(steps):
        with torch.no_grad():
            a = momentum if k > 0 else 1.0
            direction = x - previous
            previous = x
            z = _project(x + step * torch.sign(grad), original, eps)
            x = _project(x + (z - x) * a + direction * (1 - a), original, eps)
        new_loss, grad = loss_and_gradient(objective, x, indices, eot)
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
    return APGDResult(best.detach(), best_loss, torch.stack(history), halved, zero_gradient, (1 + steps) * eot)


def random_start(images: torch.Tensor, indices: torch.Tensor, eps: float, seed: int, restart: int = 0) -> torch.Tensor:
    """A uniform point of the ε-ball around each image (``eps`` in [0,1] units), seeded per image by
    ``(seed, restart, indices[i])`` so that batching does not change it."""
    rows = []
    for index in indices.tolist():
        gen = torch.Generator().manual_seed(((int(seed) * 1_000_003 + int(restart)) * 1_000_003 + int(index)) % (1 << 62))
        rows.append(torch.rand(images.shape[1:], generator=gen, dtype=torch.float32))
    noise = torch.stack(rows).to(images.device, images.dtype) * 2.0 - 1.0
    return images.detach() + eps * noise


def apgd(
    objective: Objective,
    images: torch.Tensor,
    *,
    eps: float,
    steps: int,
    indices: torch.Tensor,
    restarts: int = 1,
    seed: int = 0,
    eot: int = 1,
) -> APGDResult:
    """APGD with ``restarts`` seeded random starts: per image, the run of highest ``f(x_max)`` (ties: the first).

    ``losses`` and ``halved`` are those of the last restart; ``forwards`` counts all of them.
    """
    if restarts < 1:
        raise MetricAttackError(f"APGD needs at least one restart, got {restarts}")
    result: APGDResult | None = None
    for restart in range(restarts):
        run = apgd_run(objective, images, random_start(images, indices, eps, seed, restart), eps=eps, steps=steps, indices=indices, eot=eot)
        if result is None:
            result = run
            continue
        better = run.best_loss > result.best_loss
        result = APGDResult(
            torch.where(better.view(-1, 1, 1, 1), run.best, result.best),
            torch.where(better, run.best_loss, result.best_loss),
            run.losses,
            run.halved,
            result.zero_gradient | run.zero_gradient,
            result.forwards + run.forwards,
        )
    assert result is not None
    return result
