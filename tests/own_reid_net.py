"""A network of one's own for the tests (``python:own_reid_net:build``): images in [0,1], any size ->
L2-normalised features; resizes and normalises inside, BatchNorm, no metricattack import."""

import torch
from torch import nn


class OwnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(images, size=(32, 16), mode="bilinear", align_corners=False, antialias=True)
        return nn.functional.normalize(self.body(x - 0.5), dim=1)


def build() -> OwnNet:
    torch.manual_seed(0)
    return OwnNet()
