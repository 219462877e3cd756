"""User code named by checkpoints: imported only when the model needs it and the user allowed it.

A backbone (or architecture) registered from the user's own module, e.g.::

    # mynets/backbones.py
    from metricattack.models.backbones import register_backbone

    @register_backbone("mynet")
    def build_mynet(pretrained, last_stride):
        return trunk, 256

exists in a new process only once that module is imported. :func:`defining_modules` finds it
when the model is saved (the ``__module__`` of the model class and of the registered backbone
builder, when outside metricattack) and the checkpoint's JSON records it per kind
(``"modules": {"backbone": "mynets.backbones"}``).

Loading a checkpoint never runs code by itself (a checkpoint is a file from somewhere else, and
``python -m metricattack``, ``torchrun -m metricattack`` and ``PYTHONPATH=.`` put the current
folder on ``sys.path``, where a downloaded ``.py`` may sit beside the checkpoint).
:func:`require_registered` imports the recorded module only when both hold:

1. the spec's architecture or backbone is not registered yet: a module the user imported
   already registered it, and then nothing is imported;
2. the user allowed that module by name: ``--allow-module NAME`` (every command),
   ``load_model(..., allow_modules=[NAME])``, or ``METRICATTACK_ALLOW_MODULES=NAME[,NAME...]``
   (:data:`ALLOW_ENV`). Allowing a package allows its submodules.

Otherwise one :class:`~metricattack.errors.CheckpointError` names the module the checkpoint asks
for and how to allow it. The import is :func:`importlib.import_module` of a dotted name (no file
path, no pickled object from the checkpoint); a name that is not a Python module name is refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError, MetricAttackWarning

log = logging.getLogger(__name__)

#: Environment variable: comma-separated module names a checkpoint may ask to import.
ALLOW_ENV = "METRICATTACK_ALLOW_MODULES"
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_OWN = "metricattack"
_ALLOWED: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("metricattack_allowed_modules", default=frozenset())


def _is_user_module(name: str) -> bool:
    return name != _OWN and not name.startswith(_OWN + ".")


def _registries() -> dict[str, Any]:
    from .backbones import BACKBONES
    from .base import ARCHITECTURES

    return {"architecture": ARCHITECTURES, "backbone": BACKBONES}


def _needs(spec: dict[str, Any]) -> dict[str, str]:
    """What ``spec`` needs registered: its architecture and, when it names one, its backbone."""
    from .base import architecture_of

    needs = {"architecture": architecture_of(spec)}
    if isinstance(spec.get("backbone"), str):
        needs["backbone"] = spec["backbone"]
    return needs


def defining_modules(model: nn.Module) -> dict[str, str]:
    """``{"architecture" | "backbone": module}`` for the modules outside metricattack that define
    ``model``'s class or registered its backbone.

    A definition in ``__main__`` cannot be imported by a later process: it is left out with a
    :class:`~metricattack.errors.MetricAttackWarning` (the checkpoint then loads only where it
    is registered again).
    """
    from .backbones import BACKBONES

    spec_of = getattr(model, "spec", None)
    spec = spec_of() if callable(spec_of) else {}
    candidates = {"architecture": type(model).__module__}
    backbone = spec.get("backbone")
    if isinstance(backbone, str) and backbone in BACKBONES:
        candidates["backbone"] = getattr(BACKBONES.get(backbone), "__module__", _OWN)
    found: dict[str, str] = {}
    for kind, name in candidates.items():
        if name == "__main__":
            warnings.warn(
                f"the model's {kind} is defined in __main__, which another process cannot import; "
                "define and register it in an importable module so its checkpoint loads anywhere",
                MetricAttackWarning,
                stacklevel=3,
            )
        elif _is_user_module(name):
            found[kind] = name
    return found


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _MODULE_NAME.match(name):
        raise CheckpointError(f"{where} records {name!r} as a module to import, which is not a Python module name")
    return name


def allowed_modules(extra: Iterable[str] = ()) -> frozenset[str]:
    """The module names the user allowed: ``extra``, those of :func:`allowing` and ``$METRICATTACK_ALLOW_MODULES``."""
    from_env = [n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()]
    for name in from_env:
        if not _MODULE_NAME.match(name):
            raise ConfigError(f"{ALLOW_ENV}: {name!r} is not a Python module name (expected NAME[,NAME...], e.g. mynets.backbones)")
    return frozenset(extra) | _ALLOWED.get() | frozenset(from_env)


@contextlib.contextmanager
def allowing(names: Iterable[str]) -> Iterator[None]:
    """Within the block, checkpoints may import the modules ``names`` (the CLI's ``--allow-module``)."""
    names = list(names)
    for name in names:
        if not _MODULE_NAME.match(name):
            raise ConfigError(f"--allow-module {name!r} is not a Python module name (e.g. mynets.backbones)")
    token = _ALLOWED.set(_ALLOWED.get() | frozenset(names))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def _is_allowed(name: str, allowed: frozenset[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def _how_to_allow(name: str) -> str:
    return (
        f"importing it runs its code: if you trust it, allow it with --allow-module {name} "
        f"(Python: load_model(..., allow_modules=[{name!r}]); or {ALLOW_ENV}={name}), or import it yourself before loading"
    )


def require_registered(spec: dict[str, Any], recorded: Any, checkpoint: str | Path, allow: Iterable[str] = ()) -> None:
    """Make sure ``spec``'s architecture and backbone are registered (see the module docstring).

    ``recorded``: the checkpoint's ``"modules"`` (``{kind: module}``; a list of names in
    checkpoints written before the kinds were recorded). Imports nothing when everything is
    registered; raises :class:`CheckpointError` naming the module and how to allow it otherwise.
    """
    where = f"checkpoint {checkpoint}"
    per_kind = _recorded(recorded, where)
    registries = _registries()
    missing = {kind: name for kind, name in _needs(spec).items() if name not in registries[kind]}
    if not missing:
        return
    allowed = allowed_modules(allow)
    for kind, name in missing.items():
        if name in registries[kind]:  # registered by a module imported for the other kind
            continue
        candidates = per_kind.get(kind, per_kind.get("", []))
        if not candidates:
            raise CheckpointError(
                f"{where} needs the {kind} {name!r}, which is not registered and which the checkpoint names no module for; "
                f"import the module that registers it before loading (registered {kind}s: {', '.join(registries[kind].names())})"
            )
        chosen = [m for m in candidates if _is_allowed(m, allowed)]
        if not chosen:
            asked = " or ".join(repr(m) for m in candidates)
            raise CheckpointError(
                f"{where} needs the {kind} {name!r}, which is not registered; it asks to import module {asked}: {_how_to_allow(candidates[0])}"
            )
        for module in chosen:
            _import(module, kind, name, where)
            if name in registries[kind]:
                break
        else:
            raise CheckpointError(f"{where} needs the {kind} {name!r}, but module {' / '.join(chosen)} did not register it")


def _recorded(recorded: Any, where: str) -> dict[str, list[str]]:
    """The checkpoint's ``"modules"`` as ``{kind: [user module]}`` (key ``""``: a legacy list, for any kind)."""
    if recorded is None:
        return {}
    if isinstance(recorded, dict):
        items = [(str(kind), _check_name(m, where)) for kind, m in recorded.items()]
    elif isinstance(recorded, list):
        items = [("", _check_name(m, where)) for m in recorded]
    else:
        raise CheckpointError(f"{where} records modules {recorded!r}; expected a mapping such as {{'backbone': 'mynets.backbones'}}")
    per_kind: dict[str, list[str]] = {}
    for kind, module in items:
        if _is_user_module(module):
            per_kind.setdefault(kind, []).append(module)
    return per_kind


def _import(module: str, kind: str, name: str, where: str) -> None:
    log.info("importing module %s (allowed; %s needs the %s %r it registers)", module, where, kind, name)
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise CheckpointError(
            f"{where} needs module {module!r} (it registers the {kind} {name!r}) but it cannot be imported ({exc}); "
            "install it or put its folder on PYTHONPATH"
        ) from None
