"""Helpers for sharding batch work under ``torchrun`` (``torch.distributed``).

Without an initialised process group every function degrades to the single-process
case, so the same code runs on a laptop and on many GPUs.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError, MetricAttackError

#: Environment variable: seconds the ranks of a torchrun job wait for each other to start (default 300).
JOIN_TIMEOUT_ENV = "METRICATTACK_DIST_TIMEOUT"
DEFAULT_JOIN_TIMEOUT = 300.0
_GROUPS = itertools.count()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (the process that writes shared artifacts)."""
    return rank_and_world()[0] == 0


def shard_indices(count: int) -> range:
    """The indices ``0..count-1`` this rank owns (strided, so shards differ by at most one).

    Batch work shards the *batches* of the one-process batching this way (see
    :func:`metricattack.data.loading.make_loader`), never the images: a batch's composition
    changes the float rounding of the kernels, so whole batches keep a torchrun run equal to a
    one-process run at the same batch size, byte for byte.
    """
    rank, world = rank_and_world()
    return range(rank, count, world)


def gather_indexed(rows: torch.Tensor, indices: torch.Tensor, count: int) -> torch.Tensor:
    """``[count, D]``: the rows ``[n, D]`` every rank computed, each placed at its index in ``0..count-1``.

    Every index must come from exactly one rank (a rank may hold none: ``rows`` ``[0, D]`` or
    ``[0, 0]``; all ranks give the same dtype). Single-process: ``rows`` placed by ``indices``.
    Returned on every rank, on ``rows``' device.
    """
    world = rank_and_world()[1]
    if world == 1:
        parts = [(indices, rows)]
    else:
        device = _collective_device()  # NCCL gathers CUDA tensors only
        meta = torch.tensor([[rows.shape[0], rows.shape[1]]], device=device)
        metas = [torch.empty_like(meta) for _ in range(world)]
        dist.all_gather(metas, meta)
        sizes = [int(m[0, 0]) for m in metas]
        width, longest = max(int(m[0, 1]) for m in metas), max(sizes)
        padded_rows = torch.zeros((longest, width), dtype=rows.dtype, device=device)
        padded_rows[: rows.shape[0]] = rows.reshape(rows.shape[0], width)
        padded_idx = torch.full((longest,), -1, dtype=torch.long, device=device)
        padded_idx[: indices.numel()] = indices
        all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
        all_idx = [torch.empty_like(padded_idx) for _ in range(world)]
        dist.all_gather(all_rows, padded_rows)
        dist.all_gather(all_idx, padded_idx)
        parts = [(i[:n].to(rows.device), r[:n].to(rows.device)) for i, r, n in zip(all_idx, all_rows, sizes, strict=True)]
    placed = torch.cat([i for i, _ in parts]).cpu()
    if placed.numel() != count or not torch.equal(torch.sort(placed).values, torch.arange(count)):
        raise RuntimeError(f"gather_indexed: the ranks' indices do not cover 0..{count - 1} exactly once")
    out = rows.new_empty((count, max(r.shape[1] for _, r in parts)))
    for i, r in parts:
        out[i.to(out.device)] = r
    return out


def barrier() -> None:
    """Synchronise all ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_ranks_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (a collective: every rank must call it); ``ok`` alone in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


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
        device = torch.device("meta")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not a device this tool runs on (expected auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Under torchrun, the default process group for the duration (NCCL on CUDA, Gloo on CPU).

    Does nothing in a single process or when a group already exists (its owner ends it). A rank
    that has not started within :func:`join_timeout` seconds stops every other rank with a
    message naming it.
    """
    if dist.is_initialized() or not launched_by_torchrun():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store, prefix = _joined_store(rank, world, join_timeout())
    # the group's keys under this group's own prefix: a later group of the same job (a second command
    # in one torchrun process) would otherwise read this one's stale addresses from the shared store
    group_store = dist.PrefixStore(f"{prefix}/group", store)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=group_store, rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def join_timeout() -> float:
    """Seconds to wait for every rank to start: ``$METRICATTACK_DIST_TIMEOUT``, default 300."""
    text = os.environ.get(JOIN_TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_JOIN_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{JOIN_TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return seconds


def _joined_store(rank: int, world: int, timeout: float) -> tuple[dist.TCPStore, str]:
    """The job's key-value store once every rank has checked in, and this join's key prefix (one per
    group the process makes); a clear error naming the ranks that did not within ``timeout`` seconds
    (instead of the backend's 30-minute silent wait).

    Under torchrun's agent the store already runs at ``MASTER_ADDR:MASTER_PORT`` and every rank
    is a client; launched by hand (``RANK``, ``WORLD_SIZE``, ``MASTER_*`` set), rank 0 hosts it.
    """
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    hosts = rank == 0 and not agent
    deadline = time.monotonic() + timeout
    hint = f"(waited {timeout:g} s; set {JOIN_TIMEOUT_ENV} to wait longer)"
    unreachable = f"rank {rank} of {world} could not reach the job's store at {addr}:{port}: rank 0 did not start or is unreachable {hint}"
    # A client waits here, in Python, for the store to accept connections: TCPStore's own retries
    # print C++ stack traces on stderr before its error.
    if not hosts and not _wait_until(deadline, lambda: _accepts_connections(addr, port)):
        raise MetricAttackError(unreachable)
    try:
        limit = timedelta(seconds=max(deadline - time.monotonic(), 1.0))
        store = dist.TCPStore(addr, port, world, is_master=hosts, timeout=limit, wait_for_workers=False, multi_tenant=True)
    except (RuntimeError, OSError) as exc:
        raise MetricAttackError(f"{unreachable}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    prefix = f"metricattack/join/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{next(_GROUPS)}"
    keys = [f"{prefix}/{r}" for r in range(world)]
    store.set(keys[rank], socket.gethostname())
    if not _wait_until(deadline, lambda: store.check(keys)):  # polled: store.wait logs C++ warnings when it times out
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
        raise MetricAttackError(
            f"rank(s) {', '.join(map(str, missing))} of {world} did not join the job (rank {rank} on {socket.gethostname()} waited); "
            f"they failed to start or died early {hint}"
        )
    return store, prefix


def _wait_until(deadline: float, ready: Callable[[], bool], pause: float = 0.05) -> bool:
    """Poll ``ready()`` until it is true (True) or ``time.monotonic()`` passes ``deadline`` (False)."""
    while not ready():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
    return True


def _accepts_connections(addr: str, port: int) -> bool:
    """True when something listens at ``addr:port`` (the connection is closed at once)."""
    try:
        with socket.create_connection((addr, port), timeout=1.0):
            return True
    except OSError:
        return False
