"""The re-ID network: pixels in [0,1] → L2-normalised retrieval features.

``forward`` is differentiable end to end (resize, normalisation, trunk, pooling, neck), so
attacks can take gradients with respect to the input pixels. In ``eval()`` mode every
image's features depend on that image only (BatchNorm uses running statistics), so any
batch composition gives the same per-image outputs.

Retrieval features are the BN-neck output, L2-normalised: the activations right before the
classification (loss) layer, as in the paper (Sec. 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MetricAttackError
from .backbones import Pretrained, build_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NECKS = ("bnneck", "none")


class ReIDModel(nn.Module):
    """Backbone trunk + global average pooling + optional reduction + BN neck + classifier.

    Args:
        backbone: a name in :data:`~metricattack.models.backbones.BACKBONES`.
        num_classes: number of training identities C (classifier outputs).
        input_size: ``(H, W)`` the images are resized to inside ``forward``.
        mean, std: per-channel normalisation applied after resizing (RGB, [0,1] units).
        pretrained: ``False``, ``True`` (torchvision ImageNet weights) or a weights file path.
        last_stride: stride of the last ResNet stage (1 doubles its resolution).
        neck: ``"bnneck"`` (BatchNorm1d before the classifier) or ``"none"``.
        reduce_dim: optional feature size D after a linear reduction of the pooled trunk output.
        normalize: L2-normalise the retrieval features (the paper's and fast-reid's test
            features); ``False`` returns the neck output as is (torchreid's default test features).
        classifier_bias: give the identity classifier a bias (torchreid's classifier has one).
    """

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
        normalize: bool = True,
        classifier_bias: bool = False,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise MetricAttackError(f"num_classes must be a positive integer, got {num_classes!r}")
        if len(input_size) != 2 or min(int(s) for s in input_size) < 1:
            raise MetricAttackError(f"input_size must be (height, width) with positive values, got {input_size!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise MetricAttackError(f"mean and std need 3 values each (std > 0), got mean={mean!r} std={std!r}")
        if neck not in NECKS:
            raise MetricAttackError(f"unknown neck {neck!r}; expected one of {', '.join(NECKS)}")
        if reduce_dim is not None and int(reduce_dim) < 1:
            raise MetricAttackError(f"reduce_dim must be a positive integer or null, got {reduce_dim!r}")
        self.backbone_name = backbone
        self.num_classes = int(num_classes)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.last_stride = int(last_stride)
        self.neck_type = neck
        self.reduce_dim = None if reduce_dim is None else int(reduce_dim)
        self.normalize = bool(normalize)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

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
            "backbone": self.backbone_name,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "mean": [float(v) for v in self.mean.flatten()],
            "std": [float(v) for v in self.std.flatten()],
            "last_stride": self.last_stride,
            "neck": self.neck_type,
            "reduce_dim": self.reduce_dim,
            "feature_dim": self.feature_dim,
            "normalize": self.normalize,
            "classifier_bias": self.classifier.bias is not None,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ReIDModel:
        """Rebuild an (untrained, randomly initialised) model from :meth:`spec` output."""
        args = {k: v for k, v in spec.items() if k != "feature_dim"}
        return cls(**args, pretrained=False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``[B,3,H,W]`` in [0,1] to ``input_size`` (bilinear) and normalise."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ReIDModel expects images of shape [B,3,H,W], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
        return (images - self.mean) / self.std

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled (and reduced) trunk features ``[B,D]`` before the neck."""
        maps = self.trunk(self._prepare(images))
        return self.reduction(maps.mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval features ``[B,D]`` (unit L2 norm unless ``normalize=False``) from images ``[B,3,H,W]`` in [0,1]."""
        features = self.neck(self._pooled(images))
        return F.normalize(features, dim=1) if self.normalize else features

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features before the neck [B,D], logits [B,C])`` for metric and CE losses."""
        pooled = self._pooled(images)
        return pooled, self.classifier(self.neck(pooled))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Identity logits ``[B,C]``."""
        return self.forward_train(images)[1]
