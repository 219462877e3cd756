"""What an attack is: the method and its step sizes (:class:`AttackSpec`) and the setting.

ε and α are in 0..255 pixel units on images in [0,1] (the code divides by 255). Paper
defaults (Sec. 5): α = 1, μ = 1, n = ⌊min(ε + 4, 1.25 ε)⌋ iterations (Kurakin et al.), at
least 1. FGSM is always one step of size ε; PGD is I-FGSM from a uniform random start in
the ε-ball.

Settings (paper Sec. 3.4, plus two extensions):

* ``gallery`` -- non-targeted: each gallery image of identity k is pushed away from all
  query images of identity k (maximise the metric); junk, distractors and identities
  without a query stay untouched.
* ``targeted`` -- each such gallery image is pulled toward one seeded probe of another
  identity (Eq. 8: minimise the metric).
* ``query`` -- each probe is pushed away from its true gallery matches (same identity,
  other camera: the matches the evaluation counts).
* ``classification`` -- baseline: maximise the cross-entropy of each model's own classifier
  w.r.t. the class it predicts for the clean image (test identities are not among the
  classifier's classes); same images attacked as in ``gallery``.

Methods and settings are listed in the registries :data:`METHODS` and :data:`SETTINGS`; a
method or setting registered there is accepted everywhere a name is (configs, ``--method``,
``--setting``), and errors list the registered names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, Field, model_validator

from ..config import StrictModel, validate
from ..data.types import ReIDDataset
from ..errors import ConfigError
from ..registry import Registry
from .objectives import RefSets, gallery_references, query_references, targeted_references


@dataclass(frozen=True)
class AttackMethod:
    """How an attack method steps; :func:`~metricattack.attacks.methods.perturb` follows these flags.

    Attributes:
        summary: one line naming the method (help texts, reports).
        label: its name in tables and figures (the paper's ``I-FGSM``); empty: the registry name.
        single_step: one step of size ε from the clean image (FGSM); ``steps`` must be 1 or unset.
        momentum: accumulate per-image L1-normalised gradients with decay μ (MI-FGSM).
        random_start: start from a uniform point of the ε-ball (PGD), unless the spec says ``random_start: false``.
    """

    summary: str
    label: str = ""
    single_step: bool = False
    momentum: bool = False
    random_start: bool = False


METHODS: Registry[AttackMethod] = Registry("attack method")
"""Attack method name → :class:`AttackMethod`."""
METHODS.register("fgsm", AttackMethod("FGSM (Eq. 5): one step of size ε", "FGSM", single_step=True))
METHODS.register("ifgsm", AttackMethod("I-FGSM (Eq. 6): n steps of size α, projected on the ε-ball", "I-FGSM"))
METHODS.register("mifgsm", AttackMethod("MI-FGSM (Eq. 7): I-FGSM on momentum-accumulated gradients", "MI-FGSM", momentum=True))
METHODS.register("pgd", AttackMethod("PGD: I-FGSM from a uniform random start in the ε-ball", "PGD", random_start=True))

References = Callable[[ReIDDataset, int], tuple[RefSets, torch.Tensor | None]]


@dataclass(frozen=True)
class AttackSetting:
    """What an attack setting attacks and toward what.

    Attributes:
        summary: one line describing the setting.
        split: the attacked split, ``gallery`` or ``query``; reference features come from the other split.
        references: ``(dataset, seed) -> (reference sets, targets)``: per image of ``split``, the
            indices of the other split's images its loss is measured against (empty: not attacked),
            and for a targeted setting ``targets [N]`` (−1 when not attacked), else None.
        minimise: descend the metric loss (pull toward the references) instead of ascending it.
        classification: attack each model's classifier instead of the metric (same images attacked).
    """

    summary: str
    split: Literal["gallery", "query"]
    references: References
    minimise: bool = False
    classification: bool = False


SETTINGS: Registry[AttackSetting] = Registry("attack setting")
"""Attack setting name → :class:`AttackSetting`."""
SETTINGS.register(
    "gallery", AttackSetting("non-targeted: push gallery images away from their identity's probes", "gallery", gallery_references)
)
SETTINGS.register(
    "targeted",
    AttackSetting("pull gallery images toward one probe of another identity (Eq. 8)", "gallery", targeted_references, minimise=True),
)
SETTINGS.register("query", AttackSetting("push probes away from their true gallery matches", "query", query_references))
SETTINGS.register(
    "classification",
    AttackSetting("baseline: attack each model's classifier on the gallery's images", "gallery", gallery_references, classification=True),
)

MethodName = Annotated[str, AfterValidator(METHODS.check)]
"""A pydantic field type: the name of a registered attack method."""
SettingName = Annotated[str, AfterValidator(SETTINGS.check)]
"""A pydantic field type: the name of a registered attack setting."""


def paper_steps(eps: float) -> int:
    """The paper's iteration count ``max(1, int(min(ε + 4, 1.25 ε)))`` (ε in 0..255 units)."""
    return max(1, int(min(eps + 4.0, 1.25 * eps)))


class StepSizes(StrictModel):
    """The size of an attack, in 0..255 pixel units: shared by :class:`AttackSpec` and the
    benchmark's attack section (which applies them to several methods and ε).

    Attributes:
        eps: L∞ radius ε, ``0 < ε ≤ 255``.
        alpha: step size α of the iterative methods, ``0 < α ≤ ε`` (ignored by FGSM); by default
            the paper's 1, or ε when ε < 1.
        steps: iterations n; ``None`` → :func:`paper_steps` (FGSM: always 1).
        mu: momentum decay μ of MI-FGSM.
    """

    eps: float = Field(default=5.0, gt=0, le=255, allow_inf_nan=False)
    alpha: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    steps: int | None = Field(default=None, ge=1)
    mu: float = Field(default=1.0, ge=0, allow_inf_nan=False)


class AttackSpec(StepSizes):
    """One attack method with its parameters (all pixel quantities in 0..255 units; ε, α, n, μ
    as in :class:`StepSizes`).

    Attributes:
        method: a :data:`METHODS` name: ``fgsm`` (Eq. 5), ``ifgsm`` (Eq. 6), ``mifgsm`` (Eq. 7), ``pgd``, ...
        random_start: PGD's uniform start in the ε-ball (``None`` → on for PGD only).
        seed: seeds PGD's random start (per image, so batching does not change it) and the
            targeted setting's target assignment.
    """

    method: MethodName = "ifgsm"
    random_start: bool | None = None
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _default_alpha(cls, data: Any) -> Any:
        """α = min(1, ε) when not given: the paper's α = 1 cannot step inside a ball of ε < 1."""
        if isinstance(data, dict) and data.get("alpha") is None:
            eps = data.get("eps", 5.0)
            if isinstance(eps, int | float) and not isinstance(eps, bool) and 0 < eps < 1:
                data = {**data, "alpha": float(eps)}
        return data

    @model_validator(mode="after")
    def _check(self) -> AttackSpec:
        if self.alpha > self.eps:
            raise ValueError(f"alpha (step size {self.alpha}) must not exceed eps ({self.eps}); both are in 0..255 units")
        if self.rule.single_step and self.steps not in (None, 1):
            raise ValueError(f"{self.method} takes exactly one step of size eps; got steps={self.steps}")
        if self.random_start and not self.rule.random_start:
            starts = ", ".join(name for name in METHODS if METHODS.get(name).random_start)
            raise ValueError(f"random_start applies to {starts} only, not to {self.method}")
        return self

    @property
    def rule(self) -> AttackMethod:
        """The registered :class:`AttackMethod` of ``method``."""
        return METHODS.get(self.method)

    @property
    def num_steps(self) -> int:
        """Iterations actually run."""
        if self.rule.single_step:
            return 1
        return self.steps if self.steps is not None else paper_steps(self.eps)

    @property
    def uses_random_start(self) -> bool:
        """True when the attack starts from a uniform random point of the ε-ball."""
        return self.rule.random_start and self.random_start is not False

    def resolved(self) -> dict[str, Any]:
        """JSON-able record of the spec with the defaults resolved (for manifests)."""
        return {**self.model_dump(), "steps": self.num_steps, "random_start": self.uses_random_start}


def check_savable(spec: AttackSpec, option: str = "--eps") -> None:
    """Refuse an ε below one 8-bit step for attacks saved as images (they would equal their source)."""
    if spec.eps < 1:
        raise ConfigError(
            f"{option} {spec.eps:g}: attacked images are saved as 8-bit PNG, where a pixel moves in steps of 1 "
            "(0..255 units), so every saved image would equal its source; use an eps of at least 1"
        )


def make_spec(source: str = "attack options", **values: Any) -> AttackSpec:
    """Build an :class:`AttackSpec`; invalid values raise one ConfigError naming ``source`` and the field."""
    return validate(AttackSpec, {k: v for k, v in values.items() if v is not None}, source)
