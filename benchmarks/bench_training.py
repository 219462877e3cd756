"""Training throughput: :func:`metricattack.training.train` vs a bare PyTorch loop, same run.

Both train the same model (same seed, same initial weights) on the same batches: the bare
loop gets the batches the trainer's loader yields (P×K or shuffled, augmented), materialised
in memory beforehand, and does only forward → loss → zero_grad → backward → Adam step. The
trainer's time is its epoch-loop time (data loading from the in-memory cache, augmentation,
collation, loss bookkeeping, progress bar); its whole ``train()`` call (dataset scan, image
caching, checkpoint writes) is printed too. Runs are interleaved; the best of ``--repeats``
is kept for each side, to damp the noise of a shared machine.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_training.py`` (synthetic data, CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.models.checkpoint import checkpoint_meta
from metricattack.training import TrainConfig, train
from metricattack.training.data import TrainImages, relabel
from metricattack.training.trainer import LossTerms, build_loader, build_model


def make_config(root: Path, args: argparse.Namespace, triplet: bool) -> TrainConfig:
    """The benchmarked recipe: CE (random batches) or CE + triplet (P×K batches)."""
    loss: dict = {"cross_entropy": {"label_smoothing": 0.1}}
    batch: dict = {"batch_size": args.batch_size, "sampler": "random"}
    if triplet:
        loss["triplet"] = {"margin": 0.3}
        batch = {"batch_size": args.batch_size, "sampler": "pk", "images_per_id": 4}
    return TrainConfig.model_validate(
        {
            "data": {"dataset": "folder", "root": str(root), "cache": True},
            "model": {"backbone": args.backbone, "input_size": args.input_size},
            "loss": loss,
            "schedule": {"epochs": args.epochs},
            "batch": batch,
            "augmentation": {"pad": 4},
            "device": "cpu",
            "progress": True,
        }
    )


def bare_batches(cfg: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches the trainer sees in epochs 1..E (same sampler seeds and augmentation RNG)."""
    records, labels, _ = relabel(load_dataset(cfg.data.dataset, cfg.data.root).train)
    loader = build_loader(cfg, TrainImages(records, labels, cfg.model.input_size, cfg.augmentation, cache=True), labels, 0, 1)
    batches = []
    for epoch in range(1, cfg.schedule.epochs + 1):
        torch.manual_seed(cfg.seed + epoch)
        loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        batches.extend((images, torch.as_tensor(y)) for images, y in loader)
    return batches


def bare_loop(cfg: TrainConfig, num_classes: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds for a plain forward/backward/step loop over ``batches``."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes).train()
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    losses = LossTerms(cfg)
    start = time.perf_counter()
    for images, labels in batches:
        loss, _ = losses(model.forward_train(images), labels, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def trainer_run(cfg: TrainConfig, out: Path) -> tuple[float, float, int]:
    """``(epoch-loop seconds, whole train() seconds, images)`` of one fresh training run."""
    start = time.perf_counter()
    final = train(cfg, out)
    wall = time.perf_counter() - start
    history = checkpoint_meta(final)["meta"]["history"]
    return sum(h["seconds"] for h in history), wall, sum(h["images"] for h in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--input-size", type=int, nargs=2, default=[128, 64])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-ids", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = generate(
            Path(tmp) / "data", SynthConfig(seed=0, num_train_ids=args.train_ids, num_test_ids=4, num_cameras=4, images_per_camera=2)
        )
        print(
            f"{args.backbone}, input {args.input_size[0]}x{args.input_size[1]}, batch {args.batch_size}, {args.epochs} epochs, "
            f"{torch.get_num_threads()} threads, best of {args.repeats}"
        )
        print(
            f"{'recipe':<22}{'images':>8}{'bare s':>9}{'trainer s':>11}{'ratio':>8}{'train() s':>11}{'bare img/s':>12}{'trainer img/s':>15}"
        )
        for triplet in (False, True):
            cfg = make_config(root, args, triplet)
            batches = bare_batches(cfg)
            num_classes = len(relabel(load_dataset("folder", root).train)[2])
            bare, loop, wall = [], [], []
            for r in range(args.repeats):
                seconds, whole, images = trainer_run(cfg, Path(tmp) / f"run-{int(triplet)}-{r}")
                loop.append(seconds)
                wall.append(whole)
                bare.append(bare_loop(cfg, num_classes, batches))
            assert images == sum(b[0].shape[0] for b in batches), "trainer and bare loop saw different image counts"
            name = "CE + triplet (P×K)" if triplet else "CE (random batches)"
            print(
                f"{name:<22}{images:>8}{min(bare):>9.2f}{min(loop):>11.2f}{min(loop) / min(bare):>8.3f}{min(wall):>11.2f}"
                f"{images / min(bare):>12.1f}{images / min(loop):>15.1f}"
            )


if __name__ == "__main__":
    main()
