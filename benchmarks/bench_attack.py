"""Attack cost vs bare forward+backward passes, and peak memory vs gallery size (CPU).

1. Speed: the same model on the same batches, side by side in one process, rounds interleaved:
   * baseline: ``steps`` × (forward + backward to the input pixels) per batch -- the least
     any gradient attack with ``steps`` iterations can cost;
   * attack: :func:`metricattack.attacks.perturb.perturb` (I-FGSM / MI-FGSM) with the metric
     objective (:class:`~metricattack.attacks.objectives.MetricLoss`).
   Reports the median ratio attack / baseline (target ≤ 1.10).
2. Memory: a child process per gallery size streams :func:`~metricattack.attacks.engine.attack_batches`
   over a synthetic Market-layout gallery written to a temp folder and reports its peak RSS
   (``ru_maxrss``); with a fixed batch size it should not grow with the gallery.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_attack.py`` (about 2-4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metricattack.attacks.objectives import MetricLoss, ReferenceTargets
from metricattack.attacks.perturb import perturb
from metricattack.attacks.spec import AttackSpec
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.reid import ReIDModel


def build_model(backbone: str, size: tuple[int, int]) -> ReIDModel:
    torch.manual_seed(0)
    return ReIDModel(backbone, num_classes=10, input_size=size).eval()


def speed(args: argparse.Namespace) -> dict:
    model = build_model(args.backbone, (args.height, args.width))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(args.batch_size, 3, args.height, args.width, generator=gen) for _ in range(args.batches)]
    metric = EuclideanMetric()
    with torch.no_grad():
        refs = model(torch.rand(args.batch_size, 3, args.height, args.width, generator=gen))
    targets = ReferenceTargets.build(metric, refs, [(i,) for i in range(args.batch_size)])
    loss = MetricLoss(model, metric, targets)
    indices = torch.arange(args.batch_size)
    spec = AttackSpec(method=args.method, eps=args.eps)
    steps = spec.resolved()["options"]["steps"]

    def bare() -> None:
        for x in batches:
            for _ in range(steps):
                z = x.detach().requires_grad_(True)
                torch.autograd.grad(model(z).sum(), z)

    def attack() -> None:
        for x in batches:
            perturb(x, loss, spec, indices=indices)

    bare()  # warm-up
    times: dict[str, list[float]] = {"bare": [], "attack": []}
    for _ in range(args.rounds):
        for name, fn in (("bare", bare), ("attack", attack)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["attack"], times["bare"], strict=True)]
    return {
        "backbone": args.backbone,
        "image": [args.height, args.width],
        "batch_size": args.batch_size,
        "batches": args.batches,
        "method": args.method,
        "steps": steps,
        "rounds": args.rounds,
        "bare_seconds": times["bare"],
        "attack_seconds": times["attack"],
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "threads": torch.get_num_threads(),
    }


def write_gallery(root: Path, size: int, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for pid in range(1, 5):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "query" / f"{pid:04d}_c1s1_{pid:06d}_00.png")
    for i in range(size):
        pid = 1 + i % 4
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            root / "bounding_box_test" / f"{pid:04d}_c2s1_{i:06d}_00.png"
        )


def memory_child(args: argparse.Namespace) -> None:
    """Runs in a child process: stream the attack over a gallery of ``args.gallery`` images."""
    from metricattack.attacks.engine import attack_batches, clean_features, plan_attack
    from metricattack.data.layouts import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        write_gallery(Path(tmp), args.gallery, args.height, args.width)
        ds = load_dataset("folder", tmp)
        model = build_model(args.backbone, (args.height, args.width))
        spec = AttackSpec(method=args.method, eps=args.eps, steps=2)
        feats = clean_features([model], ds, batch_size=args.batch_size)
        plan = plan_attack([model], EuclideanMetric(), ds, "gallery", spec, feats)
        start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = sum(b.indices.numel() for b in attack_batches(plan, spec, batch_size=args.batch_size))
    print(
        json.dumps(
            {
                "gallery": count,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_before_attack_mb": start_rss / 1024,
            }
        )
    )


def memory(args: argparse.Namespace) -> list[dict]:
    rows = []
    for size in args.gallery_sizes:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            "--gallery",
            str(size),
            "--backbone",
            args.backbone,
            "--height",
            str(args.height),
            "--width",
            str(args.width),
            "--batch-size",
            str(args.batch_size),
            "--method",
            args.method,
            "--eps",
            str(args.eps),
            "--threads",
            str(args.threads),
        ]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="ifgsm")
    parser.add_argument("--eps", type=float, default=5.0)
    parser.add_argument("--gallery-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: less noise on a shared machine)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gallery", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    report = {"speed": speed(args)}
    s = report["speed"]
    print(
        f"speed: {s['backbone']} {s['image'][0]}x{s['image'][1]}, {s['batches']} batches of {s['batch_size']}, {s['method']} {s['steps']} steps, {s['threads']} threads"
    )
    for b, a, r in zip(s["bare_seconds"], s["attack_seconds"], s["ratios"], strict=True):
        print(f"  bare fwd+bwd x steps {b:7.2f} s   attack {a:7.2f} s   ratio {r:.3f}")
    print(f"  median ratio attack / bare = {s['ratio_median']:.3f} (target <= 1.10)")
    if not args.skip_memory:
        report["memory"] = memory(args)
        for row in report["memory"]:
            print(
                f"memory: gallery {row['gallery']:5d} images, batch {args.batch_size}: peak RSS {row['peak_rss_mb']:.0f} MB "
                f"(before attack {row['rss_before_attack_mb']:.0f} MB)"
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
