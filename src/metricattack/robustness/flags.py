"""The checks that make a robust mAP trustworthy, as pure functions of what the evaluation measured.

Each returns a :class:`Flag`: ``ok``, ``flagged`` (the number may overstate robustness: read the
summary) or ``not measured``. Thresholds are the module constants, stated in every summary:

* **never weaker** -- at every ε, robust mAP ≤ the mAP of each reference attack (FGSM, I-FGSM,
  MI-FGSM, PGD) at that ε; a stronger-on-paper ensemble that does worse than a plain attack is broken or blocked
  (``gallery-never-weaker``: the same for the gallery-side figure and its reference attacks);
* **ε sweep** -- mAP does not rise with ε (by more than :data:`SWEEP_TOLERANCE` points) and, at
  the largest ε, is within :data:`NEAR_CHANCE` of the clean-to-chance gap above chance: a large
  enough perturbation must destroy retrieval, or the attack is not using it;
* **convergence** -- doubling the starts of every APGD attack (one more start per start) lowers robust
  mAP by less than :data:`CONVERGENCE_POINTS` points;
* **black box** -- Square (forward passes only) lowers robust mAP by less than
  :data:`BLACK_BOX_POINTS` points after the white-box attacks: a gradient-free attack beating
  gradient attacks points at masked gradients (Carlini et al., 2019);
* **zero gradient** -- no query has an exactly zero gradient at an APGD start;
* **randomness** -- two forward passes of the clean queries give the same features (largest L2
  change of the normalised features below :data:`RANDOM_TOLERANCE`); a random model is attacked
  with EOT and flagged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

SWEEP_TOLERANCE = 0.5  # points of mAP the sweep may rise from one ε to the next (bootstrap-free noise)
NEAR_CHANCE = 0.10  # at the largest ε, mAP within this share of the clean-to-chance gap above chance
CONVERGENCE_POINTS = 0.5  # doubling the APGD starts may lower robust mAP by less than this
BLACK_BOX_POINTS = 0.5  # Square may lower the white-box robust mAP by less than this
RANDOM_TOLERANCE = 1e-4  # largest L2 change of normalised features between two passes of one image

FlagStatus = Literal["ok", "flagged", "not measured"]


class Flag(BaseModel):
    """One check: its status, the measured ``value`` against its ``threshold``, and a plain-language summary."""

    model_config = ConfigDict(extra="forbid")

    name: str
    status: FlagStatus
    value: float | None = Field(None, description="the measured quantity (see summary)")
    threshold: float | None = Field(None, description="the limit it is compared with")
    summary: str


def _flag(name: str, bad: bool, value: float, threshold: float, summary: str) -> Flag:
    return Flag(name=name, status="flagged" if bad else "ok", value=value, threshold=threshold, summary=summary)


def never_weaker(robust: Mapping[float, float], references: Mapping[float, Mapping[str, float]], name: str = "never-weaker") -> Flag:
    """Robust mAP (%) per ε against each reference attack's mAP (%) at that ε; ``value``: the largest excess
    (``name``: the check's name, ``gallery-never-weaker`` for the gallery-side figure)."""
    measured = [e for e in robust if references.get(e)]
    if not measured:
        return Flag(name=name, status="not measured", summary="no reference attack was run")
    parts, excesses = [], []
    for e in measured:
        refs = references[e]
        weakest = min(refs, key=lambda k: refs[k])
        excess = robust[e] - refs[weakest]
        excesses.append(excess)
        listing = ", ".join(f"{k} {v:.2f}" for k, v in refs.items())
        parts.append(
            f"ε {e:g}: robust mAP {robust[e]:.2f} vs reference attacks ({listing}): "
            + (f"the ensemble is weaker than {weakest} by {excess:.2f} points" if excess > 0 else "no reference attack does better")
        )
    worst = max(excesses)
    return _flag(name, worst > 0, worst, 0.0, "; ".join(parts))


def eps_sweep(maps: Mapping[float, float], clean_map: float, chance_map: float) -> Flag:
    """mAP (%) at each ε of the sweep: monotone, and near chance at the largest ε."""
    if len(maps) < 2:
        return Flag(name="eps-sweep", status="not measured", summary="fewer than two ε in the sweep")
    eps = sorted(maps)
    rises = [(a, b, maps[b] - maps[a]) for a, b in zip(eps, eps[1:], strict=False) if maps[b] - maps[a] > SWEEP_TOLERANCE]
    limit = chance_map + NEAR_CHANCE * max(clean_map - chance_map, 0.0)
    top = maps[eps[-1]]
    problems = [f"mAP rises by {r:.2f} points from ε {a:g} to {b:g}" for a, b, r in rises]
    if top > limit:
        problems.append(
            f"at ε {eps[-1]:g} mAP {top:.2f} is above {limit:.2f} (chance {chance_map:.2f} + {NEAR_CHANCE:.0%} of the gap to clean)"
        )
    curve = ", ".join(f"ε {e:g}: {maps[e]:.2f}" for e in eps)
    return _flag(
        "eps-sweep",
        bool(problems),
        top,
        limit,
        f"mAP over ε ({curve}): "
        + ("; ".join(problems) if problems else f"monotone within {SWEEP_TOLERANCE} points and near chance at ε {eps[-1]:g}"),
    )


def convergence(robust_map: float, with_extra_start: float) -> Flag:
    """Robust mAP (%) before and after doubling the starts of every APGD attack."""
    drop = robust_map - with_extra_start
    return _flag(
        "convergence",
        drop >= CONVERGENCE_POINTS,
        drop,
        CONVERGENCE_POINTS,
        f"doubling the starts of every APGD attack lowers robust mAP by {drop:.2f} points ({robust_map:.2f} → {with_extra_start:.2f}); "
        + (
            "the attacks have not converged: more iterations or restarts are needed"
            if drop >= CONVERGENCE_POINTS
            else f"below {CONVERGENCE_POINTS}"
        ),
    )


def black_box(white_box_map: float, with_black_box: float) -> Flag:
    """Robust mAP (%) after the white-box attacks, and after Square too."""
    drop = white_box_map - with_black_box
    return _flag(
        "black-box",
        drop >= BLACK_BOX_POINTS,
        drop,
        BLACK_BOX_POINTS,
        f"Square lowers the white-box robust mAP by {drop:.2f} points ({white_box_map:.2f} → {with_black_box:.2f}); "
        + (
            "a forward-only attack beats the gradient attacks: gradients are likely masked"
            if drop >= BLACK_BOX_POINTS
            else f"below {BLACK_BOX_POINTS}"
        ),
    )


def zero_gradient(zero: int, attacked: int) -> Flag:
    """``zero`` of ``attacked`` query starts had an exactly zero gradient."""
    if attacked == 0:
        return Flag(name="zero-gradient", status="not measured", summary="no APGD start was attacked")
    share = zero / attacked
    return _flag(
        "zero-gradient",
        zero > 0,
        share,
        0.0,
        f"{zero} of {attacked} APGD starts had an exactly zero gradient"
        + (" (a non-differentiable step in the model's forward? attack it with BPDA)" if zero else ""),
    )


@torch.no_grad()
def feature_change(first: torch.Tensor, second: torch.Tensor) -> float:
    """Largest L2 distance between the normalised features ``[N, D]`` of two forward passes."""
    return float((F.normalize(first.float(), dim=1) - F.normalize(second.float(), dim=1)).norm(dim=1).max()) if len(first) else 0.0


def randomness(change: float, eot: int) -> Flag:
    """``change`` = :func:`feature_change` of two passes over the clean queries; ``eot`` the samples used when random."""
    random = change > RANDOM_TOLERANCE
    return _flag(
        "randomness",
        random,
        change,
        RANDOM_TOLERANCE,
        f"features change by up to {change:.2g} between two passes of the same image"
        + (f": the model is random, APGD averaged {eot} gradient samples per step (EOT)" if random else ""),
    )
