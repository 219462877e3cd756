"""Reading and writing images, and batching dataset records.

Images are float32 tensors ``[3,H,W]`` in [0,1] (RGB). Saved images are lossless PNGs on
the 1/255 grid, so ``read_image(save_png(x))`` returns ``round(x * 255) / 255`` exactly.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Generator, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..distributed import shard_indices
from ..errors import ConfigError, DatasetError
from ..io import atomic_write_bytes
from ..overlap import DEFAULT_WORKERS, on_host, prefetch
from .imagefiles import decode_batch, decode_rgb, open_image, png_bytes
from .types import ImageRecord

PathLike = str | os.PathLike[str]


def read_image(path: PathLike) -> torch.Tensor:
    """Decode ``path`` to an RGB float32 tensor ``[3,H,W]`` in [0,1], on the 1/255 grid.

    The pixels of :func:`~metricattack.data.imagefiles.decode_rgb` (16-bit images at 8-bit
    precision; a :class:`DatasetError` naming the file when it is missing, not an image, truncated,
    of 32-bit pixels or a decompression bomb).
    """
    return to_tensor(decode_rgb(path))


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``[..., H, W, 3]`` uint8 pixels as float32 ``[..., 3, H, W]`` in [0,1] (``v / 255``; a view of the
    pixels' memory order, channels last)."""
    tensor = torch.from_numpy(pixels)
    return tensor.permute(*range(tensor.ndim - 3), -1, -3, -2).to(torch.float32).div_(255.0)


def image_size(path: PathLike) -> tuple[int, int]:
    """``(H, W)`` of the image at ``path``, read from the file header only.

    Remembered per file version (device, inode, size, modification time), so the batching of a
    split whose images were read before (clean features, then the attack) costs a ``stat`` per image
    instead of parsing its header; a replaced or rewritten file is read again.
    """
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise DatasetError(f"cannot read image header of {os.fspath(path)}: {exc} (expected a JPEG or PNG file)") from None
    return _header_size(os.fspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 18)
def _header_size(path: str, device: int, inode: int, size: int, modified_ns: int) -> tuple[int, int]:
    """``(H, W)`` from the header of ``path`` (one version of it: the other arguments are the cache key)."""
    try:
        with open_image(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise DatasetError(f"cannot read image header of {path}: {exc} (expected a JPEG or PNG file)") from None
    return height, width


def save_png(image: torch.Tensor, path: PathLike) -> None:
    """Write ``image`` ``[3,H,W]`` in [0,1] to ``path`` as a lossless 8-bit RGB PNG, atomically.

    Values are clamped to [0,1] and rounded to the nearest multiple of 1/255.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"save_png expects an image of shape [3,H,W], got {tuple(image.shape)} for {os.fspath(path)}")
    if not torch.isfinite(image).all():
        raise ValueError(f"save_png: image for {os.fspath(path)} contains NaN or infinite values")
    pixels = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    atomic_write_bytes(path, png_bytes(pixels.permute(1, 2, 0).contiguous().numpy()))


class RecordImages(Dataset[tuple[torch.Tensor, int]]):
    """``records[i] -> (image [3,H,W] in [0,1] at native size, i)``."""

    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.records[index].path), index


class SizeBucketBatchSampler(Sampler[list[int]]):
    """Batches of ``indices`` where every batch holds one size key only.

    Without shuffling, buckets come in order of first appearance and keep record order.
    With shuffling, indices are permuted within buckets and the batches are permuted,
    from a generator seeded by ``seed + epoch`` (see :meth:`set_epoch`).
    """

    def __init__(self, indices: Sequence[int], keys: Sequence[object], batch_size: int, *, shuffle: bool = False, seed: int = 0) -> None:
        buckets: dict[object, list[int]] = {}
        for index, key in zip(indices, keys, strict=True):
            buckets.setdefault(key, []).append(index)
        self.buckets = list(buckets.values())
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of epoch ``epoch`` (no effect without shuffling)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(-(-len(b) // self.batch_size) for b in self.buckets)

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        batches: list[list[int]] = []
        for bucket in self.buckets:
            order = torch.randperm(len(bucket), generator=gen).tolist() if self.shuffle else range(len(bucket))
            items = [bucket[i] for i in order]
            batches.extend(items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size))
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return iter(batches)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's share of ``batches``: whole batches, batch ``b`` of the one-process order going
    to rank ``b mod world`` (:func:`metricattack.distributed.shard_indices` over batch numbers)."""

    def __init__(self, batches: SizeBucketBatchSampler) -> None:
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of epoch ``epoch`` (the same on every rank)."""
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(shard_indices(len(self.batches)))

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(self.batches)
        return iter([batches[b] for b in shard_indices(len(batches))])


def make_loader(
    records: Sequence[ImageRecord],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    shard: bool = False,
) -> DataLoader:
    """A loader yielding ``(images [B,3,H,W] float32 in [0,1], indices [B] long)``.

    ``indices`` are positions in ``records``. Images keep their native size (models resize
    inside their forward), so each batch holds images of one size (sizes read from file
    headers). With ``shard`` (under torchrun) this rank loads only its share of the
    one-process batches, **whole batches** (:class:`ShardedBatchSampler`): every image is
    computed in the same batch as in one process, so a torchrun run equals a one-process run
    at the same batch size byte for byte (a batch's composition changes the float rounding of
    the model's kernels). Place the results with ``indices``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    keys = [image_size(record.path) for record in records]
    batches = SizeBucketBatchSampler(range(len(records)), keys, batch_size, shuffle=shuffle, seed=seed)
    sampler: Sampler[list[int]] = ShardedBatchSampler(batches) if shard else batches
    return DataLoader(
        RecordImages(records),
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=False,
    )


def read_batches(
    loader: DataLoader,
    numbers: Iterable[int] | None = None,
    *,
    workers: int = DEFAULT_WORKERS,
    pin_memory: bool = False,
) -> Generator[tuple[int, list[int], torch.Tensor], None, None]:
    """The batches ``numbers`` of ``loader`` (:func:`make_loader`; default: all, in order) as
    ``(number, indices, images [B,3,H,W])``.

    Images are decoded on ``workers`` threads ahead of the consumer, each handing the files to a host
    process (:func:`metricattack.overlap.prefetch`, :func:`~metricattack.overlap.on_host`; 0: in
    this thread, when the batch is reached), so the
    next batches are read while the model computes on this one; the images are those of iterating
    ``loader`` itself, bit for bit. ``pin_memory``: images in page-locked memory, for a GPU copy
    with ``non_blocking=True``. A file that cannot be read raises its :class:`DatasetError` when
    its batch is reached.
    """
    dataset, sampler = loader.dataset, loader.batch_sampler
    assert sampler is not None  # make_loader always batches with a sampler
    batches = [list(batch) for batch in sampler]

    def load(number: int) -> torch.Tensor:
        if workers and isinstance(dataset, RecordImages):  # decoded in host processes; the same values as read_image
            paths = [dataset.records[i].path for i in batches[number]]
            images = to_tensor(on_host(workers, decode_batch, paths)).contiguous()
        else:
            images = torch.stack([dataset[i][0] for i in batches[number]])
        return images.pin_memory() if pin_memory else images

    for number, images in prefetch(range(len(batches)) if numbers is None else numbers, load, workers):
        yield number, batches[number], images
