"""HACNN: the Harmonious Attention CNN (W. Li, X. Zhu, S. Gong, CVPR 2018), from the paper.

A light Inception network trained from scratch at 160×64, with two branches:

* **global branch**: a 3×3 stride-2 conv stem (32 channels), then three levels, each an
  Inception-A block and a stride-2 Inception-B block of width d_l (128, 256, 384), followed
  by a harmonious attention (HA) module. Its output is pooled and mapped to a 512-d feature
  (fully connected + BatchNorm + ReLU).
* **harmonious attention** at each level: *soft* attention = spatial attention (cross-channel
  mean → 3×3 stride-2 conv → bilinear upsampling → 1×1 scaling conv) × channel attention
  (squeeze-and-excitation: global pooling → two 1×1 convs, reduction 16), fused by a 1×1
  conv and a sigmoid; every conv is conv + BatchNorm + ReLU, so the attention lies in
  [0.5, 1]. It multiplies the level's features. *Hard* regional attention predicts T = 4
  region translations (global pooling → fully connected → tanh); each region is a
  horizontal stripe (full width, 1/T of the height) of the level's *input*, cut out with a
  spatial transformer (bilinear sampling) and resized to the level's region size.
* **local branch**: T streams sharing their weights. At level l each stream adds its region
  (24×28, 12×14, 6×7) to its previous output and applies a stride-2 Inception-B block of
  width d_l; the T pooled outputs are concatenated and mapped to a 512-d feature.

Training (the paper): identity cross-entropy on the global and on the local branch.
Retrieval features (the paper): global ⊕ local, each L2-normalised, concatenated and scaled
by 1/√2 (unit norm; the ranking equals that of the plain concatenation of normalised parts).

Written from the paper's description. Where the paper leaves details open, the layout matches
torchreid's HACNN model-zoo weights, so that those load (:mod:`metricattack.models.foreign`,
format ``torchreid:hacnn``) and compute what they were trained to compute: every conv has a
bias (redundant before BatchNorm), Inception-A has three 1×1→3×3 streams and a pooling→1×1
stream of d/4 channels each, Inception-B has 1×1→3×3/2, 1×1→3×3→3×3/2 (d/4 each) and
max-pool/2→1×1 (d/2) streams; the stripes are cut at the feature map's resolution
(``affine_grid``/``grid_sample``) and then resized (bilinear, corners aligned). Our
choices: the T streams run as one batch of T·B regions (in training their BatchNorm
statistics are pooled over the regions; identical in eval mode), and the hard attention
starts from T evenly spaced stripes (bias ``atanh`` of the stripe centres).

Example::

    model = HACNN(num_classes=751).eval()         # the paper's network, 160x64 input
    model(torch.rand(2, 3, 256, 128)).shape       # -> [2, 1024] (images resized inside)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MetricAttackError
from .base import IMAGENET_MEAN, IMAGENET_STD, ReIDNet, TrainOutputs, register_architecture

STEM_CHANNELS = 32
CHANNEL_REDUCTION = 16


class ConvUnit(nn.Module):
    """Conv (with bias) → BatchNorm → ReLU: ``[B,C_in,H,W] -> [B,C_out,H',W']``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    """Same-resolution block of width ``out_channels``: four streams of ``out_channels / 4`` each."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 4
        convs = [nn.Sequential(ConvUnit(in_channels, mid, 1), ConvUnit(mid, mid, 3, padding=1)) for _ in range(3)]
        pooled = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), ConvUnit(in_channels, mid, 1))
        self.streams = nn.ModuleList([*convs, pooled])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([stream(x) for stream in self.streams], dim=1)


class InceptionB(nn.Module):
    """Stride-2 block of width ``out_channels``: ``[B,C,H,W] -> [B,out,ceil(H/2),ceil(W/2)]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.streams = nn.ModuleList(
            [
                nn.Sequential(ConvUnit(in_channels, mid, 1), ConvUnit(mid, mid, 3, stride=2, padding=1)),
                nn.Sequential(ConvUnit(in_channels, mid, 1), ConvUnit(mid, mid, 3, padding=1), ConvUnit(mid, mid, 3, stride=2, padding=1)),
                nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), ConvUnit(in_channels, 2 * mid, 1)),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([stream(x) for stream in self.streams], dim=1)


class SpatialAttention(nn.Module):
    """``[B,C,H,W] -> [B,1,H,W]``: cross-channel mean, 3×3/2 conv, bilinear upsampling, 1×1 scaling conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvUnit(1, 1, 3, stride=2, padding=1)
        self.scale = ConvUnit(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv(x.mean(dim=1, keepdim=True))
        return self.scale(F.interpolate(reduced, size=x.shape[-2:], mode="bilinear", align_corners=True))


class ChannelAttention(nn.Module):
    """``[B,C,H,W] -> [B,C,1,1]``: squeeze-and-excitation (global pooling, C → C/16 → C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = ConvUnit(channels, channels // CHANNEL_REDUCTION, 1)
        self.expand = ConvUnit(channels // CHANNEL_REDUCTION, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x.mean(dim=(2, 3), keepdim=True)))


class SoftAttention(nn.Module):
    """``[B,C,H,W] -> [B,C,H,W]`` in [0.5, 1]: sigmoid(fuse(spatial × channel))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.spatial = SpatialAttention()
        self.channel = ChannelAttention(channels)
        self.fuse = ConvUnit(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fuse(self.spatial(x) * self.channel(x)))


class HardAttention(nn.Module):
    """``[B,C,H,W] -> [B,T,2]``: the (x, y) translation of each of T regions, in (-1, 1)."""

    def __init__(self, channels: int, regions: int) -> None:
        super().__init__()
        self.regions = regions
        self.fc = nn.Linear(channels, 2 * regions)
        centres = [-1.0 + (2 * t + 1) / regions for t in range(regions)]  # evenly spaced stripes, top to bottom
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([[0.0, math.atanh(c)] for c in centres]).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x.mean(dim=(2, 3)))).view(x.shape[0], self.regions, 2)


class HarmoniousAttention(nn.Module):
    """Soft attention map ``[B,C,H,W]`` and hard region translations ``[B,T,2]`` of one level."""

    def __init__(self, channels: int, regions: int) -> None:
        super().__init__()
        self.soft = SoftAttention(channels)
        self.hard = HardAttention(channels, regions)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.soft(x), self.hard(x)


class GlobalLevel(nn.Module):
    """Inception-A + stride-2 Inception-B of width ``channels``, then harmonious attention."""

    def __init__(self, in_channels: int, channels: int, regions: int) -> None:
        super().__init__()
        self.inception = nn.Sequential(InceptionA(in_channels, channels), InceptionB(channels, channels))
        self.attention = HarmoniousAttention(channels, regions)


class Embedding(nn.Sequential):
    """Fully connected → BatchNorm → ReLU: the 512-d feature of a branch."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.relu = nn.ReLU()


def region_sizes(first: Sequence[int], levels: int = 3) -> list[tuple[int, int]]:
    """Region size of each level: ``first``, then halved (rounded up) as each Inception-B halves its input."""
    sizes = [(int(first[0]), int(first[1]))]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


@register_architecture("hacnn")
class HACNN(ReIDNet):
    """Harmonious Attention CNN (see the module doc).

    Args:
        num_classes: training identities C (both branches' classifiers).
        input_size: ``(H, W)`` images are resized to inside ``forward`` (paper: 160×64).
        mean, std: per-channel normalisation after resizing (ImageNet statistics, as torchreid).
        channels: widths d1, d2, d3 of the three levels (paper: 128, 256, 384; multiples of 16).
        branch_dim: size of the global and of the local feature (paper: 512).
        regions: T, the number of hard-attention regions / local streams (paper: 4).
        region_size: ``(h, w)`` of the level-1 regions (paper: 24×28; then 12×14, 6×7).
    """

    derived_spec_keys = ("architecture", "feature_dim", "feature_space")

    def __init__(
        self,
        num_classes: int,
        input_size: Sequence[int] = (160, 64),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels: Sequence[int] = (128, 256, 384),
        branch_dim: int = 512,
        regions: int = 4,
        region_size: Sequence[int] = (24, 28),
    ) -> None:
        super().__init__(num_classes, input_size, mean, std)
        if len(channels) != 3 or any(int(c) < CHANNEL_REDUCTION or int(c) % CHANNEL_REDUCTION for c in channels):
            raise MetricAttackError(f"HACNN channels must be 3 positive multiples of {CHANNEL_REDUCTION}, got {channels!r}")
        if int(branch_dim) < 1 or int(regions) < 1:
            raise MetricAttackError(f"HACNN branch_dim and regions must be positive, got {branch_dim!r} and {regions!r}")
        if len(region_size) != 2 or min(int(s) for s in region_size) < 1:
            raise MetricAttackError(f"HACNN region_size must be (height, width) with positive values, got {region_size!r}")
        self.channels = tuple(int(c) for c in channels)
        self.branch_dim = int(branch_dim)
        self.regions = int(regions)
        self.region_sizes = region_sizes(region_size)
        self.feature_dim = 2 * self.branch_dim
        self.feature_space = "global+local"

        self.stem = ConvUnit(3, STEM_CHANNELS, 3, stride=2, padding=1)
        inputs = (STEM_CHANNELS, *self.channels[:2])
        self.levels = nn.ModuleList([GlobalLevel(i, c, self.regions) for i, c in zip(inputs, self.channels, strict=True)])
        self.local_levels = nn.ModuleList([InceptionB(i, c) for i, c in zip(inputs, self.channels, strict=True)])
        self.global_head = Embedding(self.channels[2], self.branch_dim)
        self.local_head = Embedding(self.regions * self.channels[2], self.branch_dim)
        self.global_classifier = nn.Linear(self.branch_dim, self.num_classes)
        self.local_classifier = nn.Linear(self.branch_dim, self.num_classes)

    def spec(self) -> dict[str, Any]:
        return {
            **self.base_spec(),
            "channels": list(self.channels),
            "branch_dim": self.branch_dim,
            "regions": self.regions,
            "region_size": list(self.region_sizes[0]),
        }

    def _crop_regions(self, source: torch.Tensor, translations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The T stripes of ``source [B,C,H,W]`` at ``translations [B,T,2]`` → ``[T*B,C,*size]`` (region-major)."""
        b, t = translations.shape[:2]
        theta = source.new_zeros(t * b, 2, 3)
        theta[:, 0, 0] = 1.0  # full width
        theta[:, 1, 1] = 1.0 / self.regions  # 1/T of the height
        theta[:, :, 2] = translations.transpose(0, 1).reshape(t * b, 2)
        tiled = source.repeat(t, 1, 1, 1)
        grid = F.affine_grid(theta, list(tiled.shape), align_corners=False)
        stripes = F.grid_sample(tiled, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return F.interpolate(stripes, size=size, mode="bilinear", align_corners=True)

    def _branches(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(global [B,E], local [B,E])`` features (after FC + BN + ReLU, before normalisation)."""
        level_input = self.stem(self.prepare(images))
        local: torch.Tensor | None = None
        levels = cast(Iterable[GlobalLevel], self.levels)  # an nn.ModuleList of GlobalLevel
        for level, local_block, size in zip(levels, self.local_levels, self.region_sizes, strict=True):
            features = level.inception(level_input)
            soft, translations = level.attention(features)
            stripes = self._crop_regions(level_input, translations, size)
            local = local_block(stripes if local is None else stripes + local)
            level_input = features * soft
        assert local is not None
        b = images.shape[0]
        pooled_local = local.mean(dim=(2, 3)).view(self.regions, b, -1).transpose(0, 1).reshape(b, -1)  # regions in order
        return self.global_head(level_input.mean(dim=(2, 3))), self.local_head(pooled_local)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval features ``[B, 2E]``: normalised global ⊕ normalised local, scaled to unit norm."""
        global_feat, local_feat = self._branches(images)
        return torch.cat([F.normalize(global_feat, dim=1), F.normalize(local_feat, dim=1)], dim=1) / math.sqrt(2.0)

    def forward_train(self, images: torch.Tensor) -> TrainOutputs:
        """Both branches' features (concatenated) and logits (global, local)."""
        global_feat, local_feat = self._branches(images)
        logits = (self.global_classifier(global_feat), self.local_classifier(local_feat))
        return TrainOutputs(embedding=torch.cat([global_feat, local_feat], dim=1), logits=logits)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Identity logits ``[B,C]`` of both branches together (global + local)."""
        global_logits, local_logits = self.forward_train(images).logits
        return global_logits + local_logits
