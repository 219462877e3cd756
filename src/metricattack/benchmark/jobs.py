"""What experiments need: adversarial galleries (attack jobs) and the models tested on them.

An :class:`AttackJob` is one adversarial gallery: attacked models, threat model, method, ε
and attack metric. An experiment states its :class:`Needs` (jobs, (job, tested model)
evaluations, learned metrics); the runner merges the needs of the selected experiments, so
each gallery and each feature extraction is computed once, as a cached stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..attacks.threats import THREATS
from ..metrics.learned import LEARNED_METRICS

if TYPE_CHECKING:
    from .config import BenchmarkConfig


@dataclass(frozen=True)
class AttackJob:
    """One adversarial dataset: ``threat`` is a threat model name (``gallery`` = non-targeted; ``query``
    perturbs the probes instead of the gallery)."""

    sources: tuple[str, ...]
    threat: str
    method: str
    epsilon: float
    metric: str

    @property
    def mode(self) -> str:
        """The threat model as results.json names it (its ``mode``: ``nontargeted``, ``targeted``, ``classification``, ...)."""
        return THREATS.get(self.threat).mode

    @property
    def split(self) -> str:
        """The split the attack perturbs: ``gallery``, or ``query`` for the query-side threat model."""
        return THREATS.get(self.threat).split

    @property
    def id(self) -> str:
        """Readable unique name, e.g. ``nontargeted-ifgsm-eps5-euclidean-B1``."""
        return f"{self.mode}-{self.method}-eps{self.epsilon:g}-{self.metric}-{'+'.join(self.sources)}"


def is_learned(metric: str) -> bool:
    """True for a metric the benchmark fits per model on its training features (XQDA, KISSME)."""
    return metric in LEARNED_METRICS


@dataclass
class Needs:
    """Adversarial galleries, their evaluations and learned metrics, each listed once, in first-use order."""

    jobs: list[AttackJob] = field(default_factory=list)
    evaluations: list[tuple[AttackJob, str]] = field(default_factory=list)  # (job, tested model)
    learned: list[tuple[str, str]] = field(default_factory=list)  # (model, learned metric)

    def add(self, job: AttackJob, tested: Iterable[str]) -> AttackJob:
        """Need ``job`` and its gallery's features for every ``tested`` model (learned metrics of its sources too)."""
        if job not in self.jobs:
            self.jobs.append(job)
        for name in tested:
            if (job, name) not in self.evaluations:
                self.evaluations.append((job, name))
        for source in job.sources:
            self.learn(source, job.metric)
        return job

    @classmethod
    def tested_on(cls, model: str, *jobs: AttackJob) -> Needs:
        """Needs of an experiment that evaluates each of ``jobs`` on one ``model`` only (single-model experiments)."""
        needs = cls()
        for job in jobs:
            needs.add(job, [model])
        return needs

    def learn(self, model: str, metric: str) -> None:
        """Need ``metric`` for ``model`` (nothing to do unless it is a learned metric)."""
        if is_learned(metric) and (model, metric) not in self.learned:
            self.learned.append((model, metric))

    def merge(self, other: Needs) -> Needs:
        """Add everything ``other`` needs; returns self."""
        for job in other.jobs:
            self.add(job, [])
        for job, tested in other.evaluations:
            self.add(job, [tested])
        for model, metric in other.learned:
            self.learn(model, metric)
        return self

    @property
    def train_features(self) -> list[str]:
        """Models whose training-split features are needed (to fit learned metrics)."""
        return list(dict.fromkeys(model for model, _ in self.learned))


def single(
    cfg: BenchmarkConfig, model: str, method: str, threat: str = "gallery", epsilon: float | None = None, metric: str | None = None
) -> AttackJob:
    """The job attacking one model (defaults: the config's ε and attack metric)."""
    return AttackJob((model,), threat, method, cfg.attack.eps if epsilon is None else epsilon, metric or cfg.attack.metric)


def ensembles(cfg: BenchmarkConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(hold-out, ensemble) pairs of base models for Table 4; empty with fewer than three base models."""
    names = cfg.attacked_models()
    if len(names) < 3:
        return []
    return [(h, tuple(n for n in names if n != h)) for h in names]
