"""What every defense method shares: the registry, the inner attack's settings, the objective base.

A defense method is a :class:`DefenseMethod` registered in :data:`DEFENSES` by its module (one
module per method in this package). A method trained online (all but the metric-preserving
network) gives an ``objective(settings, run)`` that builds the trainer's per-batch objective
(:data:`~metricattack.training.trainer.BatchObjective`): the defense runs inside the normal,
resumable training loop (same data, sampler, checkpoints) as a
:class:`~metricattack.training.trainer.Variant`.

The inner attacks run the attack layer's methods (:func:`~metricattack.attacks.perturb.perturb`:
any method of :data:`~metricattack.attacks.methods.METHODS`, inside the L∞ ball and [0,1]) on objectives of their own, with the
model in eval mode (each image's features depend on that image only; BatchNorm's running
statistics are not touched by the attack). Per-image random starts are seeded by the image's
position in the run (:meth:`AdversarialObjective.positions`), so a resumed run computes the same
adversarial images as an uninterrupted one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from pydantic import Field, model_validator
from torch import nn

from ...attacks.perturb import perturb
from ...attacks.problem import Objective
from ...attacks.spec import AttackSpec
from ...config import StrictModel
from ...registry import Registry
from ...training.trainer import BatchObjective, Losses, TrainingRun, sum_of

#: Rows of one batch's inner attack must stay below this (positions of the rows are unique per run).
MAX_ROWS = 10_000


def inner_attack(**fields: Any) -> AttackSpec:
    """An :class:`AttackSpec` from its fields (method options beside ``method`` and ``eps``): section defaults."""
    return AttackSpec.model_validate(fields)


class InnerAttack(StrictModel):
    """A method's settings: ``attack`` makes a training batch's adversarial images.

    ``attack`` is an :class:`~metricattack.attacks.spec.AttackSpec` (``method``, ``eps`` in 0..255
    units, ``seed``, and the method's options beside them, e.g. ``alpha``, ``steps``); any stepper
    of the attack registry works. ``attack.seed`` also seeds the method's own draws (triplets, guides).
    """

    attack: AttackSpec = inner_attack(method="pgd", eps=8.0, alpha=2.0, steps=7)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [k for k in ("method", "eps", "alpha", "steps", "seed") if k in data]
            if moved:
                raise ValueError(f"{moved[0]} belongs to the inner attack: attack: {{method: ..., eps: ..., {moved[0]}: ...}}")
        return data


SettingsT = TypeVar("SettingsT", bound=InnerAttack)


@dataclass(frozen=True)
class DefenseMethod:
    """One defense method.

    Attributes:
        summary: one line (help texts, reports).
        label: its name in tables.
        section: the :class:`~metricattack.defense.config.DefenseConfig` field holding its settings.
        settings: that section's pydantic model.
        objective: ``(settings, run) -> BatchObjective`` for a method trained online; ``None`` for
            the metric-preserving network (its training set is attacked once, then it is retrained).
        source: where the method was published (``our own`` for ours).
        needs_pk: its triplets need several images per identity in a batch (``batch.sampler: pk``).
    """

    summary: str
    label: str
    section: str
    settings: type[StrictModel]
    objective: Callable[[Any, TrainingRun], BatchObjective] | None
    source: str
    needs_pk: bool = False


DEFENSES: Registry[DefenseMethod] = Registry("defense method")
"""Defense method name → :class:`DefenseMethod` (``metricattack defend --method``)."""


@contextmanager
def attacking(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for an inner attack, back in its former mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distances ``[N]`` of ``a, b [N,D]`` (finite gradient at 0)."""
    return (a - b).pow(2).sum(1).clamp_min(1e-12).sqrt()


def same_identity_centres(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B,D]``: the mean feature of the *other* images of each image's label in the batch (its own when it has none)."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    others = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    counts = others.sum(1, keepdim=True)
    return torch.where(counts > 0, (others.to(features.dtype) @ features) / counts.clamp_min(1), features)


class AdversarialObjective(ABC, Generic[SettingsT]):
    """A batch objective that attacks the model being trained (see the module docstring).

    Subclasses implement :meth:`losses`; ``self.generator`` is reseeded from
    ``(settings.attack.seed, epoch, number)`` before each batch.
    """

    def __init__(self, settings: SettingsT, run: TrainingRun) -> None:
        self.settings, self.run, self.model = settings, run, run.model
        self.spec = settings.attack
        self.generator = torch.Generator()
        self._first = 0

    def __call__(self, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, number: int) -> Losses:
        self.generator.manual_seed((self.spec.seed * 1_000_003 + epoch * 100_003 + number) % (1 << 62))
        self._first = (epoch * 100_000 + number) * MAX_ROWS
        return self.losses(step, images, labels, epoch, number)

    @abstractmethod
    def losses(self, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, number: int) -> Losses:
        """The batch's loss and its named parts."""

    def positions(self, rows: int) -> torch.Tensor:
        """``[rows]`` positions of this batch's attacked rows in the run (seed per-row random starts)."""
        if rows >= MAX_ROWS:
            raise ValueError(f"an inner attack of {rows} rows is larger than {MAX_ROWS}; use smaller batches")
        return torch.arange(self._first, self._first + rows)

    def clean_features(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval features ``[N,D]`` of ``images`` in eval mode, detached."""
        with attacking(self.model), torch.no_grad():
            return self.model(images).detach()

    def attack(self, images: torch.Tensor, objective: Objective, *, minimise: bool = False) -> torch.Tensor:
        """``perturb`` ``images [N,3,H,W]`` with the settings' stepper, model in eval mode."""
        with attacking(self.model):
            return perturb(images, objective, self.spec, indices=self.positions(images.shape[0]), minimise=minimise).images

    def recipe(self, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """The recipe's loss on ``images`` (training pass)."""
        return self.run.losses(step(images), labels, epoch)[0]

    def with_clean_term(
        self, parts: dict[str, torch.Tensor], clean_weight: float, step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> Losses:
        """``parts`` plus ``clean`` = ``clean_weight`` × the recipe's loss on the clean ``images`` (when the
        weight is positive); returns their sum and the parts."""
        if clean_weight > 0:
            parts["clean"] = clean_weight * self.recipe(step, images, labels, epoch)
        return sum_of(parts.values()), parts


class WithCleanTerm(InnerAttack):
    """An inner attack plus ``clean_weight``: the recipe's loss on the clean batch, times this, is added."""

    clean_weight: float = Field(0.0, ge=0.0, description="weight of the recipe's loss on the clean batch (0: adversarial terms only)")
