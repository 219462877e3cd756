"""``metric-preserving``: the paper's defense (Bai et al., Sec. 4).

Not trained online: the training set is attacked once against the clean model F (step 2,
:class:`TrainingSetAttack`), merged with the clean one (step 3) and F's recipe is retrained on
the merged set (:mod:`metricattack.defense.pipeline` runs these stages).
"""

from __future__ import annotations

from pydantic import PositiveInt, field_validator

from ...attacks.spec import AttackSpec, check_savable
from ...config import StrictModel
from ...errors import ConfigError
from ...metrics.distance import ParameterFreeMetricName
from .base import DefenseMethod


def savable_attack(attack: AttackSpec) -> AttackSpec:
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
    :mod:`metricattack.defense.training_set_attack`). Default: the paper's I-FGSM, ε = 5.
    """

    attack: AttackSpec = AttackSpec(method="ifgsm", eps=5.0)
    metric: ParameterFreeMetricName = "euclidean"
    batch_size: PositiveInt = 32

    @field_validator("attack")
    @classmethod
    def _savable(cls, attack: AttackSpec) -> AttackSpec:
        return savable_attack(attack)


METHOD = DefenseMethod(
    "the paper's metric-preserving network: retrain on the training set plus its adversarial copy",
    "metric-preserving",
    "training_attack",
    TrainingSetAttack,
    None,
    "Bai et al. (the paper, Sec. 4)",
)
