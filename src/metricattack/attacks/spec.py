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
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import StrictModel, validate
from ..errors import ConfigError

Method = Literal["fgsm", "ifgsm", "mifgsm", "pgd"]
Setting = Literal["gallery", "targeted", "query", "classification"]
METHODS: tuple[str, ...] = ("fgsm", "ifgsm", "mifgsm", "pgd")
SETTINGS: tuple[str, ...] = ("gallery", "targeted", "query", "classification")


def paper_steps(eps: float) -> int:
    """The paper's iteration count ``max(1, int(min(ε + 4, 1.25 ε)))`` (ε in 0..255 units)."""
    return max(1, int(min(eps + 4.0, 1.25 * eps)))


class AttackSpec(StrictModel):
    """One attack method with its parameters (all pixel quantities in 0..255 units).

    Attributes:
        method: ``fgsm`` (Eq. 5), ``ifgsm`` (Eq. 6), ``mifgsm`` (Eq. 7) or ``pgd``.
        eps: L∞ radius ε, ``0 < ε ≤ 255``.
        alpha: step size α of the iterative methods, ``0 < α ≤ ε`` (ignored by FGSM); by default
            the paper's 1, or ε when ε < 1.
        steps: iterations n; ``None`` → :func:`paper_steps` (FGSM: always 1).
        mu: momentum decay μ of MI-FGSM.
        random_start: PGD's uniform start in the ε-ball (``None`` → on for PGD only).
        seed: seeds PGD's random start (per image, so batching does not change it) and the
            targeted setting's target assignment.
    """

    method: Method = "ifgsm"
    eps: float = Field(5.0, gt=0, le=255, allow_inf_nan=False)
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False)
    steps: int | None = Field(None, ge=1)
    mu: float = Field(1.0, ge=0, allow_inf_nan=False)
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
        if self.method == "fgsm" and self.steps not in (None, 1):
            raise ValueError(f"fgsm takes exactly one step of size eps; got steps={self.steps}")
        if self.random_start and self.method != "pgd":
            raise ValueError(f"random_start applies to pgd only, not to {self.method}")
        return self

    @property
    def num_steps(self) -> int:
        """Iterations actually run."""
        if self.method == "fgsm":
            return 1
        return self.steps if self.steps is not None else paper_steps(self.eps)

    @property
    def uses_random_start(self) -> bool:
        """True when the attack starts from a uniform random point of the ε-ball."""
        return self.method == "pgd" and self.random_start is not False

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
