"""metricattack: adversarial metric attack and defense for person re-identification.

The public API, in three lines::

    import metricattack as ma
    model = ma.load_model("runs/r18/model.safetensors")       # or "python:mynets:build", or "torchreid:resnet50" + weights=
    adv = ma.MetricAttack(model, eps=5)(images, references)    # images [B,3,H,W] in [0,1], references [B,R,D]

A network that expects normalised tensors becomes a model with :func:`wrap` (its state-dict
keys unchanged, so its own checkpoints load). Data, features and evaluation: :func:`load_dataset`, :func:`extract_features`,
:func:`evaluate_model`, :func:`evaluate_features`; robustness: :func:`evaluate_robustness` (a
worst case over an attack cascade, with the checks of gradient masking); metrics: :func:`build_metric`,
:func:`load_metric`, :func:`fit_learned` (XQDA / KISSME); registries of everything named
(:data:`ARCHITECTURES`, :data:`BACKBONES`, :data:`DATASETS`, :data:`METRICS`, :data:`LEARNED_METRICS`, :data:`METHODS`,
:data:`THREATS`, :data:`FORMATS`): register your own with ``REGISTRY.register(name, obj)`` (attack
methods and threat models: :func:`register_method`, :func:`register_threat`).
The names are imported on first use, so ``import metricattack`` stays light. The library
logs through :mod:`logging` (logger ``"metricattack"``) and never prints.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("metricattack")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> module defining it
_PUBLIC = {
    "MetricAttack": "attacks.api",
    "quantize": "attacks.ops",
    "AttackSpec": "attacks.spec",
    "UniversalConfig": "attacks.universal",
    "train_universal": "attacks.universal",
    "load_delta": "attacks.universal",
    "apply_delta": "attacks.universal",
    "load_dataset": "data.layouts",
    "MetricAttackError": "errors",
    "evaluate_features": "evaluation.features",
    "evaluate_model": "evaluation.features",
    "extract_features": "evaluation.features",
    "Metric": "metrics.distance",
    "build_metric": "metrics.distance",
    "load_metric": "metrics.distance",
    "save_metric": "metrics.distance",
    "fit_learned": "metrics.learned",
    "fit_learned_metric": "metrics.learned",
    "register_backbone": "models.backbones",
    "BACKBONES": "models.backbones",
    "ARCHITECTURES": "models.base",
    "register_architecture": "models.base",
    "DATASETS": "data.layouts",
    "METRICS": "metrics.distance",
    "LEARNED_METRICS": "metrics.learned",
    "METHODS": "attacks.methods",
    "register_method": "attacks.methods",
    "THREATS": "attacks.threats",
    "register_threat": "attacks.threats",
    "read_image": "data.loading",
    "save_checkpoint": "models.checkpoint",
    "FORMATS": "models.foreign",
    "ReIDModel": "models.reid",
    "ModelSource": "models.sources",
    "load_model": "models.sources",
    "wrap": "models.wrap",
    "IMAGENET_MEAN": "models.base",
    "IMAGENET_STD": "models.base",
    "evaluate_robustness": "robustness.evaluate",
}

__all__ = [
    "__version__",
    "ARCHITECTURES",
    "register_architecture",
    "BACKBONES",
    "DATASETS",
    "LEARNED_METRICS",
    "METHODS",
    "METRICS",
    "THREATS",
    "read_image",
    "AttackSpec",
    "UniversalConfig",
    "apply_delta",
    "load_delta",
    "train_universal",
    "FORMATS",
    "Metric",
    "MetricAttack",
    "MetricAttackError",
    "ModelSource",
    "ReIDModel",
    "build_metric",
    "evaluate_features",
    "evaluate_model",
    "evaluate_robustness",
    "extract_features",
    "fit_learned",
    "fit_learned_metric",
    "load_dataset",
    "load_metric",
    "load_model",
    "quantize",
    "register_backbone",
    "register_method",
    "register_threat",
    "save_checkpoint",
    "save_metric",
    "wrap",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'metricattack' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


if TYPE_CHECKING:
    from .attacks.api import MetricAttack
    from .attacks.methods import METHODS, register_method
    from .attacks.ops import quantize
    from .attacks.spec import AttackSpec
    from .attacks.threats import THREATS, register_threat
    from .attacks.universal import UniversalConfig, apply_delta, load_delta, train_universal
    from .data.layouts import DATASETS, load_dataset
    from .data.loading import read_image
    from .errors import MetricAttackError
    from .evaluation.features import evaluate_features, evaluate_model, extract_features
    from .metrics.distance import METRICS, Metric, build_metric, load_metric, save_metric
    from .metrics.learned import LEARNED_METRICS, fit_learned, fit_learned_metric
    from .models.backbones import BACKBONES, register_backbone
    from .models.base import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, register_architecture
    from .models.checkpoint import save_checkpoint
    from .models.foreign import FORMATS
    from .models.reid import ReIDModel
    from .models.sources import ModelSource, load_model
    from .models.wrap import wrap
    from .robustness.evaluate import evaluate_robustness
