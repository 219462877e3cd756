"""Attack methods, one module each, registered in :data:`METHODS` (see :mod:`.base` for the interface).

Every module of this package is imported here, in name order, so a method is added by adding
its file (``DEVELOPERS.md``, "Adding an attack method").
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import METHODS, AttackMethod, MethodOptions, register_method
from .iterative import IterativeOptions, IterativeSignMethod, MomentumOptions, MomentumSignMethod, paper_steps

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "METHODS",
    "AttackMethod",
    "IterativeOptions",
    "IterativeSignMethod",
    "MethodOptions",
    "MomentumOptions",
    "MomentumSignMethod",
    "paper_steps",
    "register_method",
]
