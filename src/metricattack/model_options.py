"""The commands' options that name models: ``--checkpoint FILE`` or ``--model SPEC [--weights FILE]``.

``--model`` takes ``python:MODULE:FUNCTION`` or a format of another project
(``torchreid:resnet50``, ``fastreid:bot_r50``, ...; see :mod:`metricattack.models.sources`).
``--weights FILE`` belongs to the ``--model`` (or ``--eval-model``) right before it, so an
ensemble can mix sources::

    metricattack attack --checkpoint runs/b1/model.safetensors \\
        --model torchreid:resnet50 --weights resnet50_market.pth --model python:mynets:build ...

A ``--weights`` without its ``--model`` before it, or a second one for the same ``--model``,
stops argument parsing with a usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import MetricAttackError
from .models.sources import ModelSource

MODEL_HELP = (
    "a model from elsewhere: python:MODULE:FUNCTION (FUNCTION() returns an nn.Module mapping images in [0,1] to "
    "features [B,D]; MODULE importable, e.g. its folder on PYTHONPATH) or a format of another project "
    "({formats}) with --weights FILE"
)
WEIGHTS_HELP = (
    "state dict for the --model right before it (.safetensors, or .pth read with torch.load(weights_only=True)); "
    "optional for python:, required for formats"
)


def _formats() -> str:
    from .models.foreign import FORMATS

    return ", ".join(FORMATS.names())


class _ModelAction(argparse.Action):
    """Append ``[spec, None]`` to the destination list and remember it as the target of the next ``--weights``."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        entry = [str(values), None]
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), entry])
        namespace._weights_target = (option_string, entry)


class _WeightsAction(argparse.Action):
    """Attach a weights file to the last ``--model`` / ``--eval-model``."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        target = getattr(namespace, "_weights_target", None)
        if target is None:
            parser.error(f"{option_string} {values}: put it right after the --model it belongs to")
        model_option, entry = target
        if entry[1] is not None:
            parser.error(f"{model_option} {entry[0]} got two --weights files ({entry[1]} and {values})")
        entry[1] = Path(values)


def add_model_option(container: Any, option: str = "--model", *, repeatable: bool = False) -> None:
    """Add ``option`` (``--model`` / ``--eval-model``) to a parser or a mutually exclusive group."""
    suffix = "; repeatable" if repeatable else ""
    container.add_argument(option, action=_ModelAction, default=[], metavar="SPEC", help=MODEL_HELP.format(formats=_formats()) + suffix)


def add_weights_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--weights`` (pairs with the ``--model`` / ``--eval-model`` right before it)."""
    parser.add_argument("--weights", action=_WeightsAction, metavar="FILE", help=WEIGHTS_HELP)


def model_sources(checkpoints: list[Path] | Path | None, models: list[list[Any]]) -> list[ModelSource]:
    """Sources of the ``--checkpoint`` options (first), then of the ``--model`` options with their weights.

    Missing checkpoint or weights files stop here, before any work (CheckpointError).
    """
    if checkpoints is None:
        paths: list[Path] = []
    elif isinstance(checkpoints, (list, tuple)):
        paths = [Path(p) for p in checkpoints]
    else:
        paths = [Path(checkpoints)]
    sources = [*(ModelSource(checkpoint=p) for p in paths), *(ModelSource(model=spec, weights=weights) for spec, weights in models)]
    return [source.check_files() for source in sources]


def single_model_source(args: argparse.Namespace) -> ModelSource:
    """The one model of ``--checkpoint`` or ``--model`` (commands that evaluate or fit one model)."""
    sources = model_sources(getattr(args, "checkpoint", None), getattr(args, "model", []))
    if len(sources) != 1:
        raise MetricAttackError(f"give one model (--checkpoint FILE or --model SPEC), got {len(sources)}")
    return sources[0]
