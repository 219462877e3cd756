"""The cascade: the worst case per query over a sequence of attack runs, each on the queries still standing.

Every query starts at its clean AP and rank-1 hit (the zero perturbation is an allowed attack).
Run ``k`` attacks only the *standing* queries: those with a true match whose worst AP so far is
above their chance AP (a random ranking's expected AP, :meth:`~metricattack.attacks.margin.QueryGallery.chance_ap`);
a query at or below chance has nothing left to lose. A run lowers a query's worst AP when its AP
is lower (it is then *decisive* for that query, until a later run lowers it further), and its
rank-1 hit when it misses. :func:`run_cascade` is pure bookkeeping over the runs, which are
callables ``run(queries) -> RunOutcome``; running them in order on the same inputs gives the
same result, so a resumed evaluation replays the runs it had finished from their records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import MetricAttackError

CLEAN = -1  # ``decisive`` of a query no run lowered


@dataclass(frozen=True)
class RunOutcome:
    """What one attack run did to the queries it attacked.

    Attributes:
        queries: ``[n]`` the attacked query indices (ascending).
        ap: ``[n]`` AP of each attacked query after the attack.
        hit: ``[n]`` 1.0 when its rank-1 is still a true match, else 0.0.
        forwards, backwards: forward / backward passes of one image each, summed over the queries.
        zero_gradient: queries whose gradient at the attack's start was exactly zero (0 for Square).
    """

    queries: np.ndarray
    ap: np.ndarray
    hit: np.ndarray
    forwards: int
    backwards: int
    zero_gradient: int = 0

    def __post_init__(self) -> None:
        if not (len(self.queries) == len(self.ap) == len(self.hit)):
            raise MetricAttackError(
                f"a run outcome needs one AP and one hit per query, got {len(self.queries)}, {len(self.ap)}, {len(self.hit)}"
            )


Run = Callable[[np.ndarray], RunOutcome]


@dataclass(frozen=True)
class StageLog:
    """One run of the cascade: ``attack`` (its cascade step) and ``run`` (start or target number), how
    many queries it attacked and lowered, the robust mAP (%) after it, and its cost."""

    attack: str
    run: int
    attacked: int
    lowered: int
    mAP_after: float
    forwards: int
    backwards: int
    zero_gradient: int


@dataclass
class CascadeResult:
    """Per query (``[Q]``): worst ``ap`` and ``hit`` (NaN without a true match), the index into
    ``log`` of the ``decisive`` run (:data:`CLEAN` when none lowered it); ``log`` per run."""

    ap: np.ndarray
    hit: np.ndarray
    decisive: np.ndarray
    log: list[StageLog] = field(default_factory=list)

    @property
    def mAP(self) -> float:
        """Robust mAP in percent over the queries with a true match."""
        return float(100 * np.nanmean(self.ap))

    def decisive_counts(self) -> dict[str, int]:
        """Cascade step name → number of queries whose worst AP it set (``"clean"``: none did)."""
        counts = {entry.attack: 0 for entry in self.log}
        counts["clean"] = 0
        for d in self.decisive[np.isfinite(self.ap)]:
            counts["clean" if d == CLEAN else self.log[int(d)].attack] += 1
        return counts


def standing(ap: np.ndarray, chance: np.ndarray) -> np.ndarray:
    """Indices of the queries with a true match whose AP is above chance (ascending)."""
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(np.isfinite(ap) & (ap > chance))


def run_cascade(runs: Sequence[tuple[str, Run]], clean_ap: np.ndarray, clean_hit: np.ndarray, chance_ap: np.ndarray) -> CascadeResult:
    """Run ``(attack name, run)`` pairs in order on the standing queries (see the module docstring)."""
    if not (len(clean_ap) == len(clean_hit) == len(chance_ap)):
        raise MetricAttackError("clean APs, clean hits and chance APs must have one entry per query")
    result = CascadeResult(clean_ap.astype(np.float64).copy(), clean_hit.astype(np.float64).copy(), np.full(len(clean_ap), CLEAN))
    numbers: dict[str, int] = {}
    for attack, run in runs:
        number = numbers[attack] = numbers.get(attack, -1) + 1
        todo = standing(result.ap, chance_ap)
        outcome = run(todo) if len(todo) else RunOutcome(todo, np.zeros(0), np.zeros(0), 0, 0)
        if not np.array_equal(outcome.queries, todo):
            raise MetricAttackError(f"run {attack} #{number} returned other queries than it was given")
        lower = outcome.ap < result.ap[todo]
        result.ap[todo[lower]] = outcome.ap[lower]
        result.decisive[todo[lower]] = len(result.log)
        result.hit[todo] = np.minimum(result.hit[todo], outcome.hit)
        result.log.append(
            StageLog(attack, number, len(todo), int(lower.sum()), result.mAP, outcome.forwards, outcome.backwards, outcome.zero_gradient)
        )
    return result
