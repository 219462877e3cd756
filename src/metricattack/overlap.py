"""Host work overlapped with the model: read the next batch and write the previous one on threads.

An attack export spends host time per image on decoding the source, encoding the PNG, hashing
it and writing it (2.2 ms per Market-1501 image here, ``benchmarks/RESULTS.md``); done between
model calls, that time is added to the model's. :func:`prefetch` runs the loads (decoding) of
the next items while the caller computes on the current one; :class:`Background` runs the
writes of finished items while the caller computes the next one. ``workers=0`` runs everything
in the caller's thread, in the unpipelined order (the reference the tests and
``benchmarks/bench_export_pipeline.py`` compare with).

Threads, not processes: Pillow's decoders and encoders, ``hashlib``, file writes and torch's
kernels release the GIL, so the host work and the model run at the same time; a worker's
exception reaches the caller unchanged (same type, same one-line message: a
:class:`~metricattack.errors.WriteError` naming the file stays that error), where a DataLoader
worker process wraps it in another text; and nothing is started per call (a process start per
feature extraction would cost more than a small split's decoding). Results never depend on the
number of workers: the work items are the same, only their timing changes.
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WORKERS = 2
"""Host threads for reading and for writing (each): one keeps up with a CPU model; a fast GPU needs two."""
READ_AHEAD = 4
"""Items :func:`prefetch` loads ahead of the consumer (at least ``workers``)."""
WRITE_QUEUE = 8
"""Jobs :class:`Background` holds before ``submit`` waits (at least ``workers``): room for a run of
batches that need no model (only writing) while the model computes the next one."""


def check_workers(workers: int) -> int:
    """``workers`` if it is an integer >= 0, else a ValueError."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0: no overlap), got {workers!r}")
    return workers


def prefetch(
    items: Iterable[T], load: Callable[[T], R], workers: int = DEFAULT_WORKERS, ahead: int = READ_AHEAD
) -> Generator[tuple[T, R], None, None]:
    """``(item, load(item))`` for every item, in order; the loads run on ``workers`` threads, up to
    ``max(ahead, workers)`` items ahead of the consumer (``workers=0``: each when its item is
    consumed, in the caller's thread).

    ``items`` is consumed lazily, as far ahead as the loads. A load's exception is raised
    here, unchanged, when its item is reached (the items before it are yielded first). Closing the
    generator early (``break``, an exception in the consumer, ``close()``) cancels the loads not
    started and waits for the running ones, so no thread outlives it.
    """
    if check_workers(workers) == 0:
        for item in items:
            yield item, load(item)
        return
    source, ahead = iter(items), max(ahead, workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="metricattack-read")
    pending: deque[tuple[T, Future[R]]] = deque()
    try:
        for item in source:
            pending.append((item, pool.submit(load, item)))
            if len(pending) > ahead:
                ready, future = pending.popleft()
                yield ready, future.result()
        while pending:
            ready, future = pending.popleft()
            yield ready, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Background:
    """Jobs run on ``workers`` threads while the caller goes on; at most ``max(depth, workers)`` are pending.

    ``submit(job, then)`` first waits for the oldest job when the queue is full, then queues
    ``job``; each job's ``then`` runs in the caller's thread, in submission order, after its job
    finished. A job's exception is raised, unchanged, by the ``submit`` (or the end of the
    ``with`` block) that waits for it. Leaving the ``with`` block waits for every job (on an
    exception without running their ``then``), so no job outlives it (a folder lock held around
    it is held while they write). ``workers=0``: ``submit`` runs the job and its ``then`` at once.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS, depth: int = WRITE_QUEUE) -> None:
        self.workers = check_workers(workers)
        self.depth = max(depth, workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="metricattack-write") if workers else None
        self._pending: deque[tuple[Future[None], Callable[[], object] | None]] = deque()

    def submit(self, job: Callable[[], None], then: Callable[[], object] | None = None) -> None:
        """Run ``job`` (in the background), then ``then`` (in this thread, in order)."""
        if self._pool is None:
            job()
            if then is not None:
                then()
            return
        while len(self._pending) >= self.depth:
            self._finish_oldest()
        self._pending.append((self._pool.submit(job), then))

    def _finish_oldest(self) -> None:
        future, then = self._pending.popleft()
        future.result()
        if then is not None:
            then()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None:
                while self._pending:
                    self._finish_oldest()
        finally:
            concurrent.futures.wait([future for future, _ in self._pending])
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
