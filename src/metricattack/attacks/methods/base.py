"""The method interface: :class:`AttackMethod` (an algorithm) with its :class:`MethodOptions` (a schema).

A method is a class registered in :data:`METHODS` by :func:`register_method`, one module per
method in this package (every module here is imported when the package is, so a new file is
all it takes). It declares:

* ``Options``: a :class:`MethodOptions` subclass (pydantic, unknown keys refused) with every
  option, its default and a ``description`` (shown by ``--help``); :meth:`MethodOptions.resolve`
  fills the defaults that depend on ε (0..255 units) and checks options against ε;
* ``label`` (tables), ``summary`` (one line for help texts and reports);
* ``uses_gradient``: False for a method that only evaluates losses (never a backward pass;
  the caller checks it); ``uses_model``: False for a method that never calls the model at attack
  time (it applies a perturbation computed beforehand, e.g. ``uap``);
* ``quick_options``: options for a quick run on tiny data (the contract tests use them through
  :meth:`AttackMethod.quick`, which a method whose options name a file overrides to write one);
* :meth:`AttackMethod.refusal`: why it cannot attack under a threat model (None: it can);
* :attr:`AttackMethod.first_gradient_at_clean`: True when it cannot leave the clean images if the
  objective's gradient is zero there (its steps use gradients at the clean images until they
  move: no random start, no transformed copies, no sampled neighbourhood), so a threat model whose
  objective has a zero gradient there is refused before any work (:meth:`~metricattack.attacks.threats.base.ThreatModel.refusal`);
* :meth:`AttackMethod.run`: ``problem -> adversarial images [B,3,H,W]``, an *ascent* of the
  problem's signed loss through :class:`~metricattack.attacks.problem.AttackProblem` (which
  counts calls and zero gradients, and gives per-image generators). The caller
  (:func:`~metricattack.attacks.perturb.perturb`) projects the result into the ε-ball and
  [0,1] and restores inactive images, so a method cannot break that contract.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel, model_validator

from ...config import StrictModel
from ...registry import Registry
from ..problem import AttackProblem

_O = TypeVar("_O", bound="MethodOptions")


def _accepts(annotation: Any, kind: type) -> bool:
    return annotation is kind or kind in typing.get_args(annotation)


def refuse_bool_confusion(model: type[BaseModel], data: Any) -> Any:
    """A before-validator's check: a flag (a ``bool`` field) takes only ``true`` / ``false`` (not ``"no"``,
    not 1), and a number (an ``int`` / ``float`` field) is never a bool (``eps: true`` is not 1). pydantic's
    lax mode would convert both silently."""
    if not isinstance(data, dict):
        return data
    for key, value in data.items():
        info = model.model_fields.get(key)
        if info is None or value is None:
            continue
        if _accepts(info.annotation, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
        elif isinstance(value, bool) and (_accepts(info.annotation, int) or _accepts(info.annotation, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
    return data


class MethodOptions(StrictModel):
    """Base of every method's options schema (no options: this class itself). Flags take only real
    bools and numbers are never bools (:func:`refuse_bool_confusion`)."""

    @model_validator(mode="before")
    @classmethod
    def _no_bool_confusion(cls, data: Any) -> Any:
        return refuse_bool_confusion(cls, data)

    def resolve(self: _O, eps: float) -> _O:
        """These options with the defaults that depend on ``eps`` (0..255 units) filled in;
        ValueError when an option contradicts ``eps``. Default: unchanged."""
        return self


OptionsT = TypeVar("OptionsT", bound=MethodOptions)


class AttackMethod(Generic[OptionsT]):
    """One attack algorithm with its resolved options (see the module docstring)."""

    name: ClassVar[str] = ""  # set by register_method
    label: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    uses_gradient: ClassVar[bool] = True
    uses_model: ClassVar[bool] = True
    quick_options: ClassVar[dict[str, Any]] = {}
    """Options that keep a run on a few tiny images quick (e.g. a small query budget): the contract
    tests (``tests/test_attack_contract.py``) attack every method with them; empty: the defaults."""

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    @property
    def first_gradient_at_clean(self) -> bool:
        """True when it cannot leave the clean images if the objective's gradient is zero there (module docstring)."""
        return self.uses_gradient

    @classmethod
    def quick(cls, folder: Path, eps: float) -> dict[str, Any]:
        """Options for a quick run at ``eps`` (the contract tests): :attr:`quick_options`; a method whose
        options name a file (e.g. a trained perturbation) writes a small one into ``folder``."""
        return dict(cls.quick_options)

    def refusal(self, threat: Any) -> str | None:
        """Why this method cannot attack under ``threat`` (a :class:`~metricattack.attacks.threats.base.ThreatModel`),
        or None when it can; :meth:`ThreatModel.refusal <metricattack.attacks.threats.base.ThreatModel.refusal>` asks it."""
        return None

    def run(self, problem: AttackProblem) -> torch.Tensor:
        """Adversarial images ``[B,3,H,W]`` for ``problem`` (an ascent of its signed loss)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


METHODS: Registry[type[AttackMethod[Any]]] = Registry("attack method")
"""Attack method name → :class:`AttackMethod` subclass."""

MethodT = TypeVar("MethodT", bound=type[AttackMethod[Any]])


def register_method(name: str) -> Callable[[MethodT], MethodT]:
    """Class decorator: register an :class:`AttackMethod` subclass as ``name`` (its ``name`` attribute is set)."""

    def add(cls: MethodT) -> MethodT:
        if not cls.summary:
            raise ValueError(f"attack method {name!r} needs a one-line summary")
        cls.name = name
        METHODS.register(name, cls)
        return cls

    return add


def option_lines(cls: type[AttackMethod[Any]]) -> list[str]:
    """``name: description`` per option of ``cls`` (help texts; the description states the default)."""
    lines = []
    for key, info in cls.Options.model_fields.items():
        default = "" if info.default is None or info.is_required() else f" (default {info.default!r})"
        lines.append(f"{key}: {info.description or ''}{default}")
    return lines
