"""The contract every re-ID architecture obeys, and the architecture registry.

A model is a :class:`ReIDNet` registered in :data:`ARCHITECTURES` under a name (``"reid"``,
``"hacnn"``, ``"mancs"``). Checkpoints record that name in their spec
(``spec()["architecture"]``) and :func:`build_from_spec` rebuilds the right class; a spec
without the field (checkpoints written before architectures existed) is a ``"reid"`` model.

The contract (attacks, evaluation, training and checkpoints rely on nothing else):

* ``forward(images [B,3,H,W] in [0,1], any H×W) -> features [B,D]``, unit L2 norm: the
  retrieval features (a ``ReIDModel(normalize=False)`` loaded from a torchreid ResNet-50
  checkpoint keeps torchreid's unnormalised test features). The resize to ``input_size`` and the ``mean``/``std`` normalisation
  happen inside, through :meth:`ReIDNet.prepare` (one preprocessing path), and the whole
  forward is differentiable with respect to the pixels. In ``eval()`` mode each image's
  output depends on that image only (no batch-coupled normalisation), so a batch may mix
  identities (the same outputs up to float rounding: the kernels' order of summation depends
  on the batch).
* attributes ``input_size`` ``(H, W)``, ``feature_dim`` D, ``num_classes`` C, ``mean`` and
  ``std`` (``[1,3,1,1]`` buffers, RGB in [0,1] units), ``feature_space`` (a name for the
  space ``forward`` returns, recorded in the spec).
* ``classify(images) -> logits [B,C]`` (the classification-attack baseline).
* ``forward_train(images) -> TrainOutputs``: what the training losses need.
* ``spec() -> dict`` (JSON) and ``from_spec(spec)`` that rebuilds the architecture.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import nn

from ..errors import MetricAttackError
from ..registry import Registry
from .preprocessing import resize_to_input

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LEGACY_ARCHITECTURE = "reid"
#: Bounds of what a spec (e.g. a checkpoint's JSON sidecar) may ask for before anything is allocated.
MAX_INPUT_SIDE = 2048
MAX_INPUT_PIXELS = 2048 * 1024
MAX_CLASSES = 1_000_000
NetT = TypeVar("NetT", bound="ReIDNet")


class TrainOutputs(NamedTuple):
    """What one training forward pass gives the losses.

    Attributes:
        embedding: ``[B,D']`` features the metric (triplet) loss trains.
        logits: identity logits ``[B,C]`` of every classification head (the classification
            losses apply to each and sum): one head for ``ReIDModel`` and Mancs, the global and
            the local branch for HACNN.
        attention_logits: identity logits ``[B,C]`` of the heads that deeply supervise the
            attention blocks (Mancs: one head on its pooled, concatenated attention masks);
            empty for other models.

    A named tuple, so DistributedDataParallel finds every tensor in it.
    """

    embedding: torch.Tensor
    logits: tuple[torch.Tensor, ...]
    attention_logits: tuple[torch.Tensor, ...] = ()


def resize_and_normalise(images: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Images ``[B,3,H,W]`` in [0,1] → ``[B,3,*size]`` resized (:func:`~.preprocessing.resize_to_input`) and normalised."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"re-ID models expect images of shape [B,3,H,W], got {tuple(images.shape)}")
    return (resize_to_input(images, size) - mean) / std


class ReIDNet(nn.Module):
    """Base class of every architecture: input size, normalisation, spec round trip.

    Subclasses define ``forward``, ``forward_train``, ``classify``, ``feature_dim``,
    ``feature_space`` and :meth:`spec` (their constructor arguments plus the keys listed in
    ``derived_spec_keys``, which :meth:`from_spec` drops).
    """

    architecture: ClassVar[str] = ""
    derived_spec_keys: ClassVar[tuple[str, ...]] = ("architecture", "feature_dim", "feature_space")
    attention_heads: ClassVar[bool] = False  # forward_train fills TrainOutputs.attention_logits
    ranking_head: ClassVar[bool] = False  # TrainOutputs.embedding comes from a layer only the triplet loss trains
    feature_dim: int
    feature_space: str
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_classes: int, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not 1 <= int(num_classes) <= MAX_CLASSES:
            raise MetricAttackError(f"num_classes must be an integer from 1 to {MAX_CLASSES:,}, got {num_classes!r}")
        if len(input_size) != 2 or min(int(s) for s in input_size) < 1:
            raise MetricAttackError(f"input_size must be (height, width) with positive values, got {input_size!r}")
        height, width = int(input_size[0]), int(input_size[1])
        if max(height, width) > MAX_INPUT_SIDE or height * width > MAX_INPUT_PIXELS:
            raise MetricAttackError(
                f"input_size {height}x{width} is larger than this tool allows (at most {MAX_INPUT_SIDE} per side and "
                f"{MAX_INPUT_PIXELS:,} pixels; re-ID networks take e.g. 256x128): every image would be resized to it, "
                f"{12 * height * width / 1e9:.3g} GB per image"
            )
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise MetricAttackError(f"mean and std need 3 values each (std > 0), got mean={mean!r} std={std!r}")
        self.num_classes = int(num_classes)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B,3,H,W]`` in [0,1] → network input ``[B,3,*input_size]`` (resized, normalised)."""
        return resize_and_normalise(images, self.input_size, self.mean, self.std)

    def forward_train(self, images: torch.Tensor) -> TrainOutputs:
        raise NotImplementedError

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Identity logits ``[B,C]`` (of the first classification head)."""
        return self.forward_train(images).logits[0]

    def base_spec(self) -> dict[str, Any]:
        """The spec entries every architecture shares."""
        return {
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "mean": [float(v) for v in self.mean.flatten()],
            "std": [float(v) for v in self.std.flatten()],
            "feature_dim": self.feature_dim,
            "feature_space": self.feature_space,
        }

    def spec(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture, plus derived keys (JSON-serialisable)."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls: type[NetT], spec: dict[str, Any]) -> NetT:
        """Rebuild an (untrained, randomly initialised) model from :meth:`spec` output."""
        args = {k: v for k, v in spec.items() if k not in cls.derived_spec_keys}
        if "pretrained" in inspect.signature(cls.__init__).parameters:
            args["pretrained"] = False
        return cls(**args)


ARCHITECTURES: Registry[type[ReIDNet]] = Registry("architecture")
"""Architecture name → :class:`ReIDNet` subclass (the name checkpoints record)."""


def register_architecture(name: str) -> Callable[[type[NetT]], type[NetT]]:
    """Class decorator: register a :class:`ReIDNet` subclass as ``name`` (and set its ``architecture``)."""

    def decorate(cls: type[NetT]) -> type[NetT]:
        cls.architecture = name
        ARCHITECTURES.register(name, cls)
        return cls

    return decorate


def architecture_of(spec: dict[str, Any]) -> str:
    """The architecture a checkpoint spec records (``"reid"`` for specs written before the field existed)."""
    return str(spec.get("architecture", LEGACY_ARCHITECTURE))


def build_from_spec(spec: dict[str, Any]) -> ReIDNet:
    """An untrained model of the architecture described by ``spec`` (a ``spec()`` output)."""
    return ARCHITECTURES.get(architecture_of(spec)).from_spec(spec)
