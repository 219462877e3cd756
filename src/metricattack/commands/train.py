"""``metricattack train``: train a re-ID model from a YAML config (resumes when re-run)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..compute import add_compute_options, compute_overrides
from ..models.checkpoint import checkpoint_meta
from ..training import load_train_config, train
from ..wording import counted


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` parser."""
    parser = subparsers.add_parser(
        "train",
        help="train a re-ID model (cross-entropy and/or triplet) from a YAML config",
        description=(
            "Train the model described by CONFIG; checkpoints go to OUT/checkpoints/, the final model to "
            "OUT/model.safetensors (+ model.json). Re-running with the same config resumes. "
            "Run under torchrun for DistributedDataParallel."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="training YAML (see configs/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<config name>)")
    add_compute_options(parser, config=True)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. schedule.epochs=5 data.root=/data")
    parser.set_defaults(func=run, torchrun="self")


def run(args: argparse.Namespace) -> int:
    """Train and print the final checkpoint and its last epoch's numbers."""
    cfg = load_train_config(args.config, [*args.overrides, *compute_overrides(args)])
    out = args.out if args.out is not None else Path("runs") / args.config.stem
    final = train(cfg, out)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports (the process group is gone by now)
        return 0
    last = checkpoint_meta(final)["meta"]["history"][-1]
    precision = "" if cfg.compute.is_default else f" ({cfg.compute.describe()})"
    print(
        f"trained {cfg.model.label}{precision} for {counted(cfg.schedule.epochs, 'epoch')}: last loss {last['loss']:.4f}, {last['images_per_second']:.1f} images/s -> {final}"
    )
    return 0
