"""Cost of every registered attack method per image, against I-FGSM in the same run (CPU).

Each method (its default options at ε, i.e. its paper's) attacks the same batch of images on the
same model with the metric objective (:class:`~metricattack.attacks.objectives.MetricLoss`)
through :func:`~metricattack.attacks.perturb.perturb`. Reported per image:

* the forward and backward passes the :class:`~metricattack.attacks.problem.AttackProblem`
  counted (one forward + backward of the model is the unit a gradient method pays per call;
  a gradient-free method pays forward passes only), and their ratio to I-FGSM's;
* the CPU time ratio to I-FGSM (``time.process_time``: this process's CPU seconds on one
  intra-op thread, so other processes on a shared machine inflate it far less than wall time,
  which is recorded too): after one warm-up attack, rounds interleaved (every method once per
  round, in registry order), the median of the per-round ratios.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_method_cost.py`` (about 3 minutes on one
thread; ``--methods difgsm tifgsm`` for a few, ``--eps 5 8`` for the ε values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from metricattack.attacks.methods import METHODS
from metricattack.attacks.objectives import MetricLoss, ReferenceTargets
from metricattack.attacks.perturb import perturb
from metricattack.attacks.problem import ModelInfo
from metricattack.attacks.spec import AttackSpec
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.reid import ReIDModel

BASELINE = "ifgsm"


def measure(args: argparse.Namespace, eps: float) -> dict:
    torch.manual_seed(0)
    model = ReIDModel(args.backbone, num_classes=10, input_size=(args.height, args.width)).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.height, args.width, generator=gen)
    metric = EuclideanMetric()
    with torch.no_grad():
        refs = model(torch.rand(args.batch_size, 3, args.height, args.width, generator=gen))
    loss = MetricLoss(model, metric, ReferenceTargets.build(metric, refs, [(i,) for i in range(args.batch_size)]))
    indices, infos = torch.arange(args.batch_size), (ModelInfo.of(model),)
    # uap applies a trained file (no model call at attack time: nothing to measure here)
    measured = args.methods or [m for m in METHODS.names() if METHODS.get(m).uses_model]
    methods = [BASELINE, *(m for m in measured if m != BASELINE)]
    specs = {m: AttackSpec(method=m, eps=eps) for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    wall: dict[str, list[float]] = {m: [] for m in methods}
    passes: dict[str, tuple[float, float]] = {}
    perturb(images, loss, specs[BASELINE], indices=indices, models=infos)  # warm-up (allocator, kernels)
    for _ in range(args.rounds):
        for method in methods:
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            result = perturb(images, loss, specs[method], indices=indices, models=infos)
            cpu[method].append(time.process_time() - start_cpu)
            wall[method].append(time.perf_counter() - start_wall)
            passes[method] = (float(result.counts.forward.double().mean()), float(result.counts.backward.double().mean()))
    base_forward, base_backward = passes[BASELINE]
    rows = []
    for method in methods:
        forward, backward = passes[method]
        ratios = [t / b for t, b in zip(cpu[method], cpu[BASELINE], strict=True)]
        rows.append(
            {
                "method": method,
                "options": specs[method].options_text(),
                "forward_per_image": forward,
                "backward_per_image": backward,
                "passes_vs_ifgsm": max(forward, backward) / max(base_forward, base_backward),
                "cpu_vs_ifgsm_median": statistics.median(ratios),
                "cpu_vs_ifgsm": ratios,
                "cpu_seconds": cpu[method],
                "wall_seconds": wall[method],
            }
        )
    return {"eps": eps, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eps", type=float, nargs="+", default=[5.0, 8.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="methods to measure (default: every registered one)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: less noise on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"{args.backbone} {args.height}x{args.width} (model input = image), batch {args.batch_size}, {args.rounds} rounds, "
        f"{torch.get_num_threads()} thread(s), load average at start {load[0]:.2f}"
    )
    report = {"args": vars(args), "load_at_start": load, "results": [measure(args, eps) for eps in args.eps]}
    for result in report["results"]:
        print(f"\neps = {result['eps']:g}")
        print("| method | options | forward / image | backward / image | passes vs I-FGSM | CPU time vs I-FGSM (median) |")
        print("|---|---|---:|---:|---:|---:|")
        for r in result["rows"]:
            print(
                f"| {r['method']} | {r['options']} | {r['forward_per_image']:g} | {r['backward_per_image']:g} | "
                f"{r['passes_vs_ifgsm']:.2f} | {r['cpu_vs_ifgsm_median']:.2f} |"
            )
    report["load_at_end"] = os.getloadavg()
    print(f"\nload average at end {report['load_at_end'][0]:.2f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
