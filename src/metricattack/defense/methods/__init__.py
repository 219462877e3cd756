"""The defense methods, one module each, registered in :data:`DEFENSES` in this order:
``metric-preserving`` (the paper), ``online`` (ours), ``pgd-at``, ``act``, ``hm``, ``goat``.

A new method is a module here that defines its settings section (a pydantic model), its batch
objective (an :class:`~.base.AdversarialObjective`) and ``METHOD``, a
:class:`~.base.DefenseMethod`, registered below; its section is a field of
:class:`~metricattack.defense.config.DefenseConfig` named by ``DefenseMethod.section``.
"""

from __future__ import annotations

from . import act, goat, hm, metric_preserving, online, pgd_at
from .act import ACTSection
from .base import DEFENSES, DefenseMethod, InnerAttack
from .goat import GOATSection
from .hm import HMSection
from .metric_preserving import TrainingSetAttack
from .online import OnlineSection
from .pgd_at import PGDATSection

for _name, _module in (
    ("metric-preserving", metric_preserving),
    ("online", online),
    ("pgd-at", pgd_at),
    ("act", act),
    ("hm", hm),
    ("goat", goat),
):
    DEFENSES.register(_name, _module.METHOD)

__all__ = [
    "DEFENSES",
    "ACTSection",
    "DefenseMethod",
    "GOATSection",
    "HMSection",
    "InnerAttack",
    "OnlineSection",
    "PGDATSection",
    "TrainingSetAttack",
]
