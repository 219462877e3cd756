"""Backbone registry: a name → a convolutional trunk and its output channel count.

Every builder returns ``(trunk, feature_dim)`` where ``trunk(x [B,3,H,W]) -> [B,C,h,w]``
with ``C == feature_dim`` (no pooling, no classifier). ImageNet initialisation:

* ``pretrained=False``: random initialisation (torchvision defaults);
* ``pretrained=True``: torchvision's weights API (``Weights.DEFAULT``), read from the torch
  hub cache or downloaded; offline without a cached file this raises a
  :class:`~metricattack.errors.MetricAttackError` explaining what to do;
* ``pretrained="path/to/file"``: a local ``.safetensors`` or ``.pth`` file holding the
  torchvision classification model's state dict (e.g. ``resnet50-11ad3fa6.pth``).

The names live in :data:`BACKBONES` (a :class:`~metricattack.registry.Registry`); add your
own trunk with :func:`register_backbone`.

Example::

    trunk, dim = build_backbone("resnet18", pretrained=False, last_stride=1)
    trunk(torch.rand(2, 3, 64, 32)).shape  # -> [2, 512, 4, 2]

    @register_backbone("tiny")
    def build_tiny(pretrained, last_stride):
        return nn.Conv2d(3, 8, 3, stride=2), 8
"""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from ..errors import MetricAttackError
from ..registry import Registry
from .weights import read_state_dict

Pretrained = bool | str
Builder = Callable[[Pretrained, int], tuple[nn.Module, int]]

BACKBONES: Registry[Builder] = Registry("backbone")
"""Backbone name → builder ``(pretrained, last_stride) -> (trunk, feature_dim)``."""


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder ``(pretrained, last_stride) -> (trunk, dim)`` to :data:`BACKBONES` as ``name``."""
    return BACKBONES.register(name)


def build_backbone(name: str, pretrained: Pretrained = False, last_stride: int = 1) -> tuple[nn.Module, int]:
    """Build the trunk registered as ``name``; ``last_stride`` (1 or 2) applies to ResNets only."""
    builder = BACKBONES.get(name)
    if last_stride not in (1, 2):
        raise MetricAttackError(f"last_stride must be 1 or 2, got {last_stride!r}")
    return builder(pretrained, last_stride)


# --- ImageNet weights ---------------------------------------------------------------------

_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _download_state_dict(weights: tvm.WeightsEnum) -> dict[str, torch.Tensor]:
    """State dict of torchvision ``weights`` from the hub cache, downloading when missing."""
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise MetricAttackError(
            f"ImageNet weights {weights} are not in the torch hub cache ({torch.hub.get_dir()}/checkpoints) "
            f"and could not be downloaded ({exc}). Offline, set `model.pretrained: false` in the config, "
            "or set `model.pretrained` to the path of a local weights file (.pth or .safetensors)"
        ) from None


def _load_imagenet(model: nn.Module, pretrained: Pretrained, weights: tvm.WeightsEnum, name: str) -> None:
    """Load ImageNet weights into the full torchvision ``model`` (in place)."""
    if pretrained is False:
        return
    if pretrained is True:
        state, source = _download_state_dict(weights), f"torchvision {weights}"
    else:
        state, source = read_state_dict(Path(pretrained), "pretrained weights file"), str(pretrained)
    state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise MetricAttackError(
            f"pretrained weights {source} do not fit backbone {name!r}: "
            f"missing keys {result.missing_keys[:5]}, unexpected keys {result.unexpected_keys[:5]} "
            f"(expected the state dict of torchvision's {name} classification model)"
        )


def _build(factory: Callable[..., nn.Module], weights: tvm.WeightsEnum, pretrained: Pretrained, name: str) -> Any:
    """The torchvision classification model with ``pretrained`` weights (``Any``: callers take its stages by attribute)."""
    if not isinstance(pretrained, (bool, str)):
        raise MetricAttackError(f"pretrained must be true, false or a weights file path, got {pretrained!r}")
    model = factory(weights=None)
    try:
        _load_imagenet(model, pretrained, weights, name)
    except RuntimeError as exc:  # shape mismatch inside load_state_dict
        raise MetricAttackError(f"pretrained weights {pretrained} do not fit backbone {name!r}: {exc}") from None
    return model


# --- builders -----------------------------------------------------------------------------


def _resnet_trunk(model: Any, last_stride: int) -> nn.Module:
    if last_stride == 1:
        for module in model.layer4[0].modules():
            if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                module.stride = (1, 1)
    return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4)


def _register_resnet(name: str, factory: Callable[..., nn.Module], weights: tvm.WeightsEnum, dim: int, *, ceil_pool: bool = False) -> None:
    """``ceil_pool``: fast-reid's stem, a 3x3/2 max-pool without padding in ceil mode (torchvision pads by 1)."""

    @register_backbone(name)
    def build(pretrained: Pretrained, last_stride: int) -> tuple[nn.Module, int]:
        model = _build(factory, weights, pretrained, name)
        if ceil_pool:
            model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        return _resnet_trunk(model, last_stride), dim


_register_resnet("resnet18", tvm.resnet18, tvm.ResNet18_Weights.DEFAULT, 512)
_register_resnet("resnet34", tvm.resnet34, tvm.ResNet34_Weights.DEFAULT, 512)
_register_resnet("resnet50", tvm.resnet50, tvm.ResNet50_Weights.DEFAULT, 2048)
_register_resnet("resnext50_32x4d", tvm.resnext50_32x4d, tvm.ResNeXt50_32X4D_Weights.DEFAULT, 2048)
# fast-reid's ResNet-50 (the BoT baseline's backbone): same weights as resnet50, other max-pool windows.
_register_resnet("fastreid_resnet50", tvm.resnet50, tvm.ResNet50_Weights.DEFAULT, 2048, ceil_pool=True)


@register_backbone("densenet121")
def _densenet121(pretrained: Pretrained, last_stride: int) -> tuple[nn.Module, int]:
    model = _build(tvm.densenet121, tvm.DenseNet121_Weights.DEFAULT, pretrained, "densenet121")
    return nn.Sequential(model.features, nn.ReLU(inplace=False)), 1024


def _default_bn_momentum(trunk: nn.Module) -> nn.Module:
    """Set every BatchNorm's momentum to PyTorch's default 0.1.

    torchvision's MobileNetV3 uses 0.01 (tuned for long ImageNet runs); in a short re-ID run
    the running statistics then stay near their initial values, and in eval mode every image
    collapses onto nearly the same feature.
    """
    for module in trunk.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return trunk


def _register_mobilenet(name: str, factory: Callable[..., nn.Module], weights: tvm.WeightsEnum, dim: int) -> None:
    @register_backbone(name)
    def build(pretrained: Pretrained, last_stride: int) -> tuple[nn.Module, int]:
        return _default_bn_momentum(_build(factory, weights, pretrained, name).features), dim


_register_mobilenet("mobilenet_v3_small", tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights.DEFAULT, 576)
_register_mobilenet("mobilenet_v3_large", tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.DEFAULT, 960)
