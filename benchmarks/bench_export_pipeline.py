"""The attack export as a pipeline (issue #25): images/s of the bare model work vs the export's
attack loop without and with overlapped host work, measured in one run.

For each case (a model attacking a synthetic gallery), rounds interleaved, each round in fresh folders:

* ``bare``: the model work of the attack loop alone, on images decoded beforehand, nothing read or
  written: per batch with an attacked image, the attack (``perturb``: I-FGSM's forward+backward
  passes) and the forward pass for the adversarial features, as ``attacks.engine.AttackBatches`` does;
* ``unpipelined``: ``attacks.writer.write_attack(workers=0)``, the export's loop: read, attack,
  write (PNG, SHA-256, batch records) in turn, in one thread, into a new folder (the previous
  round's deleted before the clock starts);
* ``pipelined``: the same with ``--workers`` host threads (the default of ``metricattack attack``):
  the next batches decoded and the previous ones written (in host processes:
  ``metricattack.overlap.on_host``) while the model attacks.

One untimed warm-up round of each mode comes first (the pipelined one starts the host processes, which
a long export starts once; they are kept for the timed rounds). Printed per case: median seconds per
round, images/s ratios against ``bare`` (median of the per-round ratios), the host work per gallery image (unpipelined − bare), and whether the
unpipelined and pipelined folders hold the same bytes (they must).

Cases (untrained weights: I-FGSM's cost does not depend on them):
* ``quickstart``: the quickstart's B1 network (ResNet-18 at 64x32) and attack (I-FGSM, ε = 5, α = 1,
  6 steps, batch 64) on a gallery like the quickstart's (30 identities, 300 distractors, 10 junk,
  64x32 images: 90 of 400 gallery images attacked, all 400 written);
* ``tiny``: the same network at 16x8 input (the images resized down inside the model, 1/16 of the
  pixels), where the host work is as large as the model work: the unpipelined loop cannot exceed
  1 / (model + host) images per second, the pipelined one approaches 1 / max(model, host).

Run (about 2 min of CPU; one intra-op thread; the host threads need a second core to overlap):
``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_export_pipeline.py --out runs/bench-export-pipeline``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from metricattack.attacks import writer
from metricattack.attacks.engine import FeatureModel, clean_features, plan_attack
from metricattack.attacks.perturb import perturb
from metricattack.attacks.spec import AttackSpec
from metricattack.data.layouts import load_dataset
from metricattack.data.loading import make_loader, read_batches
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.data.types import ReIDDataset
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.reid import ReIDModel
from metricattack.overlap import DEFAULT_WORKERS

CASES = {"quickstart": ("resnet18", (64, 32)), "tiny": ("resnet18", (16, 8))}  # backbone, model input size


def dataset(folder: Path, height: int, width: int, num_test_ids: int = 30, num_distractors: int = 300) -> ReIDDataset:
    """A gallery like the quickstart's (``configs/quickstart.yaml``; 3 cameras, 2 images each), generated once."""
    root = folder / f"data-{height}x{width}-{num_test_ids}ids-{num_distractors}d"
    if not root.is_dir():
        cfg = SynthConfig(
            seed=0,
            num_train_ids=4,
            num_test_ids=num_test_ids,
            num_cameras=3,
            images_per_camera=2,
            height=height,
            width=width,
            num_distractors=num_distractors,
            num_junk=10 if num_distractors else 0,
        )
        generate(root, cfg)
    return load_dataset("folder", root)


def measure(
    name: str,
    backbone: str,
    input_size: tuple[int, int],
    data: ReIDDataset,
    work: Path,
    *,
    batch_size: int,
    rounds: int,
    workers: int,
    device: str = "cpu",
) -> dict:
    """Bare model work vs the export's loop without and with overlap (module docstring), ``rounds`` interleaved rounds."""
    torch.manual_seed(0)
    model = ReIDModel(backbone, num_classes=10, input_size=input_size).eval().to(device)
    spec = AttackSpec(method="ifgsm", eps=5, alpha=1)
    feats = clean_features([model], data, batch_size=batch_size, device=device)
    plan = plan_attack([model], EuclideanMetric(), data, "gallery", spec, feats)
    feature_models = [FeatureModel(model, feats[0].of(plan.split))]
    decoded = [(torch.tensor(b), x.to(device)) for _, b, x in read_batches(make_loader(plan.records, batch_size), workers=0)]

    def bare() -> None:
        for indices, clean in decoded:
            active = plan.active[indices]
            if not active.any():
                continue
            plan.objective.prepare(clean, indices)
            result = perturb(clean, plan.objective, spec, indices=indices, active=active, minimise=plan.threat.minimise, models=plan.models)
            with torch.no_grad():
                model(result.images[active]).cpu()

    def export(threads: int, folder: Path) -> Callable[[], None]:
        def run() -> None:
            writer.write_attack(
                folder,
                plan,
                spec,
                data.root,
                feature_models,
                batch_size=batch_size,
                device=device,
                file_names="source",
                workers=threads,
                progress=False,
            )

        return run

    folders = {"unpipelined": work / f"{name}-unpipelined", "pipelined": work / f"{name}-pipelined"}
    modes = {"bare": bare, "unpipelined": export(0, folders["unpipelined"]), "pipelined": export(workers, folders["pipelined"])}
    for mode, run in modes.items():  # warm-up, untimed: the pipelined one starts the host processes, kept for the rounds
        if mode in folders:
            shutil.rmtree(folders[mode], ignore_errors=True)
        run()
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    names = list(modes)
    for r in range(rounds):
        for mode in names[r % 3 :] + names[: r % 3]:  # each mode in each position once per three rounds
            if mode in folders:
                shutil.rmtree(folders[mode], ignore_errors=True)  # the previous round's output, deleted before the clock starts
            start = time.perf_counter()
            modes[mode]()
            times[mode].append(time.perf_counter() - start)
    same = tree(folders["unpipelined"]) == tree(folders["pipelined"])
    images, attacked = len(plan.records), int(plan.active.sum())
    ratio = {mode: statistics.median(b / t for b, t in zip(times["bare"], times[mode], strict=True)) for mode in names[1:]}
    host = statistics.median(o - b for o, b in zip(times["unpipelined"], times["bare"], strict=True))
    return {
        "case": name,
        "model": f"{backbone} at {input_size[0]}x{input_size[1]}",
        "device": str(device),
        "gallery_images": images,
        "attacked_images": attacked,
        "seconds": {mode: statistics.median(t) for mode, t in times.items()},
        "rounds": times,
        "images_per_s_vs_bare": ratio,
        "host_ms_per_gallery_image": 1e3 * host / images,
        "model_ms_per_gallery_image": 1e3 * statistics.median(times["bare"]) / images,
        "same_bytes": same,
    }


def describe(r: dict) -> str:
    """One line of results."""
    s, q = r["seconds"], r["images_per_s_vs_bare"]
    return (
        f"{r['case']:10s} {r['model']:22s} {r['attacked_images']}/{r['gallery_images']} attacked | bare {s['bare']:.2f} s, "
        f"unpipelined {s['unpipelined']:.2f} s, pipelined {s['pipelined']:.2f} s | images/s vs bare: "
        f"unpipelined {q['unpipelined']:.3f}x, pipelined {q['pipelined']:.3f}x | host {r['host_ms_per_gallery_image']:.2f} ms, "
        f"model {r['model_ms_per_gallery_image']:.2f} ms per gallery image | same bytes: {r['same_bytes']}"
    )


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-export-pipeline"))
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="host threads (and processes) of the pipelined export")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--image", default="64x32", help="synthetic image size HxW (the quickstart's: 64x32; Market-1501's: 128x64)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.image.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    data = dataset(args.out, height, width)
    load = os.getloadavg()[0]
    print(
        f"{args.threads} intra-op thread(s), {args.workers} host workers, batch {args.batch_size}, {args.rounds} rounds, images {args.image}"
    )
    print(f"load average {load:.2f} at start, {os.cpu_count()} CPUs")
    results = []
    for name in args.cases:
        backbone, size = CASES[name]
        r = measure(name, backbone, size, data, args.out / "work", batch_size=args.batch_size, rounds=args.rounds, workers=args.workers)
        results.append(r)
        print(describe(r))
    end = os.getloadavg()[0]
    print(f"load average {end:.2f} at the end")
    summary = {"threads": args.threads, "workers": args.workers, "load_start": load, "load_end": end, "cases": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
