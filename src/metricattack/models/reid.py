"""The paper's base models B1–B4: a backbone trunk, pooling, BN neck, classifier.

``forward`` is differentiable end to end (resize, normalisation, trunk, pooling, neck), so
attacks can take gradients with respect to the input pixels. In ``eval()`` mode every
image's features depend on that image only (BatchNorm uses running statistics), so any
batch composition gives the same per-image outputs up to float rounding (the kernels' order
of summation depends on the batch: ``benchmarks/bench_batching.py``).

Retrieval features are the activations the training loss saw (the paper, Sec. 5: "the
activations before the loss layer"), L2-normalised, chosen by ``feature_space``:

* ``"neck"``: the BN-neck output, which feeds the classifier (models trained with
  cross-entropy, alone or with the triplet loss);
* ``"pooled"``: the pooled trunk features, which the triplet loss trains (a triplet-only
  model: its BN neck gets no gradient, its scale stays 1, so its output is not a trained space).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MetricAttackError
from .backbones import Pretrained, build_backbone
from .base import IMAGENET_MEAN, IMAGENET_STD, ReIDNet, TrainOutputs, register_architecture

NECKS = ("bnneck", "none")
FEATURE_SPACES = ("neck", "pooled")


@register_architecture("reid")
class ReIDModel(ReIDNet):
    """Backbone trunk + global average pooling + optional reduction + BN neck + classifier.

    Args:
        backbone: a name in :data:`~metricattack.models.backbones.BACKBONES`.
        num_classes: number of training identities C (classifier outputs).
        input_size: ``(H, W)`` the images are resized to inside ``forward``.
        mean: per-channel mean subtracted after resizing (RGB, [0,1] units).
        std: per-channel standard deviation divided by after resizing (RGB, [0,1] units).
        pretrained: ``False``, ``True`` (torchvision ImageNet weights) or a weights file path.
        last_stride: stride of the last ResNet stage (1 doubles its resolution).
        neck: ``"bnneck"`` (BatchNorm1d before the classifier) or ``"none"``.
        reduce_dim: optional feature size D after a linear reduction of the pooled trunk output.
        feature_space: ``"neck"`` or ``"pooled"``: which activations ``forward`` returns (see the module doc).
        normalize: L2-normalise the retrieval features (the paper's and fast-reid's test
            features); ``False`` returns them as they are (torchreid's default test features,
            for models loaded from torchreid checkpoints, :mod:`metricattack.models.foreign`).
        classifier_bias: give the identity classifier a bias (torchreid's classifier has one).
    """

    derived_spec_keys = ("architecture", "feature_dim")

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        input_size: Sequence[int] = (256, 128),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pretrained: Pretrained = False,
        last_stride: int = 1,
        neck: str = "bnneck",
        reduce_dim: int | None = None,
        feature_space: str = "neck",
        normalize: bool = True,
        classifier_bias: bool = False,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std)
        if neck not in NECKS:
            raise MetricAttackError(f"unknown neck {neck!r}; expected one of {', '.join(NECKS)}")
        if feature_space not in FEATURE_SPACES:
            raise MetricAttackError(f"unknown feature_space {feature_space!r}; expected one of {', '.join(FEATURE_SPACES)}")
        if reduce_dim is not None and int(reduce_dim) < 1:
            raise MetricAttackError(f"reduce_dim must be a positive integer or null, got {reduce_dim!r}")
        self.backbone_name = backbone
        self.last_stride = int(last_stride)
        self.neck_type = neck
        self.reduce_dim = None if reduce_dim is None else int(reduce_dim)
        self.feature_space = feature_space
        self.normalize = bool(normalize)

        self.trunk, trunk_dim = build_backbone(backbone, pretrained, self.last_stride)
        self.reduction = nn.Identity() if self.reduce_dim is None else nn.Linear(trunk_dim, self.reduce_dim)
        self.feature_dim = trunk_dim if self.reduce_dim is None else self.reduce_dim
        if neck == "bnneck":
            self.neck: nn.Module = nn.BatchNorm1d(self.feature_dim)
            self.neck.bias.requires_grad_(False)  # BNNeck: no shift, features stay centred
        else:
            self.neck = nn.Identity()
        self.classifier = nn.Linear(self.feature_dim, self.num_classes, bias=bool(classifier_bias))
        nn.init.normal_(self.classifier.weight, std=0.001)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)

    def spec(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (JSON-serialisable)."""
        return {
            **self.base_spec(),
            "backbone": self.backbone_name,
            "last_stride": self.last_stride,
            "neck": self.neck_type,
            "reduce_dim": self.reduce_dim,
            "normalize": self.normalize,
            "classifier_bias": self.classifier.bias is not None,
        }

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled (and reduced) trunk features ``[B,D]`` before the neck."""
        maps = self.trunk(self.prepare(images))
        return self.reduction(maps.mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval features ``[B,D]`` (unit L2 norm unless ``normalize=False``) from images ``[B,3,H,W]`` in [0,1]."""
        pooled = self._pooled(images)
        features = pooled if self.feature_space == "pooled" else self.neck(pooled)
        return F.normalize(features, dim=1) if self.normalize else features

    def forward_train(self, images: torch.Tensor) -> TrainOutputs:
        """Pooled features (for the triplet loss) and the classifier's logits on the neck output."""
        pooled = self._pooled(images)
        return TrainOutputs(embedding=pooled, logits=(self.classifier(self.neck(pooled)),))
