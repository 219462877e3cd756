"""Mancs: a Multi-task Attentional Network with Curriculum Sampling (C. Wang, Q. Zhang, C. Huang,
W. Liu, X. Wang, ECCV 2018), following its paper.

* **Trunk**: an ImageNet-initialised ResNet-50 (any torchvision ResNet of the backbone registry).
* **Fully attentional blocks (FAB)** after the res_conv2, res_conv3 and res_conv4 stages
  (torchvision ``layer1``–``layer3``): a squeeze-and-excitation block *without* the global
  pooling, so the attention is a full ``[C,H,W]`` mask (channel and spatial at once):
  ``mask = sigmoid(conv1x1(relu(conv1x1(x))))`` with a C → C/16 → C bottleneck, output ``x * mask``.
* **Multi-task learning** on top of the res_conv5 features ``p`` (global average pooled):
  a *ranking* task (triplet loss with curriculum sampling, :mod:`metricattack.training.losses`)
  on ``p``; a *classification* task (identity cross-entropy) on a BatchNorm of ``p``; and
  *attention-aware feature learning*: the FABs are deeply supervised, each FAB's attended
  output is pooled and classified (identity cross-entropy, the attention loss), so the masks
  are trained to keep what identifies the person.
* **Retrieval features**: ``p``, the features the ranking loss trains, L2-normalised
  (``feature_space = "ranking"``).

Deviations from the paper and their reasons (also in README.md):

* The exact form of the FABs' deep supervision and of the curriculum could not be checked
  against the paper's text on this offline machine; the formulation above (a pooled linear
  identity classifier per FAB; negatives and positives drawn by hardness rank with a
  temperature that falls to the hardest over ``curriculum_epochs``) is our reading.
* The classification head sits on a BatchNorm of ``p`` (the BN neck of the base models), so
  cross-entropy and the ranking loss do not pull one space two ways; the paper predates it.
* CPU-sized variants (``configs/synthetic/mancs-cpu.yaml``) swap ResNet-50 for a ResNet-18
  and 256×128 for the synthetic data's 64×32, to train in about a minute on one core.

Example::

    model = Mancs(num_classes=751, pretrained=True).eval()   # ResNet-50, 256x128
    model(torch.rand(2, 3, 256, 128)).shape                  # -> [2, 2048]
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

RESNET_STAGES = 4  # layer1..layer4 of a torchvision ResNet trunk (conv1, bn1, relu, maxpool, layer1..4)


class FullyAttentionalBlock(nn.Module):
    """``[B,C,H,W] -> ([B,C,H,W] attended features, [B,C,H,W] mask in (0,1))``: SE without pooling."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, max(channels // reduction, 1), 1)
        self.expand = nn.Conv2d(max(channels // reduction, 1), channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.sigmoid(self.expand(F.relu(self.reduce(x))))
        return x * mask, mask


def _stage_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage (its last BatchNorm's width)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


@register_architecture("mancs")
class Mancs(ReIDNet):
    """Mancs (see the module doc).

    Args:
        num_classes: training identities C.
        backbone: a ResNet of the backbone registry (paper: ``resnet50``).
        input_size: ``(H, W)`` images are resized to inside ``forward``.
        mean, std: per-channel normalisation after resizing (ImageNet statistics).
        pretrained: ImageNet initialisation of the trunk (``True``, ``False`` or a weights file).
        last_stride: stride of res_conv5 (1 or 2).
        fab_reduction: channel reduction inside each FAB (16, as squeeze-and-excitation).
    """

    derived_spec_keys = ("architecture", "feature_dim", "feature_space")
    attention_heads = True

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        input_size: Sequence[int] = (256, 128),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pretrained: Pretrained = False,
        last_stride: int = 1,
        fab_reduction: int = 16,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std)
        if int(fab_reduction) < 1:
            raise MetricAttackError(f"fab_reduction must be a positive integer, got {fab_reduction!r}")
        trunk, self.feature_dim = build_backbone(backbone, pretrained, int(last_stride))
        if not isinstance(trunk, nn.Sequential) or len(trunk) != 4 + RESNET_STAGES:
            raise MetricAttackError(f"Mancs needs a ResNet trunk (resnet18/34/50, resnext50_32x4d), got backbone {backbone!r}")
        self.backbone_name = backbone
        self.last_stride = int(last_stride)
        self.fab_reduction = int(fab_reduction)
        self.feature_space = "ranking"

        self.stem = trunk[:4]
        self.stages = nn.ModuleList(trunk[4:])
        widths = [_stage_channels(stage) for stage in self.stages[:-1]]
        self.fabs = nn.ModuleList([FullyAttentionalBlock(w, self.fab_reduction) for w in widths])
        self.attention_classifiers = nn.ModuleList([nn.Linear(w, self.num_classes) for w in widths])
        self.neck = nn.BatchNorm1d(self.feature_dim)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.feature_dim, self.num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def spec(self) -> dict[str, Any]:
        return {**self.base_spec(), "backbone": self.backbone_name, "last_stride": self.last_stride, "fab_reduction": self.fab_reduction}

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``(p [B,D] pooled res_conv5 features, each FAB's attended output [B,C_l,H_l,W_l], each FAB's mask)``."""
        x = self.stem(self.prepare(images))
        attended, masks = [], []
        for stage, fab in zip(self.stages[:-1], self.fabs, strict=True):
            x, mask = fab(stage(x))
            attended.append(x)
            masks.append(mask)
        return self.stages[-1](x).mean(dim=(2, 3)), attended, masks

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval features ``[B,D]``: the ranking branch's features, unit L2 norm."""
        return F.normalize(self._features(images)[0], dim=1)

    def forward_train(self, images: torch.Tensor) -> TrainOutputs:
        """Ranking features, classification logits, and each FAB's identity logits (attention loss)."""
        pooled, attended, _ = self._features(images)
        attention_logits = tuple(head(a.mean(dim=(2, 3))) for head, a in zip(self.attention_classifiers, attended, strict=True))
        return TrainOutputs(embedding=pooled, logits=(self.classifier(self.neck(pooled)),), attention_logits=attention_logits)

    def attention_masks(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each FAB's mask ``[B,C_l,H_l,W_l]`` in (0,1) (for inspection and figures)."""
        return self._features(images)[2]
