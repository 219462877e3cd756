"""Where the attack export's time goes, per thread, without needing a free core (issue #25 item 2).

``benchmarks/bench_export_pipeline.py`` measures wall-clock ratios, which need a quiet machine. This
script runs the same export (``attacks.writer.write_attack`` on the same synthetic gallery and model)
with its steps wrapped, and reads per thread from ``/proc/thread-self/schedstat`` and ``/status``
(Linux) what each step cost:

* ``cpu``: time on a CPU (load-independent, up to cache effects);
* ``runq``: time runnable but waiting for a CPU (the machine's load: other processes);
* ``blocked``: wall − cpu − runq, time asleep: waiting for a queue (a batch not read yet, the
  write queue full) or for the GIL (in a model step, which waits for nothing else);
* ``sleeps``: voluntary context switches (each wait above is at least one).

Steps of the model's (main) thread: ``read`` (the next batch from the reader threads, or decoding it
with ``--workers 0``), ``attack`` (``perturb``: the I-FGSM forward + backward passes), ``features``
(the adversarial features), ``hand over`` (``Background.submit``: queueing the write, waiting when the
queue is full), ``drain`` (waiting for the last writes), ``other`` (the rest of the loop); of the
reader and writer threads: ``decode`` (``read_image``; with workers, the call of a host process that decodes
the batch: ``metricattack.overlap.on_host``) and ``write`` (a ``BatchWriter`` part: quantise, then PNG,
SHA-256 and file writes, in a host process with workers; the batch records). A thread waiting for a host
process is ``blocked``; the process's own CPU is not in these rows (it is another process). Numbers are per
gallery image, summed over the rounds after a warm-up.

Run (the tiny case costs a few CPU seconds per round)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/profile_export_threads.py --workers 0 2
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bench_export_pipeline import CASES, dataset
from metricattack.attacks import engine, writer
from metricattack.attacks.spec import AttackSpec
from metricattack.data import loading
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.reid import ReIDModel
from metricattack.overlap import Background

Totals = dict[tuple[str, str], list[float]]  # (thread, step) -> [wall, cpu, runq, sleeps] seconds / count


def thread_clock() -> tuple[float, float, float, int]:
    """(wall, cpu, runq seconds, voluntary context switches) of this thread so far."""
    with open("/proc/thread-self/schedstat", encoding="ascii") as f:
        cpu, runq, _ = f.read().split()
    with open("/proc/thread-self/status", encoding="ascii") as f:
        match = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", f.read(), re.M)
    assert match is not None
    return time.perf_counter(), int(cpu) / 1e9, int(runq) / 1e9, int(match.group(1))


class Recorder:
    """Per (thread, step) totals of :func:`thread_clock` differences; thread-safe."""

    def __init__(self) -> None:
        self.totals: Totals = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
        self.lock = threading.Lock()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = thread_clock()
        try:
            yield
        finally:
            end = thread_clock()
            thread = "main" if threading.current_thread() is threading.main_thread() else threading.current_thread().name.split("_")[0]
            with self.lock:
                row = self.totals[(thread, name)]
                for i in range(4):
                    row[i] += end[i] - start[i]

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Record every call of ``owner.attr`` as step ``name``."""
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            with self.step(name):
                return fn(*args, **kwargs)

        setattr(owner, attr, recorded)

    def wrap_stream(self, owner: Any, attr: str, name: str) -> None:
        """Record the wait for each item of the generator ``owner.attr`` returns as step ``name``."""
        fn: Callable[..., Generator[Any, None, None]] = getattr(owner, attr)

        @functools.wraps(fn)
        def recorded(*args: Any, **kwargs: Any) -> Generator[Any, None, None]:
            stream = fn(*args, **kwargs)
            try:
                while True:
                    with self.step(name):
                        item = next(stream, stream)
                    if item is stream:
                        return
                    yield item
            finally:
                stream.close()

        setattr(owner, attr, recorded)


def instrument(recorder: Recorder) -> None:
    """Wrap the export's steps (module docstring) so that ``recorder`` records them."""
    recorder.wrap_stream(engine, "read_batches", "read")
    recorder.wrap(engine, "perturb", "attack")
    recorder.wrap(engine.AttackBatches, "_features", "features")
    recorder.wrap(Background, "submit", "hand over")
    recorder.wrap(Background, "__exit__", "drain")
    recorder.wrap(loading, "read_image", "decode")
    recorder.wrap(loading, "on_host", "decode")
    recorder.wrap(writer.BatchWriter, "_write_part", "write")


def report(totals: Totals, images: int) -> list[str]:
    """One line per (thread, step): ms per gallery image and sleeps per image; the main thread's ``other`` and ``total``."""
    rows = dict(totals)
    total = rows.pop(("main", "total"))
    nested = {"decode", "write"}  # with --workers 0: inside read and hand over
    main_steps = [v for (thread, name), v in rows.items() if thread == "main" and name not in nested]
    rows[("main", "other")] = [total[i] - sum(v[i] for v in main_steps) for i in range(4)]
    rows[("main", "total")] = total
    lines = [f"{'thread':18s} {'step':10s} {'wall':>8s} {'cpu':>8s} {'runq':>8s} {'blocked':>8s} {'sleeps':>7s}   (ms per gallery image)"]
    for (thread, name), (wall, cpu, runq, sleeps) in sorted(rows.items(), key=lambda kv: (kv[0][0] != "main", kv[0][1] == "total", kv[0])):
        blocked = wall - cpu - runq
        lines.append(
            f"{thread:18s} {name:10s} {1e3 * wall / images:8.3f} {1e3 * cpu / images:8.3f} {1e3 * runq / images:8.3f} "
            f"{1e3 * blocked / images:8.3f} {sleeps / images:7.3f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/profile-export-threads"))
    parser.add_argument("--case", choices=sorted(CASES), default="tiny")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="host threads of the export, one run each")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per run after one warm-up round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval (seconds; default: Python's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    args.out.mkdir(parents=True, exist_ok=True)
    data = dataset(args.out, 64, 32)
    backbone, size = CASES[args.case]
    torch.manual_seed(0)
    model = ReIDModel(backbone, num_classes=10, input_size=size).eval()
    spec = AttackSpec(method="ifgsm", eps=5, alpha=1)
    feats = engine.clean_features([model], data, batch_size=args.batch_size)
    plan = engine.plan_attack([model], EuclideanMetric(), data, "gallery", spec, feats)
    feature_models = [engine.FeatureModel(model, feats[0].of(plan.split))]
    recorder = Recorder()
    instrument(recorder)
    print(f"case {args.case}, {len(plan.records)} gallery images ({int(plan.active.sum())} attacked), batch {args.batch_size}, ", end="")
    print(f"switch interval {1e3 * sys.getswitchinterval():.1f} ms, load average {os.getloadavg()[0]:.2f} at the start")
    for workers in args.workers:
        for r in range(args.rounds + 1):
            if r == 1:
                recorder.totals.clear()
            folder = args.out / f"export-{workers}"
            shutil.rmtree(folder, ignore_errors=True)
            with recorder.step("total"):
                writer.write_attack(
                    folder,
                    plan,
                    spec,
                    data.root,
                    feature_models,
                    batch_size=args.batch_size,
                    device="cpu",
                    file_names="source",
                    workers=workers,
                    progress=False,
                )
        print(f"\nworkers {workers}, {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
        print("\n".join(report(recorder.totals, len(plan.records) * args.rounds)))


if __name__ == "__main__":
    main()
