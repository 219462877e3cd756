"""Training images: identity relabelling and a torch Dataset with light augmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.loading import read_image
from ..data.types import DISTRACTOR_PID, JUNK_PID, ImageRecord
from ..errors import DatasetError
from ..models.preprocessing import resize_to_input
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


def _compact(image: torch.Tensor) -> torch.Tensor:
    """``image`` as uint8 when that is lossless (8-bit sources), else unchanged (for the cache)."""
    pixels = image.mul(255.0).round_().to(torch.uint8)
    return pixels if torch.equal(pixels.to(torch.float32).div_(255.0), image) else image


def _expand(stored: torch.Tensor) -> torch.Tensor:
    """The float image in [0,1] that :func:`_compact` stored."""
    return stored.to(torch.float32).div_(255.0) if stored.dtype == torch.uint8 else stored


class TrainImages(Dataset[tuple[torch.Tensor, int]]):
    """``i -> (image [3,H,W] float in [0,1] at the model input size, label)``, augmented.

    Batches need one size, so each image is resized here with the model's own
    :func:`~metricattack.models.preprocessing.resize_to_input` (the model then does not resize
    again: the same bits as resizing inside the model, as every other command does). With
    ``cache`` every image is decoded once up front and kept at native size (uint8 for 8-bit
    files). Augmentation draws from torch's global RNG (seeded per epoch by the trainer):
    horizontal flip with probability 1/2, then zero-padding by ``pad`` pixels and a random
    crop back to size.
    """

    def __init__(
        self, records: Sequence[ImageRecord], labels: Sequence[int], size: tuple[int, int], augment: AugmentSection, *, cache: bool = False
    ) -> None:
        self.records, self.labels = list(records), list(labels)
        self.size = (int(size[0]), int(size[1]))
        self.augment = augment
        self.cache = [_compact(read_image(r.path)) for r in self.records] if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def plain(self, indices: Sequence[int]) -> torch.Tensor:
        """Images ``[N,3,h,w]`` of ``indices`` at the model input size, without augmentation (no RNG drawn)."""
        return torch.stack([self._resized(int(i)) for i in indices])

    def _resized(self, index: int) -> torch.Tensor:
        image = _expand(self.cache[index]) if self.cache is not None else read_image(self.records[index].path)
        return resize_to_input(image.unsqueeze(0), self.size)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self._resized(index)
        if self.augment.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        pad = self.augment.pad
        if pad:
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            image = F.pad(image, (pad, pad, pad, pad))[:, top : top + self.size[0], left : left + self.size[1]]
        return image, self.labels[index]
