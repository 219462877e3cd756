"""Training images: identity relabelling and a torch Dataset with light augmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from ..data.loading import read_image
from ..data.types import DISTRACTOR_PID, JUNK_PID, ImageRecord
from ..errors import DatasetError
from .config import AugmentSection


def relabel(records: Sequence[ImageRecord]) -> tuple[list[ImageRecord], list[int], list[int]]:
    """Drop junk/distractor images; map the remaining pids to labels ``0..C-1``.

    Returns ``(records, labels, class_pids)`` where ``class_pids[label]`` is the original pid
    (sorted ascending, so the mapping is deterministic).
    """
    kept = [r for r in records if r.pid not in (JUNK_PID, DISTRACTOR_PID)]
    class_pids = sorted({r.pid for r in kept})
    if len(class_pids) < 2:
        raise DatasetError(f"the training split has {len(class_pids)} identities; training needs at least 2")
    index = {pid: label for label, pid in enumerate(class_pids)}
    return kept, [index[r.pid] for r in kept], class_pids


def _load_resized(path: object, size: tuple[int, int]) -> torch.Tensor:
    """``read_image`` resized to ``size`` (H, W), as uint8 ``[3,H,W]``."""
    image = read_image(path)  # type: ignore[arg-type]
    if tuple(image.shape[-2:]) != size:
        image = TF.resize(image, list(size), antialias=True)
    return image.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


class TrainImages(Dataset[tuple[torch.Tensor, int]]):
    """``i -> (image [3,H,W] float in [0,1] at the model input size, label)``, augmented.

    Images are resized at load time (training does not need the model's in-forward resize).
    With ``cache`` every image is decoded once up front and kept as uint8. Augmentation
    draws from torch's global RNG (seeded per epoch by the trainer): horizontal flip with
    probability 1/2, then zero-padding by ``pad`` pixels and a random crop back to size.
    """

    def __init__(
        self, records: Sequence[ImageRecord], labels: Sequence[int], size: tuple[int, int], augment: AugmentSection, *, cache: bool = False
    ) -> None:
        self.records, self.labels = list(records), list(labels)
        self.size = (int(size[0]), int(size[1]))
        self.augment = augment
        self.cache = [_load_resized(r.path, self.size) for r in self.records] if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.cache[index] if self.cache is not None else _load_resized(self.records[index].path, self.size)
        image = pixels.to(torch.float32).div_(255.0)
        if self.augment.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        pad = self.augment.pad
        if pad:
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            image = F.pad(image, (pad, pad, pad, pad))[:, top : top + self.size[0], left : left + self.size[1]]
        return image, self.labels[index]
