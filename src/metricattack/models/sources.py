"""Where a model comes from: a metricattack checkpoint, a Python function, or another project's weights.

Every command that takes ``--checkpoint FILE`` also takes ``--model SPEC [--weights FILE]``,
and benchmark configs take ``model:`` / ``weights:``; all of them resolve here:

* ``--checkpoint run/model.safetensors`` -- a checkpoint written by ``metricattack train``
  (safetensors + JSON sidecar, :func:`~metricattack.models.checkpoint.load_model`); it runs
  no code: a module it names is imported only when allowed (``allow_modules``,
  ``--allow-module``; :mod:`~metricattack.models.plugins`);
* ``--model python:MODULE:FUNCTION`` -- ``MODULE.FUNCTION()`` returns an ``nn.Module`` that
  maps images ``[B,3,H,W]`` in [0,1] (any size) to features ``[B,D]``. ``MODULE`` is imported
  by name with :func:`importlib.import_module` (installed, or its folder on ``PYTHONPATH``;
  nothing is read from the checkpoint or executed from a path): naming it is the user's
  consent to run its code, so give only modules you trust. ``--weights FILE`` optionally
  loads a state dict into the returned module (safetensors or ``torch.load(weights_only=True)``,
  keys must match exactly). The model is put in eval mode;
* ``--model torchreid:resnet50 --weights FILE`` (and the other formats of
  :data:`~metricattack.models.foreign.FORMATS`) -- a checkpoint of another project, mapped
  onto a metricattack model (:mod:`~metricattack.models.foreign`).

Example::

    loaded = ModelSource.parse("python:mynets:build", weights="mynet.safetensors").load()
    loaded.model, loaded.record["sha256"], loaded.anchor   # model, provenance, where learned metrics live
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, MetricAttackError
from ..io import sha256_file
from .contract import Purpose, check_device, check_model, one_line
from .foreign import FORMATS, load_foreign
from .weights import load_exact, read_state_dict
from .wrap import wrapped_preprocessing

log = logging.getLogger(__name__)

PYTHON_PREFIX = "python:"
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z_]\w*$")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for features and attacks, with where it came from.

    Attributes:
        model: in eval mode on the requested device.
        record: JSON-able provenance: ``label`` (short name for tables), ``sha256`` (identity of
            the weights, or of the module file for a Python model without weights) and the source.
        anchor: the file learned metrics (``--metric xqda``) are stored beside: the checkpoint or
            the weights file; ``None`` for a Python model without weights.
    """

    model: nn.Module
    record: dict[str, Any]
    anchor: Path | None


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint path, or a model spec (``python:MODULE:FUNCTION`` or a format name) with optional weights.

    ``allow_modules``: modules a checkpoint may import when the architecture or backbone it needs
    is not registered yet (:func:`~metricattack.models.plugins.require_registered`).
    """

    checkpoint: Path | None = None
    model: str | None = None
    weights: Path | None = None
    allow_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.model is None):
            raise MetricAttackError("a model source is either a checkpoint or a model spec (--checkpoint or --model), not both or neither")
        if self.model is not None:
            if self.model.startswith(PYTHON_PREFIX):
                _split_python_spec(self.model)
            else:
                FORMATS.get(self.model)  # unknown names list the formats
                if self.weights is None:
                    raise MetricAttackError(f"--model {self.model} needs --weights FILE (the {self.model} checkpoint to load)")
        elif self.weights is not None:
            raise MetricAttackError("--weights goes with --model; a --checkpoint holds its own weights")

    @classmethod
    def parse(cls, spec: str | Path, weights: str | Path | None = None, allow_modules: Iterable[str] = ()) -> ModelSource:
        """A source from one string: ``python:...``, a format name or any other ``project:name`` that is
        not an existing file is a model spec (an unknown one lists the formats); anything else a checkpoint path."""
        text = str(spec)
        weights_path = None if weights is None else Path(weights)
        if text.startswith(PYTHON_PREFIX) or text in FORMATS or (":" in text and not Path(text).exists()):
            return cls(model=text, weights=weights_path, allow_modules=tuple(allow_modules))
        return cls(checkpoint=Path(text), weights=weights_path, allow_modules=tuple(allow_modules))

    @property
    def label(self) -> str:
        """Short name for tables: ``B1/model.safetensors``, ``python:mynets:build``, ``torchreid:resnet50 (file.pth)``."""
        if self.checkpoint is not None:
            parent = self.checkpoint.parent.name
            return f"{parent}/{self.checkpoint.name}" if parent else self.checkpoint.name
        assert self.model is not None
        return self.model if self.weights is None else f"{self.model} ({self.weights.name})"

    def check_files(self) -> ModelSource:
        """``self`` when its checkpoint / weights file exists (cheap, before any work); CheckpointError otherwise."""
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise CheckpointError(
                f"checkpoint {self.checkpoint} does not exist (expected a .safetensors file written by `metricattack train`)"
            )
        if self.weights is not None and not self.weights.is_file():
            raise CheckpointError(f"--weights {self.weights} (for --model {self.model}) does not exist")
        if self.model is not None and self.model.startswith(PYTHON_PREFIX):
            _find_module(self.model)
        return self

    @property
    def anchor(self) -> Path | None:
        """The checkpoint or weights file (learned metrics live beside it), if any."""
        return self.checkpoint if self.checkpoint is not None else self.weights

    def load(self, device: str | torch.device = "cpu", purpose: Purpose = "features", *, gradient: bool = True) -> LoadedModel:
        """Build the model (eval mode, on ``device``) and its provenance record, checked on a probe
        (:func:`~metricattack.models.contract.check_model`: one error naming the model if it breaks
        the contract; ``purpose="attack"`` also what an attack needs, with ``gradient`` a gradient to the images)."""
        record: dict[str, Any] = {"label": self.label}
        model: nn.Module
        if self.checkpoint is not None:
            from .checkpoint import load_model

            model = load_model(self.checkpoint, device=device, allow_modules=self.allow_modules)
            record.update(checkpoint=str(self.checkpoint), sha256=sha256_file(self.checkpoint))
            check_model(model, self.label, device=device, purpose=purpose, gradient=gradient)
            return LoadedModel(model, record, self.checkpoint)
        assert self.model is not None
        record["model"] = self.model
        if self.model.startswith(PYTHON_PREFIX):
            model, module_file = load_python(self.model, self.weights)
            record["module_file"] = module_file
            if (preprocessing := wrapped_preprocessing(model)) is not None:
                record["preprocessing"] = preprocessing  # what ma.wrap added
            identity = self.weights if self.weights is not None else Path(module_file) if module_file else None
            record["sha256"] = sha256_file(identity) if identity is not None else None
        else:
            assert self.weights is not None  # a format needs weights (checked in __post_init__)
            model = load_foreign(self.model, self.weights)
            record["preprocessing"] = FORMATS.get(self.model).preprocessing.to_dict()
            spec_of = getattr(model, "spec", None)
            if callable(spec_of):
                record["spec"] = spec_of()  # what the file was mapped onto (e.g. which fast-reid stem)
            record["sha256"] = sha256_file(self.weights)
        if self.weights is not None:
            record["weights"] = str(self.weights)
        check_device(model, self.label)
        model = model.to(device).eval()
        check_model(model, self.label, device=device, purpose=purpose, gradient=gradient)
        log.info("model %s loaded", self.label)
        return LoadedModel(model, record, self.weights)


def _split_python_spec(spec: str) -> tuple[str, str]:
    """``python:MODULE:FUNCTION`` → ``(MODULE, FUNCTION)``; MetricAttackError on any other shape."""
    parts = spec[len(PYTHON_PREFIX) :].split(":")
    if len(parts) != 2 or not _MODULE_NAME.match(parts[0]) or not _FUNCTION_NAME.match(parts[1]):
        raise MetricAttackError(
            f"--model {spec!r}: expected python:MODULE:FUNCTION with an importable dotted module name and a function name, "
            "e.g. python:mynets.reid:build_model"
        )
    return parts[0], parts[1]


def _find_module(spec: str) -> None:
    """MetricAttackError unless the module of ``python:MODULE:FUNCTION`` can be found (the module
    itself is not run; a dotted name's parent packages are imported, as ``import`` would)."""
    module_name, _ = _split_python_spec(spec)
    try:
        found = importlib.util.find_spec(module_name)
    except ImportError:
        found = None
    if found is None:
        raise MetricAttackError(f"--model {spec}: cannot find module {module_name!r}; install it or put its folder on PYTHONPATH")


def load_python(spec: str, weights: Path | None) -> tuple[nn.Module, str | None]:
    """``MODULE.FUNCTION()`` (with ``weights`` loaded) and the module's file."""
    module_name, function_name = _split_python_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MetricAttackError(
            f"--model {spec}: cannot import module {module_name!r} ({exc}); install it or put its folder on PYTHONPATH"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise MetricAttackError(f"--model {spec}: module {module_name!r} ({module.__file__}) has no function {function_name!r}")
    try:
        model = function()
    except Exception as exc:  # the user's code: one line naming it instead of a traceback
        raise MetricAttackError(f"--model {spec}: {function_name}() raised {one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise MetricAttackError(
            f"--model {spec}: {function_name}() returned a {type(model).__name__}, expected a torch.nn.Module "
            "mapping images [B,3,H,W] in [0,1] to features [B,D]"
        )
    if weights is not None:
        state = read_state_dict(weights, f"--weights file for {spec}")
        try:
            load_exact(model, state, str(weights), f"the state dict of the module {function_name}() returns")
        except RuntimeError as exc:  # dtype or other load_state_dict refusals
            raise CheckpointError(f"cannot load --weights {weights} into {spec}: {exc}") from None
    return model.eval(), getattr(module, "__file__", None)


def load_model(
    source: str | Path, weights: str | Path | None = None, device: str | torch.device = "cpu", *, allow_modules: Iterable[str] = ()
) -> nn.Module:
    """Any model in eval mode: a checkpoint path, ``python:MODULE:FUNCTION`` or a format name with ``weights``.

    ``allow_modules``: modules a checkpoint may import when the architecture or backbone it needs
    is not registered yet (:mod:`~metricattack.models.plugins`); a checkpoint imports nothing else.

    Example::

        >>> model = load_model("runs/r18/model.safetensors")
        >>> model = load_model("torchreid:resnet50", weights="resnet50_market_xent.pth.tar")
        >>> model = load_model("python:mynets:build")
    """
    return ModelSource.parse(source, weights, allow_modules).load(device).model
