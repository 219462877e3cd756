"""How much the batch size changes features and adversarial images (issue #19 item 6).

In eval mode an image's features depend on that image only, in exact arithmetic. In float32 the
model's kernels add up in an order that depends on the batch (a one-image batch runs other
convolution code, threads split a batch differently), so features differ in the last bits and an
attack step can round a pixel to the other side of a 1/255 step. ``torchrun`` therefore shards
whole batches (``make_loader(shard=True)``): at the same ``--batch-size`` a torchrun run equals a
one-process run byte for byte (``tests/test_torchrun.py``). This script measures what a *different*
batch size changes, against ``--reference`` (the attack command's default, 32):

* features: ``extract_features`` of the gallery: images whose features differ at all, and the
  largest absolute difference (features are L2-normalised);
* attack: ``metricattack attack`` (I-FGSM, ε = 5, gallery setting) written as PNG: images with any
  changed pixel, changed pixel values, and the largest change in grey levels (of 255).

Data: the tests' tiny synthetic set (16 train / 12 test identities, 3 cameras, 128×64) with
``--distractors`` distractors and 4 junk images; model: the ResNet-18 of the tests' fixture recipe
(``configs/synthetic/tiny-fixture.yaml``, 64×32 input), trained once into ``--out``.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_batching.py --out /tmp/batching``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metricattack.cli import main as cli
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.evaluation.features import extract_features
from metricattack.models.checkpoint import load_model
from metricattack.training import train
from metricattack.training.config import load_train_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "tiny-fixture.yaml"


def prepare(out: Path, distractors: int) -> tuple[Path, Path]:
    """The dataset and the trained checkpoint (made once)."""
    data = out / "data"
    if not (data / "synth.json").exists():
        cfg = SynthConfig(
            seed=0, num_train_ids=16, num_test_ids=12, num_cameras=3, images_per_camera=2, num_distractors=distractors, num_junk=4
        )
        generate(data, cfg)
    checkpoint = out / "model" / "model.safetensors"
    if not checkpoint.exists():
        torch.set_num_threads(1)
        train(load_train_config(RECIPE, [f"data.root={data}"]), out / "model")
    return data, checkpoint


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted((folder / "bounding_box_test").iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (data, model, adversarial sets)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 64, 136])
    parser.add_argument("--reference", type=int, default=32)
    parser.add_argument("--distractors", type=int, default=60)
    args = parser.parse_args()
    data, checkpoint = prepare(args.out, args.distractors)
    dataset = load_dataset("folder", data)
    model = load_model(checkpoint)
    print(f"data: {len(dataset.gallery)} gallery images of {data} (128x64); model: {checkpoint} (ResNet-18, 64x32 input)")
    print(f"reference batch size {args.reference}; attack: I-FGSM eps 5, gallery setting")
    for threads in args.threads:
        torch.set_num_threads(threads)
        features = {b: extract_features(model, dataset.gallery, b, progress=False) for b in [args.reference, *args.batch_sizes]}
        adversarial = {}
        for b in [args.reference, *args.batch_sizes]:
            folder = args.out / f"adv-t{threads}-b{b}"
            if not (folder / "attack_results.json").exists():
                command = ["attack", "--checkpoint", str(checkpoint), "--data-root", str(data), "--dataset", "folder"]
                assert cli([*command, "--eps", "5", "--batch-size", str(b), "--out", str(folder), "--no-progress", "-q"]) == 0
            adversarial[b] = pixels(folder)
        reference_feats, reference_pixels = features[args.reference], adversarial[args.reference]
        for b in args.batch_sizes:
            diff = (features[b] - reference_feats).abs().amax(dim=1)
            changed = [name for name, image in adversarial[b].items() if not np.array_equal(image, reference_pixels[name])]
            values = sum(int((adversarial[b][n] != reference_pixels[n]).sum()) for n in changed)
            grey = max((int(np.abs(adversarial[b][n] - reference_pixels[n]).max()) for n in changed), default=0)
            print(
                f"threads {threads}  batch {b:4d}: features differ for {int((diff > 0).sum()):4d} of {len(diff)} images "
                f"(max {float(diff.max()):.2e}) | attacked images changed: {len(changed):3d} of {len(reference_pixels)}, "
                f"{values} pixel values, max {grey} grey levels"
            )


if __name__ == "__main__":
    main()
