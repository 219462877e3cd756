"""Host work overlapped with the model: read the next batch and write the previous one meanwhile.

An attack export spends host time per image on decoding the source, encoding the PNG, hashing
it and writing it (2.2 ms per Market-1501 image here, ``benchmarks/RESULTS.md``); done between
model calls, that time is added to the model's. :func:`prefetch` runs the loads (decoding) of
the next items while the caller computes on the current one; :class:`Background` runs the
writes of finished items while the caller computes the next one. ``workers=0`` runs everything
in the caller's thread, in the unpipelined order (the reference the tests and
``benchmarks/bench_export_pipeline.py`` compare with).

Both run their jobs on threads, and the jobs hand the image files' work to host processes
(:func:`on_host`): Pillow's decoder and encoder release the GIL, but the Python code around them
and the atomic writes' bookkeeping hold it ~70 % of their time, which made the model's thread wait
(measured, ``benchmarks/RESULTS.md``); the processes run at the lowest priority (:data:`HOST_NICE`),
so where they and the model want the same core, the model gets it. A job's exception reaches the
caller unchanged (same type, same one-line message: a :class:`~metricattack.errors.WriteError` naming the file stays that error),
and nothing is started per call (the threads are cheap, the processes are kept). Results never
depend on the number of workers: the work items are the same, only their timing and place change.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import IO, Any, TypeVar, cast

from .errors import MetricAttackError

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


HOST_NICE = 19
"""Niceness the host processes add to this process's (19: the lowest priority): where they and the model's
threads want the same core, the model runs (at 0 the model's thread waited 0.25–0.37 ms per image for a
core, ``benchmarks/RESULTS.md``); they get every core the model leaves idle. On a machine whose cores
other jobs keep busy they wait for those jobs too: set a lower value before the first host process starts
(or ``workers=0``)."""


class HostProcess:
    """A worker process for host work (:func:`on_host`): a fresh interpreter running :func:`serve`,
    which imports only the modules of the functions it is sent (for :mod:`metricattack.data.imagefiles`:
    NumPy and Pillow, no torch), from this process's ``sys.path`` (started isolated, ``-I``: a
    ``json.py`` in the current folder is not imported while it boots), at :data:`HOST_NICE`. Calls go
    one at a time, pickled over its stdin and stdout; it ends when its stdin closes (:meth:`close`, or
    this process exited or was killed)."""

    def __init__(self) -> None:
        boot = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from metricattack.overlap import serve; serve(int(sys.argv[2]))"
        command = [
            sys.executable,
            "-I",
            "-c",
            boot,
            json.dumps(sys.path),
            str(HOST_NICE),
        ]  # -I: no module of the current folder before sys.path is set
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def call(self, function: Callable[..., R], args: tuple[Any, ...]) -> R:
        """``function(*args)`` in the process (:meth:`exchange` of :func:`request`); its exception raised here."""
        ok, value = self.exchange(request(function, args))
        if ok:
            return cast(R, value)
        raise value

    def exchange(self, data: bytes) -> tuple[bool, Any]:
        """Send one pickled request, return its ``(ok, result or exception)``; EOFError when the process died."""
        requests, replies = cast(IO[bytes], self._process.stdin), cast(IO[bytes], self._process.stdout)
        try:
            requests.write(data)
            requests.flush()
        except BrokenPipeError:
            raise EOFError(f"host process {self._process.pid} is gone") from None
        return cast(tuple[bool, Any], pickle.load(replies))

    def close(self) -> None:
        """End the process (a call in progress finishes first) and wait for it."""
        with contextlib.suppress(OSError):
            cast(IO[bytes], self._process.stdin).close()
        self._process.wait()


def serve(nice: int = HOST_NICE) -> None:
    """A :class:`HostProcess`'s loop: read ``(folder, function, args)`` from stdin, write ``(True, result)`` or
    ``(False, exception)`` to stdout, until stdin closes. Adds ``nice`` to its niceness; Ctrl-C is left to
    the parent (a call in progress finishes); what the functions print goes to stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(nice)
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        try:
            folder, function, args = pickle.load(requests)
        except EOFError:
            return
        try:
            os.chdir(folder)  # relative paths name what they name in the caller
            reply: tuple[bool, Any] = (True, function(*args))
        except Exception as exc:  # noqa: BLE001 - every error goes back to the caller
            reply = (False, exc)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - an exception that does not pickle goes back as its text
            data = pickle.dumps((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))
        replies.write(data)
        replies.flush()


_idle: list[HostProcess] = []
_idle_lock = threading.Lock()


def on_host(workers: int, function: Callable[..., R], *args: Any) -> R:
    """``function(*args)``: in a :class:`HostProcess` (``workers`` > 0), else in this thread.

    Called from the worker threads of :func:`prefetch` and :class:`Background`, which wait for the
    process without holding the GIL while it does the GIL-bound Python work (Pillow's code around its
    encoder and decoder, the atomic writes' bookkeeping), so the model's thread never waits for them.
    The processes are kept between calls (one per concurrent caller) until this process exits.
    ``function`` must be importable by name without torch, its arguments and result picklable. Its
    exception is raised here with the same type and message; a process that died (killed, out of
    memory) raises a :class:`~metricattack.errors.MetricAttackError`.

    Processes started fresh (``subprocess``), not by ``multiprocessing``: its ``spawn`` and
    ``forkserver`` children re-run the caller's main script (a script without a ``__main__`` guard
    would run again in each), and forking a process that runs threads (torch's, these) is unsafe.
    """
    if check_workers(workers) == 0:
        return function(*args)
    data = request(function, args)  # an argument that does not pickle fails here, before anything is sent
    with _idle_lock:
        process = _idle.pop() if _idle else None
    if process is None:
        process = HostProcess()
    try:
        ok, value = process.exchange(data)
    except (EOFError, pickle.UnpicklingError):
        process.close()
        raise MetricAttackError(
            f"a host worker process died while running {getattr(function, '__name__', function)} (killed? out of memory?); "
            "run the same command again: it resumes from the finished work"
        ) from None
    except BaseException:  # interrupted between request and reply (Ctrl-C): its reply would reach the next caller
        process.close()
        raise
    _give_back(process)
    if ok:
        return cast(R, value)
    raise value


def request(function: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    """The pickled call :func:`serve` runs: ``(this process's current folder, function, args)``."""
    return pickle.dumps((os.getcwd(), function, args), protocol=pickle.HIGHEST_PROTOCOL)


def _give_back(process: HostProcess) -> None:
    with _idle_lock:
        _idle.append(process)


def _forget_inherited() -> None:
    """In a child forked from this process: the host processes (and their pipes) are the parent's."""
    global _idle_lock
    _idle_lock = threading.Lock()  # another thread may have held it at the fork
    _inherited.extend(_idle)  # kept referenced: collecting them would wait for the parent's processes
    _idle.clear()


_inherited: list[HostProcess] = []
os.register_at_fork(after_in_child=_forget_inherited)


@atexit.register
def _close_host_processes() -> None:
    with _idle_lock:
        processes, _idle[:] = _idle[:], []
    for process in processes:
        process.close()
