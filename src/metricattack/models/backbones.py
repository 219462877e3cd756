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

``timm:<name>`` is any model of timm (``pip install metricattack[timm]``), built with
``timm.create_model(name, num_classes=0)``: the trunk returns the model's own pooled features
(a ViT's class token after its final norm, a CNN's global average) as ``[B, C, 1, 1]``. Vision
transformers are built with ``dynamic_img_size=True`` (the position embeddings are resampled to
the input's patch grid), so they take the re-ID input size (e.g. 256×128, a multiple of the
patch size); ``last_stride`` does not apply. ``pretrained=True`` loads timm's weights from the
Hugging Face cache or downloads them (offline without a cached file: a
:class:`~metricattack.errors.MetricAttackError`; ``HF_HUB_OFFLINE=1`` skips the download's
retries); ``pretrained="file"`` loads a local state dict of that timm model (timm's own key
filter resamples position embeddings; the classifier is dropped).

Example::

    trunk, dim = build_backbone("resnet18", pretrained=False, last_stride=1)
    trunk(torch.rand(2, 3, 64, 32)).shape  # -> [2, 512, 4, 2]

    @register_backbone("tiny")
    def build_tiny(pretrained, last_stride):
        return nn.Conv2d(3, 8, 3, stride=2), 8

    trunk, dim = build_backbone("timm:vit_small_patch16_224")   # timm installed: [B,3,256,128] -> [B,384,1,1]
"""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Callable
from difflib import get_close_matches
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


# --- timm ---------------------------------------------------------------------------------

TIMM_PREFIX = "timm:"


class PooledAsMap(nn.Module):
    """A model returning pooled features ``[B,C]``, as a trunk: ``[B,C,1,1]`` (ReIDModel's pooling is then the identity)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[:, :, None, None]


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise MetricAttackError(
            "backbone timm:<name> needs timm, which is not installed: pip install 'metricattack[timm]' (or pip install timm)"
        ) from None
    return timm


def _create_timm(timm: Any, name: str, pretrained: bool, overlay: dict[str, Any] | None) -> Any:
    """``timm.create_model(name, num_classes=0)``, with ``dynamic_img_size`` where the model takes it (vision transformers);
    ``Any``: the caller reads timm's ``num_features``."""
    options: dict[str, Any] = {"pretrained": pretrained, "num_classes": 0}
    if overlay is not None:
        options["pretrained_cfg_overlay"] = overlay
    try:
        return timm.create_model(name, dynamic_img_size=True, **options)
    except TypeError as exc:
        if "dynamic_img_size" not in str(exc):
            raise
    return timm.create_model(name, **options)


def _timm_builder(name: str) -> Builder:
    """The builder of backbone ``timm:<name>`` (see the module docstring)."""
    timm = _import_timm()
    if not timm.is_model(name):
        close = get_close_matches(name, timm.list_models(), n=5)
        raise MetricAttackError(
            f"unknown backbone {TIMM_PREFIX}{name}: timm {timm.__version__} has no model {name!r}"
            + (f"; close names: {', '.join(close)}" if close else "")
            + " (timm.list_models() lists them all)"
        )

    def build(pretrained: Pretrained, last_stride: int) -> tuple[nn.Module, int]:
        if not isinstance(pretrained, (bool, str)):
            raise MetricAttackError(f"pretrained must be true, false or a weights file path, got {pretrained!r}")
        overlay = None if isinstance(pretrained, bool) else {"state_dict": read_state_dict(Path(pretrained), "pretrained weights file")}
        try:
            model = _create_timm(timm, name, pretrained is not False, overlay)
        except (RuntimeError, KeyError) as exc:  # a local file of another model
            raise MetricAttackError(f"pretrained weights {pretrained} do not fit backbone {TIMM_PREFIX}{name}: {exc}") from None
        except OSError as exc:  # not in the Hugging Face cache, and no download (offline)
            raise MetricAttackError(
                f"pretrained weights of timm model {name!r} are not in the Hugging Face cache and could not be downloaded "
                f"({str(exc).splitlines()[0]}). Offline, set `model.pretrained: false` in the config, or set `model.pretrained` "
                f"to the path of a local weights file of {name} (.safetensors or .pth); HF_HUB_OFFLINE=1 looks in the cache only"
            ) from None
        return PooledAsMap(model), int(model.num_features)

    return build


BACKBONES.register_family(TIMM_PREFIX, _timm_builder, "any timm model, e.g. timm:vit_small_patch16_224 (pip install timm)")
