"""Any network that expects normalised tensors, as a metricattack model, with its state-dict keys unchanged.

metricattack models take images ``[B,3,H,W]`` in [0,1] at any size and resize + normalise inside
their differentiable ``forward`` (attacks work in pixel space). Most networks of other projects
expect the already resized, normalised tensor instead. :func:`wrap` adds the missing step to the
network *itself*: a forward pre-hook resizes the input to ``input_size`` with the one resize of
every metricattack model (:func:`~.preprocessing.resize_to_input`) and normalises it with
``mean`` / ``std``, held in non-persistent buffers (they follow ``.to(device)`` and are not
saved). The network's state dict keeps exactly its own keys, so its own checkpoints load into
the wrapped network (``--weights``), and the wrapped network's checkpoints load into the bare one.
Wrapping the network as a submodule (``self.net = net`` beside the normalisation) would prefix
every key with ``net.``: none of an OSNet checkpoint's 567 keys would then match the wrapper's.

Example (torchreid's OSNet; ``metricattack evaluate --model python:osnet_reid:build --weights FILE``)::

    import metricattack as ma
    import torchreid

    def build():
        net = torchreid.models.build_model("osnet_x1_0", num_classes=751, pretrained=False)
        return ma.wrap(net, mean=ma.IMAGENET_MEAN, std=ma.IMAGENET_STD, input_size=(256, 128))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MetricAttackError
from .base import IMAGENET_MEAN, IMAGENET_STD
from .preprocessing import resize_to_input

ModuleT = TypeVar("ModuleT", bound=nn.Module)
MEAN, STD, RECORD = "metricattack_mean", "metricattack_std", "metricattack_preprocessing"
"""Names of what :func:`wrap` adds to the network: two non-persistent buffers and a plain dict (its arguments)."""


def _prepare(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: images ``[B,3,H,W]`` in [0,1] → resized to ``input_size`` (if set) and normalised."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].ndim != 4 or args[0].shape[1] != 3:
        shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else type(args[0]).__name__ if args else "nothing"
        raise ValueError(f"a wrapped network takes images of shape [B,3,H,W] in [0,1], got {shape}")
    images = args[0]
    size = getattr(module, RECORD)["input_size"]
    if size is not None:
        images = resize_to_input(images, size)
    return ((images - getattr(module, MEAN)) / getattr(module, STD), *args[1:])


def _features(output_fn: Callable[[Any], torch.Tensor] | None, normalize: bool, module: nn.Module, args: Any, out: Any) -> torch.Tensor:
    """Forward hook: the features ``[B,D]`` picked by ``output_fn`` (if given), L2-normalised (if ``normalize``)."""
    features = out if output_fn is None else output_fn(out)
    return F.normalize(features, dim=1) if normalize else features


def wrap(
    net: ModuleT,
    *,
    input_size: Sequence[int] | None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = False,
    output: Callable[[Any], torch.Tensor] | None = None,
) -> ModuleT:
    """Make ``net`` (which expects normalised tensors) take images ``[B,3,H,W]`` in [0,1] at any size.

    Changes ``net`` in place and returns it (see the module docstring); its state-dict keys stay its own.

    Args:
        net: any ``nn.Module`` whose ``forward(x)`` takes ``(x - mean) / std`` of images resized to ``input_size``.
        input_size: ``(H, W)`` the images are resized to (antialiased bilinear, as every metricattack model);
            ``None`` for a network that takes any size (images are normalised only).
        mean: per-channel mean of the normalisation, RGB in [0,1] units (default: ImageNet's).
        std: per-channel standard deviation of the normalisation, RGB in [0,1] units (default: ImageNet's).
        normalize: L2-normalise the returned features (the network's output is returned as it is otherwise).
        output: picks the features ``[B,D]`` from the network's output (for a network returning a tuple or a dict).
    """
    if not isinstance(net, nn.Module):
        raise MetricAttackError(f"wrap() takes a torch.nn.Module, got {type(net).__name__}")
    if hasattr(net, RECORD):
        raise MetricAttackError(f"this {type(net).__name__} is already wrapped ({getattr(net, RECORD)}); wrap a network once")
    if input_size is not None and (len(input_size) != 2 or min(int(s) for s in input_size) < 1):
        raise MetricAttackError(f"input_size must be (height, width) with positive values or None, got {input_size!r}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise MetricAttackError(f"mean and std need 3 values each (std > 0), got mean={mean!r} std={std!r}")
    size = None if input_size is None else [int(input_size[0]), int(input_size[1])]
    setattr(net, RECORD, {"input_size": size, "mean": [float(v) for v in mean], "std": [float(v) for v in std]})
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    net.register_buffer(MEAN, torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1), persistent=False)
    net.register_buffer(STD, torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1), persistent=False)
    net.register_forward_pre_hook(_prepare)
    if normalize or output is not None:
        net.register_forward_hook(partial(_features, output, normalize))
    return net


def wrapped_preprocessing(net: nn.Module) -> dict[str, Any] | None:
    """What :func:`wrap` added to ``net`` (``input_size``, ``mean``, ``std``), JSON-able; None for a network it did not wrap."""
    record = getattr(net, RECORD, None)
    return None if record is None else {key: None if value is None else list(value) for key, value in record.items()}
