"""User code in checkpoints: the modules that registered a model's backbone or architecture.

A backbone (or architecture) registered from the user's own module, e.g.::

    # mynets/backbones.py
    from metricattack.models.backbones import register_backbone

    @register_backbone("mynet")
    def build_mynet(pretrained, last_stride):
        return trunk, 256

is rebuilt when its checkpoint is loaded in a new process only if that module is imported
first. :func:`defining_modules` finds it when the model is saved (the ``__module__`` of the
registered builder and of the model class, when outside metricattack) and the checkpoint's
JSON records the names (``"modules": ["mynets.backbones"]``). :func:`import_modules` imports
exactly those names on load, with :func:`importlib.import_module`: a module name that the
user's own registration recorded, looked up on the normal Python path (installed packages,
``PYTHONPATH``); no file path and no pickled object from the checkpoint is ever executed.
A name that is not a dotted Python identifier is refused.
"""

from __future__ import annotations

import importlib
import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, MetricAttackWarning

log = logging.getLogger(__name__)

_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_OWN = "metricattack"


def _is_user_module(name: str) -> bool:
    return name != _OWN and not name.startswith(_OWN + ".")


def defining_modules(model: nn.Module) -> list[str]:
    """Modules outside metricattack that define ``model``'s class or registered its backbone.

    A definition in ``__main__`` cannot be imported by a later process: it is left out with a
    :class:`~metricattack.errors.MetricAttackWarning` (the checkpoint then loads only where it
    is registered again).
    """
    from .backbones import BACKBONES

    spec_of = getattr(model, "spec", None)
    spec = spec_of() if callable(spec_of) else {}
    candidates = [type(model).__module__]
    backbone = spec.get("backbone")
    if isinstance(backbone, str) and backbone in BACKBONES:
        candidates.append(getattr(BACKBONES.get(backbone), "__module__", _OWN))
    names: list[str] = []
    for name in candidates:
        if name == "__main__":
            warnings.warn(
                f"the model's class or backbone {backbone!r} is defined in __main__, which another process cannot import; "
                "define and register it in an importable module so its checkpoint loads anywhere",
                MetricAttackWarning,
                stacklevel=3,
            )
        elif _is_user_module(name) and name not in names:
            names.append(name)
    return names


def import_modules(names: Iterable[str], checkpoint: str | Path) -> None:
    """Import the modules a checkpoint recorded (see the module docstring); CheckpointError naming it otherwise."""
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise CheckpointError(f"checkpoint {checkpoint} records {name!r} as a module to import, which is not a Python module name")
        if not _is_user_module(name):
            continue
        log.info("importing module %s (recorded in checkpoint %s: it registers the model's backbone or architecture)", name, checkpoint)
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CheckpointError(
                f"checkpoint {checkpoint} needs module {name!r} (it registers the model's backbone or architecture) "
                f"but it cannot be imported ({exc}); install it or put its folder on PYTHONPATH"
            ) from None
