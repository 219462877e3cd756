"""The defense configuration (YAML → :class:`DefenseConfig`), validated with clear errors.

Example (``configs/defense/quickstart.yaml``)::

    train: {...TrainConfig of the clean model F...}
    base_checkpoint: null            # or an existing checkpoint of F (then F is not trained)
    method: metric-preserving        # or: online, pgd-at, act, hm, goat (metricattack.defense.methods)
    training_attack: {attack: {method: ifgsm, eps: 5}, metric: euclidean, batch_size: 32}
    retrain: {init: scratch}         # or: finetune (start from F's weights)
    pgd_at: {attack: {method: pgd, eps: 8, alpha: 2, steps: 7}, clean_weight: 0}   # one section per method
    evaluation: {transfer: {attack: {method: ifgsm, eps: 5}}, adaptive: {methods: [ifgsm, mifgsm, pgd], epsilons: [2, 5]}, robust: {epsilons: [5, 8]}}

Attacks are :class:`~metricattack.attacks.spec.AttackSpec` s (method options beside ``method`` and
``eps``); the adaptive evaluation's per-method options go under ``adaptive.options.<method>``.

ε and α are in 0..255 pixel units, like everywhere in metricattack. Every method's section has
defaults (the published recipe where there is one); only the section of ``method`` is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PositiveInt, field_validator, model_validator

from ..attacks.spec import AttackSpec, MethodName, MethodOptionTable, refuse_moved_options, spec_from_table
from ..config import StrictModel, load_config
from ..errors import ConfigError
from ..evaluation.ranking import APConvention
from ..metrics.distance import ParameterFreeMetricName
from ..robustness.protocol import VERSIONS
from ..training.config import TrainConfig, TrainRecipe
from .methods import DEFENSES, ACTSection, GOATSection, HMSection, OnlineSection, PGDATSection, TrainingSetAttack
from .methods.metric_preserving import savable_attack

#: A name registered in :data:`~metricattack.defense.methods.DEFENSES` (checked when a config loads).
DefenseName = Annotated[str, AfterValidator(DEFENSES.check)]

__all__ = [
    "DefenseConfig",
    "DefenseName",
    "MethodSections",
    "ProtocolVersion",
    "OnlineSection",
    "RetrainSection",
    "TrainingSetAttack",
    "load_defense_config",
]


class RetrainSection(StrictModel):
    """How F_adv starts: ``init: scratch`` from F's initialisation (same seed, architecture and
    classes), with F's recipe; ``finetune`` from F's trained weights for ``finetune_epochs``
    epochs (default: the recipe's epochs) at the recipe's learning rate times
    ``finetune_lr_factor``, without warm-up or steps. Applies to every method."""

    init: Literal["scratch", "finetune"] = "scratch"
    finetune_epochs: PositiveInt | None = None
    finetune_lr_factor: float = Field(0.1, gt=0.0, le=1.0)


class TransferSection(StrictModel):
    """The gallery attack against the *normal* model F whose adversarial gallery Table 5 tests."""

    attack: AttackSpec = AttackSpec(method="ifgsm", eps=5.0)
    batch_size: PositiveInt = 32

    @field_validator("attack")
    @classmethod
    def _savable(cls, attack: AttackSpec) -> AttackSpec:
        return savable_attack(attack)


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


#: A robustness-protocol version (:data:`metricattack.robustness.protocol.VERSIONS`: ``standard``, ``fast``, ``smoke``).
ProtocolVersion = Annotated[str, AfterValidator(VERSIONS.check)]


class RobustSection(StrictModel):
    """The adaptive robustness evaluation of F and F_adv (:func:`~.evaluation.robust_evaluations`):
    per query, the worst case of the robustness protocol ``protocol`` made against each model
    itself and of the query attack transferred from F, at each ε (the protocol's checks at the
    largest); the gallery-side attacks apart."""

    enabled: bool = True
    version: ProtocolVersion = Field("fast", description="robustness protocol version (standard, fast; smoke only checks that it runs)")
    epsilons: list[Annotated[float, Field(ge=1, le=255)]] = Field(default_factory=lambda: [5.0, 8.0], min_length=1)
    batch_size: PositiveInt = 32


class EvaluationSection(StrictModel):
    """What ``metricattack defend`` measures after training."""

    enabled: bool = True
    metric: ParameterFreeMetricName = "euclidean"
    ap: APConvention = "market"
    transfer: TransferSection = TransferSection()
    adaptive: AdaptiveSection = AdaptiveSection()
    robust: RobustSection = RobustSection()
    batch_size: PositiveInt = 64


class MethodSections(StrictModel):
    """One settings section per defense method (:attr:`DefenseMethod.section`); the benchmark's
    defense leaderboard embeds them too. Defaults: the published recipes (see each section)."""

    online: OnlineSection = OnlineSection()
    pgd_at: PGDATSection = PGDATSection()
    act: ACTSection = ACTSection()
    hm: HMSection = HMSection()
    goat: GOATSection = GOATSection()

    def settings_of(self, method: str) -> StrictModel:
        """The settings section of ``method``."""
        section: StrictModel = getattr(self, DEFENSES.get(method).section)
        return section


class DefenseConfig(MethodSections):
    """Everything :func:`~metricattack.defense.pipeline.run_defense` needs."""

    train: TrainConfig = Field(description="recipe of the clean model F (its data section names the dataset)")
    base_checkpoint: Path | None = Field(None, description="existing checkpoint of F; skips training F")
    base_weights: Path | None = Field(
        None, description="F is a network of one's own as is (train.model.architecture: python) with these weights; skips training F"
    )
    method: DefenseName = Field("metric-preserving", description="the defense (metricattack.defense.methods.DEFENSES)")
    training_attack: TrainingSetAttack = TrainingSetAttack()
    retrain: RetrainSection = RetrainSection()
    evaluation: EvaluationSection = EvaluationSection()

    @model_validator(mode="after")
    def _sampler(self) -> DefenseConfig:
        try:
            check_batches(self.method, self.train)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.base_weights is not None and (self.train.model.architecture != "python" or self.base_checkpoint is not None):
            raise ValueError("base_weights go with a network of one's own (train.model.architecture: python) and no base_checkpoint")
        return self

    def settings(self) -> StrictModel:
        """The section of :attr:`method`."""
        return self.settings_of(self.method)


def check_batches(method: str, recipe: TrainRecipe) -> None:
    """A ranking defense (ACT, HM) needs P×K batches with at least two images per identity."""
    batch = recipe.batch
    if DEFENSES.get(method).needs_pk and (batch.sampler != "pk" or batch.images_per_id < 2):
        raise ConfigError(
            f"{method} mines triplets in each batch: set train.batch.sampler: pk with images_per_id >= 2 "
            f"(got sampler {batch.sampler}, images_per_id {batch.images_per_id})"
        )


def load_defense_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DefenseConfig:
    """Load a defense YAML (relative paths are relative to the working directory) with ``key.sub=value`` overrides (one ConfigError naming every bad field)."""
    return load_config(DefenseConfig, path, overrides)
