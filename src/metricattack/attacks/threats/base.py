"""The threat-model interface: :class:`ThreatModel`, registered in :data:`THREATS` by :func:`register_threat`.

A threat model says *what* is attacked and *toward what*; the method says *how*. It declares:

* ``split``: the perturbed split (``gallery`` or ``query``);
* ``references``: where each image's references come from -- ``"other split"`` (the paper's
  gallery / query / targeted attacks), ``"self"`` (the image's own clean feature) or
  ``"guides"`` (labelled images, e.g. same-identity guides);
* ``mode``: its label in results.json and the benchmark's tables (``nontargeted``, ...);
* ``minimise``: descend the objective (targeted) instead of ascending it;
* ``objectives``: the objectives it can build, the default first (``AttackSpec.objective`` picks one);
* what it needs: ``needs_labels`` (identity labels of the perturbed images),
  ``needs_classifier`` (a ``classify()`` head), ``zero_gradient_at_clean`` (its objective's
  gradient vanishes at the clean image, so a method must not take its first gradient there,
  e.g. a loss ``d(f(x'), f(x))``: such a pair is refused by :meth:`ThreatModel.refusal`);

and builds, from labels only, the :class:`Selection` (:meth:`ThreatModel.select`: which images are
perturbed, their reference sets, targets) and, per attacked model, the loss part
(:meth:`ThreatModel.part`) from that model's clean features. The runner averages the parts over
the models (:class:`~metricattack.attacks.objectives.EnsembleLoss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import nn

from ...data.types import ReIDDataset
from ...errors import ConfigError
from ...metrics.distance import Metric
from ...registry import Registry
from ..methods import AttackMethod
from ..objectives import LossPart, RefSets

Split = Literal["gallery", "query"]
ReferenceSource = Literal["other split", "self", "guides"]


@dataclass(frozen=True)
class SplitFeatures:
    """Clean features of one model: ``query [Q, D]`` and ``gallery [G, D]``."""

    query: torch.Tensor
    gallery: torch.Tensor

    def of(self, split: str) -> torch.Tensor:
        """The features of ``split`` (``query`` or ``gallery``)."""
        return self.query if split == "query" else self.gallery


@dataclass(frozen=True)
class Selection:
    """What a threat model attacks in a dataset (a pure function of labels and the seed).

    Attributes:
        active: ``[N]`` bool over the perturbed split: the images that are perturbed.
        references: per image of the split, the indices of its references in the other split
            (``references == "other split"`` threat models; empty otherwise).
        targets: ``[N]`` long, the target probe of each image (targeted threat models; −1 when
            not attacked), else None.
    A threat model may return a subclass carrying more (e.g. guide sets) for its :meth:`~ThreatModel.part`.
    """

    active: torch.Tensor
    references: RefSets = field(default_factory=list)
    targets: torch.Tensor | None = None


class ThreatModel:
    """One threat model (module docstring); subclasses set the class attributes and implement
    :meth:`select` and :meth:`part`."""

    name: ClassVar[str] = ""  # set by register_threat
    mode: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    split: ClassVar[Split] = "gallery"
    references: ClassVar[ReferenceSource] = "other split"
    minimise: ClassVar[bool] = False
    objectives: ClassVar[tuple[str, ...]] = ("metric",)
    needs_labels: ClassVar[bool] = False
    needs_classifier: ClassVar[bool] = False
    zero_gradient_at_clean: ClassVar[bool] = False

    @property
    def reference_split(self) -> Split:
        """The split the references come from when ``references == "other split"``."""
        return "query" if self.split == "gallery" else "gallery"

    def select(self, dataset: ReIDDataset, seed: int) -> Selection:
        """Which images of ``dataset.split(self.split)`` are perturbed, and their references / targets."""
        raise NotImplementedError

    def part(self, model: nn.Module, metric: Metric, features: SplitFeatures, selection: Selection, objective: str) -> LossPart:
        """The loss of one attacked ``model`` (with its ``metric`` and clean ``features``) for the images of ``selection``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks (before any work)
    def refusal(self, method: AttackMethod[Any]) -> str | None:
        """Why ``method`` cannot attack under this threat model (or the method refuses it), or None when it can."""
        reason = method.refusal(self)
        if reason is not None:
            return reason
        if self.zero_gradient_at_clean and method.uses_gradient and method.first_gradient_at_clean:
            return (
                f"attack method {method.name} cannot move any image under the {self.name} threat model: its objective has a zero "
                f"gradient at the clean image and {method.name} takes its first gradient there (no random start), so every image "
                "would stay unchanged; use a method that leaves the clean image another way: a random start (pgd), transformed inputs "
                "(difgsm), scale copies (sinifgsm), a sampled neighbourhood (vmifgsm, vnifgsm), or no gradient"
            )
        return None

    def objective_name(self, requested: str | None) -> str:
        """The objective to build: ``requested`` if this threat model offers it, its default when None."""
        if requested is None:
            return self.objectives[0]
        if requested not in self.objectives:
            raise ConfigError(f"the {self.name} threat model has no objective {requested!r}; it offers: {', '.join(self.objectives)}")
        return requested

    def check(self, method: AttackMethod[Any], objective: str | None, models: Sequence[nn.Module] = ()) -> None:
        """Refuse (ConfigError with the reason) a method, objective or model this threat model cannot attack with."""
        reason = self.refusal(method)
        if reason is not None:
            raise ConfigError(reason)
        self.objective_name(objective)
        if self.needs_classifier:
            for i, model in enumerate(models):
                if not callable(getattr(model, "classify", None)):
                    raise ConfigError(
                        f"the {self.name} threat model attacks a classifier, and model {i} ({type(model).__name__}) has none (classify())"
                    )


THREATS: Registry[ThreatModel] = Registry("threat model")
"""Threat model name → :class:`ThreatModel` instance."""

ThreatT = TypeVar("ThreatT", bound=type[ThreatModel])


def register_threat(name: str) -> Callable[[ThreatT], ThreatT]:
    """Class decorator: register an instance of a :class:`ThreatModel` subclass as ``name``."""

    def add(cls: ThreatT) -> ThreatT:
        if not cls.summary or not cls.mode:
            raise ValueError(f"threat model {name!r} needs a summary and a mode (its label in results)")
        taken = {t.mode: n for n, t in ((n, THREATS.get(n)) for n in THREATS)}
        if cls.mode in taken:
            raise ValueError(f"threat model {name!r}: mode {cls.mode!r} is already the label of {taken[cls.mode]!r}")
        cls.name = name
        THREATS.register(name, cls())
        return cls

    return add


def modes() -> tuple[str, ...]:
    """Every registered threat model's mode (results.json's labels), in registration order."""
    return tuple(THREATS.get(name).mode for name in THREATS)


def threat_of_mode(mode: str) -> ThreatModel:
    """The threat model whose results label is ``mode``."""
    for name in THREATS:
        if THREATS.get(name).mode == mode:
            return THREATS.get(name)
    raise ValueError(f"unknown attack mode {mode!r}; registered: {', '.join(modes())}")


class OtherSplitThreat(ThreatModel):
    """A threat model whose references are clean features of the other split (the paper's settings):
    subclasses give the reference sets (:meth:`reference_sets`); the loss is the mean metric distance
    to them (:class:`~metricattack.attacks.objectives.MetricLoss`)."""

    references: ClassVar[ReferenceSource] = "other split"

    def reference_sets(self, dataset: ReIDDataset, seed: int) -> tuple[RefSets, torch.Tensor | None]:
        """Per image of the perturbed split: indices of its references in the other split, and targets (or None)."""
        raise NotImplementedError

    def select(self, dataset: ReIDDataset, seed: int) -> Selection:
        sets, targets = self.reference_sets(dataset, seed)
        return Selection(torch.tensor([bool(s) for s in sets], dtype=torch.bool), sets, targets)

    def part(self, model: nn.Module, metric: Metric, features: SplitFeatures, selection: Selection, objective: str) -> LossPart:
        from ..objectives import MetricLoss, ReferenceTargets

        return MetricLoss(model, metric, ReferenceTargets.build(metric, features.of(self.reference_split), selection.references))
