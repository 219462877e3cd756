"""Benchmark: the model's resize (antialiased or not) against a victim that resizes with PIL.

Not a speed benchmark: it records the measurements behind ``models/preprocessing.py``'s choice
of an antialiased bilinear resize and how a third party's loader sees our adversarial images.
On the tests' tiny synthetic identities at 128×64 with a Market-like gallery (240 distractors)
and a 64×32 model (``configs/synthetic/tiny-fixture.yaml``), for each resize setting
(``ANTIALIAS`` on / off, used for training, feature extraction and the attack alike):

1. pixel gap: mean and max |our resize − PIL bilinear| in 0..255 units over the clean gallery;
2. train the backbone, export the white-box non-targeted I-FGSM gallery attack (ε = 5, α = 1,
   6 steps, squared Euclidean; lossless PNG), then score the clean and the adversarial gallery
   (a) as every metricattack command does (native-size images, the model's own resize) and
   (b) as a torchreid-style victim does: PIL ``Image.resize((w, h), BILINEAR)`` on the 8-bit
   file, ``ToTensor``, then the same model (the images are then at its input size: no resize).

Run:  nice -n 10 .venv/bin/python benchmarks/bench_resize.py --backbones resnet50 resnet18 --out /tmp/bench_resize
(each backbone × setting trains one model: 30-90 s on one thread.)
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metricattack.attacks.export import ModelEntry, export_attack
from metricattack.attacks.spec import AttackSpec
from metricattack.data.layouts import load_dataset
from metricattack.data.loading import read_image
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.data.types import ImageRecord, ReIDDataset
from metricattack.evaluation.features import evaluate_split_features, extract_features
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models import preprocessing
from metricattack.models.checkpoint import load_model
from metricattack.training import train
from metricattack.training.config import load_train_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "tiny-fixture.yaml"


def pil_resized(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """``[3, h, w]`` in [0,1]: the file resized by PIL's bilinear filter on 8-bit pixels (torchreid's test transform)."""
    with Image.open(path) as img:
        small = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


@torch.no_grad()
def pil_features(model: torch.nn.Module, records: Sequence[ImageRecord], batch: int = 64) -> torch.Tensor:
    size = model.input_size
    rows = []
    for start in range(0, len(records), batch):
        images = torch.stack([pil_resized(r.path, size) for r in records[start : start + batch]])
        rows.append(model(images).float())
    return torch.cat(rows)


def ours_features(model: torch.nn.Module, records: Sequence[ImageRecord]) -> torch.Tensor:
    """Features as every metricattack command computes them (native-size images, the model's resize)."""
    return extract_features(model, list(records), progress=False)


def pixel_gap(records: Sequence[ImageRecord], size: tuple[int, int]) -> tuple[float, float]:
    """Mean and max |resize_to_input − PIL bilinear| in 0..255 units (PIL's output is 8-bit)."""
    gaps = []
    for r in records:
        ours = preprocessing.resize_to_input(read_image(r.path).unsqueeze(0), size)[0]
        gaps.append((ours - pil_resized(r.path, size)).abs().mul(255.0))
    stacked = torch.stack(gaps)
    return float(stacked.mean()), float(stacked.max())


def mAP(dataset: ReIDDataset, features: Callable[[Sequence[ImageRecord]], torch.Tensor]) -> float:
    """mAP (0..100) of ``dataset`` with the given feature function (squared Euclidean, Market AP)."""
    return 100.0 * evaluate_split_features(features(dataset.query), features(dataset.gallery), dataset, EuclideanMetric()).mAP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--distractors", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_resize"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out / f"data-s{args.seed}-d{args.distractors}"
    if not root.exists():
        generate(
            root,
            SynthConfig(
                seed=args.seed,
                num_train_ids=16,
                num_test_ids=12,
                num_cameras=3,
                images_per_camera=2,
                num_distractors=args.distractors,
                num_junk=4,
                height=128,
                width=64,
            ),
        )
    dataset = load_dataset("folder", root)
    print(f"threads {torch.get_num_threads()}; images 128x64, model input 64x32; gallery {len(dataset.gallery)} images")
    print(
        "| backbone | resize | mean / max gap to PIL (0..255) | clean mAP, ours | adv. mAP, ours | clean mAP, PIL victim | adv. mAP, PIL victim | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for antialias in (True, False):
            preprocessing.ANTIALIAS = antialias
            start = time.perf_counter()
            cell = args.out / f"{backbone}-aa{int(antialias)}-{time.time_ns()}"
            overrides = [f"data.root={root}", f"model.backbone={backbone}", f"seed={args.seed}"]
            model = load_model(train(load_train_config(RECIPE, overrides), cell / "model"))
            mean_gap, max_gap = pixel_gap(dataset.gallery, model.input_size)
            export_attack(
                [ModelEntry(model, EuclideanMetric(), {"label": backbone})],
                dataset,
                cell / "adv",
                AttackSpec(method="ifgsm", eps=5),
                "gallery",
                batch_size=16,
                progress=False,
            )
            adv = load_dataset("folder", cell / "adv")
            ours = [mAP(d, functools.partial(ours_features, model)) for d in (dataset, adv)]
            pil = [mAP(d, functools.partial(pil_features, model)) for d in (dataset, adv)]
            print(
                f"| {backbone} | {'antialiased' if antialias else 'aliased'} | {mean_gap:.2f} / {max_gap:.0f} | "
                f"{ours[0]:.2f} | {ours[1]:.2f} | {pil[0]:.2f} | {pil[1]:.2f} | {time.perf_counter() - start:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
