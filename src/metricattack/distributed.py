"""Helpers for sharding batch work under ``torchrun`` (``torch.distributed``).

Without an initialised process group every function degrades to the single-process
case, so the same code runs on a laptop and on many GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError

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


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` → ``cuda:LOCAL_RANK`` under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a valid torch device (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; set device: cpu")
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Under torchrun, the default process group for the duration (NCCL on CUDA, Gloo on CPU).

    Does nothing in a single process or when a group already exists (its owner ends it).
    """
    if dist.is_initialized() or not launched_by_torchrun():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
