"""Cost of the defenses: training steps and robust evaluation against plain training, in one process.

For a benchmark config's defense leaderboard (``experiments.defenses``: methods, their sections,
``retrain``, ``batch``) and a trained base model, fine-tunes the base model ``--epochs`` epochs
with plain training (the recipe's loss) and with each method, and times one robust evaluation
(:func:`metricattack.defense.evaluation.robust_evaluations`, every ε of the section, its protocol) of the base
model. Prints CPU seconds (this process, all threads) and wall seconds per training image, and
their ratio to plain training measured in the same run, plus the robust evaluation's seconds and
its ratio to one epoch of plain training.

    OMP_NUM_THREADS=1 python benchmarks/bench_defenses.py --config configs/quickstart.yaml \\
        --data DATA --base B1/model.safetensors --out /tmp/bench-defenses --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from metricattack.benchmark.config import load_benchmark_config
from metricattack.config import validate
from metricattack.data.layouts import load_dataset
from metricattack.defense.evaluation import TRANSFER, attacked_images, robust_evaluations, robust_spec
from metricattack.defense.methods import DEFENSES
from metricattack.defense.training import train_defended
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.checkpoint import checkpoint_meta, load_model
from metricattack.training.config import TrainConfig


def per_image(checkpoint: Path) -> tuple[float, float]:
    """(CPU, wall) seconds per training image of the run that wrote ``checkpoint``."""
    history = checkpoint_meta(checkpoint)["meta"]["history"]
    images = sum(h["images"] for h in history)
    return sum(h["cpu_seconds"] for h in history) / images, sum(h["seconds"] for h in history) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="benchmark config with experiments.defenses")
    parser.add_argument("--data", type=Path, required=True, help="the config's dataset (a folder-layout root)")
    parser.add_argument("--base", type=Path, required=True, help="checkpoint of the base model (trained with the config's recipe)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=None, help="default: the section's methods trained online")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="benchmark config override")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_benchmark_config(args.config, args.set)
    section = cfg.experiments.defenses
    entry = next(m for m in cfg.models if m.name == cfg.defense_base())
    assert entry.train is not None
    recipe = entry.train.train_config("folder", args.data, "cpu", "base recipe")
    recipe = recipe.model_copy(update={"progress": False, **({"batch": section.batch} if section.batch is not None else {})})
    tuned = validate(
        TrainConfig,
        {**recipe.model_dump(mode="json"), "schedule": {"epochs": args.epochs}, "checkpoint_every": args.epochs},
        "fine-tuning recipe",
    )
    methods = args.methods or [m for m in section.methods if DEFENSES.get(m).objective is not None]
    rows: dict[str, tuple[float, float]] = {}
    factor = section.retrain.finetune_lr_factor
    rows["plain"] = per_image(train_defended(tuned, args.out / "plain", init_checkpoint=args.base, lr_factor=factor))
    for method in methods:
        out = train_defended(
            tuned, args.out / method, method=method, settings=section.settings_of(method), init_checkpoint=args.base, lr_factor=factor
        )
        rows[method] = per_image(out)
    dataset = load_dataset("folder", args.data)
    model, metric = load_model(args.base), EuclideanMetric()
    cpu, wall = time.process_time(), time.perf_counter()
    from metricattack.attacks.engine import clean_features

    clean = clean_features([model], dataset, batch_size=section.batch_size)[0]
    transfers = {
        eps: attacked_images(model, metric, dataset, TRANSFER.side, robust_spec(TRANSFER.method, eps), clean, batch_size=section.batch_size)
        for eps in section.epsilons
    }
    robust_evaluations(
        model, dataset, metric, section.epsilons, version=section.version, transfers=transfers, clean=clean, batch_size=section.batch_size
    )
    evaluation = (time.process_time() - cpu, time.perf_counter() - wall)
    plain_cpu, plain_wall = rows["plain"]
    images = checkpoint_meta(args.out / "plain" / "model.safetensors")["meta"]["history"][0]["images"]
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, {images} training images per epoch")
    print("| training | CPU s / image | × plain | wall s / image | × plain |")
    print("|---|---|---|---|---|")
    for name, (c, w) in rows.items():
        print(f"| {name} | {c:.4f} | {c / plain_cpu:.2f} | {w:.4f} | {w / plain_wall:.2f} |")
    epoch_cpu, epoch_wall = plain_cpu * images, plain_wall * images
    print(
        f"| robust evaluation of the base model, eps {section.epsilons} (with the transfer attack) | {evaluation[0]:.1f} s | "
        f"{evaluation[0] / epoch_cpu:.1f} plain epochs | {evaluation[1]:.1f} s | {evaluation[1] / epoch_wall:.1f} plain epochs |"
    )
    print(json.dumps({"training": rows, "evaluation": evaluation, "images_per_epoch": images}))


if __name__ == "__main__":
    main()
