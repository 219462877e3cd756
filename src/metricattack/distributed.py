"""Helpers for sharding batch work under ``torchrun`` (``torch.distributed``).

Without an initialised process group every function degrades to the single-process
case, so the same code runs on a laptop and on many GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (the process that writes shared artifacts)."""
    return rank_and_world()[0] == 0


def shard_indices(count: int) -> range:
    """The indices ``0..count-1`` this rank owns (strided, so shards differ by at most one)."""
    rank, world = rank_and_world()
    return range(rank, count, world)


def shard(items: Sequence[T]) -> list[T]:
    """The items of ``items`` this rank owns (see :func:`shard_indices`)."""
    return [items[i] for i in shard_indices(len(items))]


def gather_rows(local: torch.Tensor, count: int) -> torch.Tensor:
    """Reassemble rows computed by :func:`shard_indices` on every rank into ``[count, ...]``.

    ``local`` holds this rank's rows in shard order. Single-process: returned as is.
    """
    rank, world = rank_and_world()
    if world == 1:
        return local
    per_rank = (count + world - 1) // world
    padded = local.new_zeros((per_rank, *local.shape[1:]))
    padded[: local.shape[0]] = local
    buckets = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(buckets, padded)
    out = local.new_empty((count, *local.shape[1:]))
    for r, bucket in enumerate(buckets):
        idx = torch.arange(r, count, world)
        out[idx] = bucket[: idx.numel()]
    return out


def barrier() -> None:
    """Synchronise all ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
