"""Benchmark: how much white-box I-FGSM (ε = 5) cuts mAP, by backbone, gallery size and seed.

Not a speed benchmark: it records the measurements behind the attack test's setup
(``tests/test_attack_export.py``). For each cell it generates the tests' tiny synthetic dataset
(16 train / 12 test identities, 3 cameras, 2 images per camera, 128×64) with the given number of
distractors, trains the backbone with the test fixtures' recipe
(``configs/synthetic/tiny-fixture.yaml``: 64×32, 8 epochs, cross-entropy + triplet), exports the
white-box non-targeted I-FGSM gallery attack (ε = 5, α = 1, 6 steps, squared Euclidean) and
prints clean / adversarial mAP (Market AP, images reloaded from disk), the cut, and the chance
level (expected mAP of a random ranking).

Run:  nice -n 10 .venv/bin/python benchmarks/bench_attack_strength.py \
          --backbones resnet18 resnet50 --distractors 6 240 --seeds 0:0 1:0 0:1 --out /tmp/bench_strength
      [--set model.last_stride=2 schedule.epochs=6]   (recipe overrides)
(``--seeds`` lists ``data_seed:train_seed`` pairs; each cell takes 15-60 s on one thread.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from metricattack.attacks.export import ModelEntry, export_attack
from metricattack.attacks.spec import AttackSpec
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.checkpoint import load_model
from metricattack.training import train
from metricattack.training.config import load_train_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "tiny-fixture.yaml"


def dataset(out: Path, seed: int, distractors: int) -> Path:
    """The tests' tiny synthetic dataset with ``distractors`` gallery distractors (generated once)."""
    root = out / f"data-s{seed}-d{distractors}"
    if not root.exists():
        generate(
            root,
            SynthConfig(
                seed=seed, num_train_ids=16, num_test_ids=12, num_cameras=3, images_per_camera=2, num_distractors=distractors, num_junk=4
            ),
        )
    return root


def train_fixture(root: Path, backbone: str, seed: int, out: Path, extra: list[str]) -> Path:
    """Train ``backbone`` with the test fixtures' recipe (plus ``extra`` overrides); returns the checkpoint path."""
    overrides = [f"data.root={root}", f"model.backbone={backbone}", f"seed={seed}", *extra]
    return train(load_train_config(RECIPE, overrides), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--distractors", nargs="+", type=int, default=[6, 240])
    parser.add_argument("--seeds", nargs="+", default=["0:0", "1:0", "0:1"], help="data_seed:train_seed pairs")
    parser.add_argument("--set", nargs="*", default=[], help="extra recipe overrides, e.g. model.last_stride=2 schedule.epochs=6")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_attack_strength"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"recipe overrides: {args.set or 'none'}; threads {torch.get_num_threads()}")
    print(
        "| backbone | distractors | data seed | train seed | clean mAP | adversarial mAP | cut | chance mAP | train CPU s | attack CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for distractors in args.distractors:
            for pair in args.seeds:
                data_seed, train_seed = (int(v) for v in pair.split(":"))
                root = dataset(args.out, data_seed, distractors)
                cell = args.out / f"{backbone}-s{data_seed}-d{distractors}-t{train_seed}"
                start = time.process_time()
                ckpt = train_fixture(root, backbone, train_seed, cell / f"model-{time.time_ns()}", args.set)
                trained = time.process_time()
                entry = ModelEntry(load_model(ckpt), EuclideanMetric(), {"label": backbone})
                res = export_attack(
                    [entry],
                    load_dataset("folder", root),
                    cell / f"adv-{time.time_ns()}",
                    AttackSpec(method="ifgsm", eps=5),
                    "gallery",
                    batch_size=16,
                    progress=False,
                )
                row = res["evaluations"][0]
                clean, adv = row["clean"]["mAP"], row["adversarial_disk"]["mAP"]
                print(
                    f"| {backbone} | {distractors} | {data_seed} | {train_seed} | {clean:.3f} | {adv:.3f} | "
                    f"{1 - adv / clean:.1%} | {res['chance']['mAP']:.3f} | {trained - start:.0f} | "
                    f"{time.process_time() - trained:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
