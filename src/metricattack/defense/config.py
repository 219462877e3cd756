"""The defense configuration (YAML → :class:`DefenseConfig`), validated with clear errors.

Example (``configs/defense/quickstart.yaml``)::

    train: {...TrainConfig of the clean model F...}
    base_checkpoint: null            # or an existing checkpoint of F (then F is not trained)
    strategy: metric_preserving      # or: online
    training_attack: {attack: {method: ifgsm, eps: 5}, metric: euclidean, batch_size: 32}
    retrain: {init: scratch}         # or: finetune (start from F's weights)
    online: {attack: {method: ifgsm, eps: 2, steps: 2}, guides: [push, pull]}
    evaluation: {transfer: {attack: {method: ifgsm, eps: 5}}, adaptive: {methods: [ifgsm, mifgsm, pgd], epsilons: [2, 5]}}

Attacks are :class:`~metricattack.attacks.spec.AttackSpec` s (method options beside ``method`` and
``eps``); the adaptive evaluation's per-method options go under ``adaptive.options.<method>``.

ε and α are in 0..255 pixel units, like everywhere in metricattack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from ..attacks.spec import AttackSpec, MethodName, MethodOptionTable, check_savable, refuse_moved_options, spec_from_table
from ..config import StrictModel, load_config
from ..errors import ConfigError
from ..evaluation.ranking import APConvention
from ..metrics.distance import ParameterFreeMetricName
from ..training.config import TrainConfig

Guide = Literal["push", "pull"]
GUIDES: tuple[Guide, ...] = ("push", "pull")


def _savable_attack(attack: AttackSpec) -> AttackSpec:
    """An attack whose images are saved: ε below one 8-bit step would save the source unchanged."""
    try:
        check_savable(attack, "eps")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return attack


class TrainingSetAttack(StrictModel):
    """Step 2 of the paper: attack every training image against the clean model F.

    Each training image of identity k is pushed away from the clean features of the
    training images of identity k (its own clean feature included; see
    :mod:`.training_set_attack`).
    """

    attack: AttackSpec = AttackSpec(method="ifgsm", eps=5.0)
    metric: ParameterFreeMetricName = "euclidean"
    batch_size: PositiveInt = 32

    @field_validator("attack")
    @classmethod
    def _savable(cls, attack: AttackSpec) -> AttackSpec:
        return _savable_attack(attack)


class RetrainSection(StrictModel):
    """Step 3: F_adv is trained on Y ∪ Y_adv with F's recipe.

    ``init: scratch`` starts from F's initialisation (same seed, same architecture, same
    classes); ``finetune`` starts from F's trained weights for ``finetune_epochs`` epochs
    (default: the recipe's epochs) at the recipe's learning rate times ``finetune_lr_factor``.
    """

    init: Literal["scratch", "finetune"] = "scratch"
    finetune_epochs: PositiveInt | None = None
    finetune_lr_factor: float = Field(0.1, gt=0.0, le=1.0)


class OnlineSection(StrictModel):
    """Online adversarial training: every batch gets adversarial copies made against the current model.

    Per image the maximised objective is ``push·d(f(x'), c_same) − pull·d(f(x'), f_other)``
    with ``c_same`` the mean clean feature of the *other* same-identity images of the batch
    (its own clean feature when it has none) and ``f_other`` the clean feature of one image of
    another identity of the batch, drawn with a seeded generator (Bouniot et al., CVPRW 2020
    use push and pull guides in the same spirit). The loss is the recipe's loss on the
    batch ``[clean; adversarial]`` (labels repeated). ``attack.seed`` also seeds the pull guides.
    """

    attack: AttackSpec = AttackSpec.model_validate({"method": "ifgsm", "eps": 2.0, "steps": 2})
    guides: list[Guide] = Field(default_factory=lambda: list(GUIDES), min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [k for k in ("method", "eps", "alpha", "steps", "seed") if k in data]
            if moved:
                raise ValueError(
                    f"online.{moved[0]}: the online attack is an attack spec now, online.attack (e.g. attack: {{method: ifgsm, eps: 2, steps: 2}})"
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> OnlineSection:
        if len(set(self.guides)) != len(self.guides):
            raise ValueError(f"guides must not repeat, got {self.guides}")
        return self


class TransferSection(StrictModel):
    """The gallery attack against the *normal* model F whose adversarial gallery Table 5 tests."""

    attack: AttackSpec = AttackSpec(method="ifgsm", eps=5.0)
    batch_size: PositiveInt = 32

    @field_validator("attack")
    @classmethod
    def _savable(cls, attack: AttackSpec) -> AttackSpec:
        return _savable_attack(attack)


class AdaptiveSection(StrictModel):
    """White-box attacks made against each model itself (the honest robustness numbers): every method
    of ``methods`` at every ε of ``epsilons``, with its options from ``options.<method>`` (an
    ``alpha`` above an ε is capped at that ε)."""

    methods: list[MethodName] = Field(default_factory=lambda: ["ifgsm", "mifgsm", "pgd"], min_length=1)
    epsilons: list[float] = Field(default_factory=lambda: [2.0, 5.0], min_length=1)
    options: MethodOptionTable = Field(default_factory=dict, description="per-method options, e.g. {mifgsm: {mu: 0.5}}")
    seed: int = 0
    batch_size: PositiveInt = 32

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved_options(data, "adaptive")

    @model_validator(mode="after")
    def _eps_range(self) -> AdaptiveSection:
        bad = [e for e in self.epsilons if not 1 <= e <= 255]
        if bad:
            raise ValueError(
                f"epsilons must lie in [1, 255] (0..255 pixel units; attacked images are rounded to 8 bits, "
                f"so a smaller eps changes nothing), got {bad}"
            )
        return self

    def specs(self) -> list[AttackSpec]:
        """One spec per (method, ε), in config order."""
        return [spec_from_table(m, e, self.seed, self.options, cap_alpha=True) for m in self.methods for e in self.epsilons]


class EvaluationSection(StrictModel):
    """What ``metricattack defend`` measures after training."""

    enabled: bool = True
    metric: ParameterFreeMetricName = "euclidean"
    ap: APConvention = "market"
    transfer: TransferSection = TransferSection()
    adaptive: AdaptiveSection = AdaptiveSection()
    batch_size: PositiveInt = 64


class DefenseConfig(StrictModel):
    """Everything :func:`~metricattack.defense.metric_preserving.run_defense` needs."""

    train: TrainConfig = Field(description="recipe of the clean model F (its data section names the dataset)")
    base_checkpoint: Path | None = Field(None, description="existing checkpoint of F; skips training F")
    strategy: Literal["metric_preserving", "online"] = "metric_preserving"
    training_attack: TrainingSetAttack = TrainingSetAttack()
    retrain: RetrainSection = RetrainSection()
    online: OnlineSection = OnlineSection()
    evaluation: EvaluationSection = EvaluationSection()


def load_defense_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DefenseConfig:
    """Load a defense YAML (relative paths are relative to the working directory) with ``key.sub=value`` overrides (one ConfigError naming every bad field)."""
    return load_config(DefenseConfig, path, overrides)
