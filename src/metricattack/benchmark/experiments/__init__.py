"""The benchmark's experiments (one module per paper table / figure), in one registry.

Every module of this package except ``base`` defines ``EXPERIMENT``, an
:class:`~.base.Experiment`; :data:`EXPERIMENTS` lists them in the order of their sections in
:class:`~metricattack.benchmark.schema.Results` (the paper's order). Adding an experiment is a
new module here plus its section in the results schema.
"""

from __future__ import annotations

import importlib
import pkgutil

from ...registry import Registry
from ..schema import Results
from .base import Experiment, Figure


def _discover() -> Registry[Experiment]:
    found: dict[str, Experiment] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            experiment = importlib.import_module(f"{__name__}.{info.name}").EXPERIMENT
            found[experiment.name] = experiment
    registry: Registry[Experiment] = Registry("experiment")
    for section in Results.model_fields:
        if section in found:
            registry.register(section, found.pop(section))
    if found:
        raise RuntimeError(f"experiments without a section in the results schema: {', '.join(sorted(found))}")
    return registry


EXPERIMENTS: Registry[Experiment] = _discover()
"""Experiment name (its results.json section) → :class:`~.base.Experiment`, in paper order."""

__all__ = ["EXPERIMENTS", "Experiment", "Figure"]
