"""Threat models, one module each, registered in :data:`THREATS` (see :mod:`.base` for the interface).

Every module of this package is imported here, in name order, so a threat model is added by
adding its file (``DEVELOPERS.md``, "Adding a threat model").
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated

from pydantic import AfterValidator

from .base import THREATS, OtherSplitThreat, Selection, SplitFeatures, ThreatModel, modes, register_threat, threat_of_mode

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

ThreatName = Annotated[str, AfterValidator(THREATS.check)]
"""A pydantic field type: the name of a registered threat model."""

__all__ = [
    "THREATS",
    "OtherSplitThreat",
    "Selection",
    "SplitFeatures",
    "ThreatModel",
    "ThreatName",
    "modes",
    "register_threat",
    "threat_of_mode",
]
