"""Mancs: a Multi-task Attentional Network with Curriculum Sampling (C. Wang, Q. Zhang, C. Huang,
W. Liu, X. Wang, ECCV 2018), as its paper describes it.

* **Trunk**: an ImageNet-initialised ResNet-50 (any torchvision ResNet of the backbone registry).
* **Fully attentional blocks (FAB)** after res_conv2, res_conv3 and res_conv4 (torchvision
  ``layer1``–``layer3``): a squeeze-and-excitation block *without* the global pooling, so the
  mask is a full ``[C,H,W]`` tensor (channel and spatial attention at once),
  ``M = sigmoid(conv1x1(relu(conv1x1(F))))`` with a C → C/r → C bottleneck, and the block
  adds its input back: ``F_o = M * F + F`` (the attention can amplify a feature, up to 2×,
  and never erases it).
* **Three tasks** on the shared res_conv5 features (the trunk's ``layer4``):

  - *ranking branch*: its own global average pooling and fully connected layer
    (``D`` → ``ranking_dim``); the triplet loss with curriculum sampling trains its output
    (:func:`metricattack.training.losses.curriculum_triplet_loss`), and that output,
    L2-normalised, is the **test feature** (``forward``, ``feature_space = "ranking"``);
  - *classification branch*: its own global average pooling and fully connected layer
    (``D`` → C identities), trained with the sigmoid focal loss
    (:func:`metricattack.training.losses.sigmoid_focal_loss`);
  - *attention branch*: each FAB's mask is globally average-pooled, the three vectors are
    concatenated (``C_2 + C_3 + C_4`` values, 1,792 for ResNet-50) and one fully connected
    layer predicts the identity as a multi-label sigmoid classification
    (:func:`metricattack.training.losses.multilabel_sigmoid_loss`), so the masks themselves
    are trained to say who the person is.

Our choices, where the paper (as we read it) does not fix a detail; the configs name them too:

* ``ranking_dim`` (the test feature's size) defaults to the trunk's width ``D`` (2,048 for
  ResNet-50, 512 for ResNet-18): the FC is then a learned square projection of the pooled
  features, and the test feature has the size of the base models' (B1–B4) features.
* Both branches pool by global average pooling and share res_conv5; the FC layers have biases;
  the two sigmoid heads start from the prior 1/C (bias ``-log(C-1)``, the initialisation of
  Lin et al.'s focal loss, so the first steps are not spent pushing C-1 negatives down).
* The FAB reduction r = 16 (squeeze-and-excitation's).

Checkpoints record ``layout`` (:data:`LAYOUT`); a Mancs checkpoint written before this layout
(FAB without the residual, test feature = pooled trunk features) is refused with a message
saying so, never loaded into the wrong network.

Example::

    model = Mancs(num_classes=751, pretrained=True).eval()   # ResNet-50, 256x128
    model(torch.rand(2, 3, 256, 128)).shape                  # -> [2, 2048]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MetricAttackError
from .backbones import Pretrained, build_backbone
from .base import IMAGENET_MEAN, IMAGENET_STD, ReIDNet, TrainOutputs, register_architecture

RESNET_STAGES = 4  # layer1..layer4 of a torchvision ResNet trunk (conv1, bn1, relu, maxpool, layer1..4)
LAYOUT = 2
"""Version of Mancs' network layout recorded in checkpoints: 2 = the paper's (residual FAB, ranking FC,
focal classification head, one attention head on the pooled masks). Checkpoints without it are layout 1."""


class FullyAttentionalBlock(nn.Module):
    """``F [B,C,H,W] -> (F_o = M * F + F [B,C,H,W], mask M [B,C,H,W] in (0,1))``: SE without pooling, residual."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, max(channels // reduction, 1), 1)
        self.expand = nn.Conv2d(max(channels // reduction, 1), channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.sigmoid(self.expand(F.relu(self.reduce(x))))
        return mask * x + x, mask


def _stage_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage (its last BatchNorm's width)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


def _sigmoid_head(in_features: int, num_classes: int) -> nn.Linear:
    """A linear identity head for a sigmoid loss, its outputs starting at probability 1/C (bias -log(C-1))."""
    head = nn.Linear(in_features, num_classes)
    nn.init.normal_(head.weight, std=0.001)
    nn.init.constant_(head.bias, -math.log(max(num_classes - 1, 1)))
    return head


class MancsOutputs(NamedTuple):
    """One pass through the shared network: what the three branches start from."""

    pooled: torch.Tensor  # [B,D] res_conv5 features, globally average-pooled
    masks: list[torch.Tensor]  # each FAB's mask [B,C_l,H_l,W_l]


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
        fab_reduction: channel reduction r inside each FAB (16, as squeeze-and-excitation).
        ranking_dim: size of the ranking branch's FC output, the test feature (``None``: the
            trunk's width D).
    """

    derived_spec_keys: ClassVar[tuple[str, ...]] = ("architecture", "feature_dim", "feature_space", "layout")
    attention_heads = True
    ranking_head = True

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
        ranking_dim: int | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std)
        if int(fab_reduction) < 1:
            raise MetricAttackError(f"fab_reduction must be a positive integer, got {fab_reduction!r}")
        if ranking_dim is not None and int(ranking_dim) < 1:
            raise MetricAttackError(f"ranking_dim must be a positive integer or null, got {ranking_dim!r}")
        trunk, self.trunk_dim = build_backbone(backbone, pretrained, int(last_stride))
        if not isinstance(trunk, nn.Sequential) or len(trunk) != 4 + RESNET_STAGES:
            raise MetricAttackError(f"Mancs needs a ResNet trunk (resnet18/34/50, resnext50_32x4d), got backbone {backbone!r}")
        self.backbone_name = backbone
        self.last_stride = int(last_stride)
        self.fab_reduction = int(fab_reduction)
        self.feature_dim = self.trunk_dim if ranking_dim is None else int(ranking_dim)
        self.feature_space = "ranking"

        self.stem = trunk[:4]
        self.stages = nn.ModuleList(trunk[4:])
        widths = [_stage_channels(stage) for stage in self.stages[:-1]]
        self.fabs = nn.ModuleList([FullyAttentionalBlock(w, self.fab_reduction) for w in widths])
        self.ranking = nn.Linear(self.trunk_dim, self.feature_dim)
        self.classifier = _sigmoid_head(self.trunk_dim, self.num_classes)
        self.attention_classifier = _sigmoid_head(sum(widths), self.num_classes)

    def spec(self) -> dict[str, Any]:
        return {
            **self.base_spec(),
            "backbone": self.backbone_name,
            "last_stride": self.last_stride,
            "fab_reduction": self.fab_reduction,
            "ranking_dim": self.feature_dim,
            "layout": LAYOUT,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Mancs:
        """Rebuild from :meth:`spec`; a spec of the first layout (no ``layout`` key) is refused."""
        if spec.get("layout", 1) != LAYOUT:
            raise MetricAttackError(
                f"this Mancs checkpoint has the old layout {spec.get('layout', 1)} (written before metricattack followed the Mancs "
                f"paper: attention blocks without the residual M * F + F, test feature = the pooled trunk features); layout {LAYOUT} "
                "is needed. Its weights would compute other features, so it is not loaded: retrain it with `metricattack train`"
            )
        return super().from_spec(spec)

    def _shared(self, images: torch.Tensor) -> MancsOutputs:
        """The trunk with its FABs: pooled res_conv5 features and each FAB's mask."""
        x = self.stem(self.prepare(images))
        masks = []
        for stage, fab in zip(self.stages[:-1], self.fabs, strict=True):
            x, mask = fab(stage(x))
            masks.append(mask)
        return MancsOutputs(self.stages[-1](x).mean(dim=(2, 3)), masks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Test features ``[B, ranking_dim]``: the ranking branch's FC output, unit L2 norm."""
        return F.normalize(self.ranking(self._shared(images).pooled), dim=1)

    def forward_train(self, images: torch.Tensor) -> TrainOutputs:
        """Ranking embedding ``[B,E]``, the classification branch's logits ``[B,C]`` and the attention
        branch's logits ``[B,C]`` (one head on the concatenated pooled masks)."""
        shared = self._shared(images)
        pooled_masks = torch.cat([mask.mean(dim=(2, 3)) for mask in shared.masks], dim=1)
        return TrainOutputs(
            embedding=self.ranking(shared.pooled),
            logits=(self.classifier(shared.pooled),),
            attention_logits=(self.attention_classifier(pooled_masks),),
        )

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The classification branch's identity logits ``[B,C]``."""
        return self.classifier(self._shared(images).pooled)

    def attention_masks(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each FAB's mask ``[B,C_l,H_l,W_l]`` in (0,1) (for inspection and figures)."""
        return self._shared(images).masks
