"""Parity of every ``torchreid:<name>`` format with torchreid itself (torchreid installed; no download).

Not a speed benchmark: for each name of torchreid's builder (``TORCHREID_MODELS``, 49 in
torchreid 0.2.5), a network with random weights and random BatchNorm statistics is written by
torchreid's ``save_checkpoint`` (as its engine does, with a NumPy rank-1 and the optimizer's
state), loaded with ``metricattack.load_model("torchreid:<name>", weights=FILE)``, and compared
with torchreid's ``FeatureExtractor`` (its test transform on the image files, its network in eval
mode) on the same images:

* native: random images at the model's test size (256x128; HACNN 160x64), where torchreid's
  ``Resize`` leaves the pixels as they are: the largest |ours - torchreid| relative to the largest
  |feature|;
* resized: the same images at half the size, which torchreid enlarges with PIL's bilinear
  filter and we with our own differentiable resize (``resize_to_input``): the same relative gap.

``torchreid:hacnn`` loads into metricattack's HACNN, whose feature is torchreid's scaled by
1/sqrt(2) (unit norm, the same ranking): it is compared with torchreid's feature scaled so.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/torchreid_zoo_parity.py [--names osnet_x1_0 mlfn]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import metricattack as ma
from metricattack.models.torchreid_zoo import TORCHREID_MODELS, import_torchreid, input_size


def random_images(folder: Path, size: tuple[int, int], count: int, seed: int) -> tuple[list[str], torch.Tensor]:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(count, *size, 3), dtype=np.uint8)
    paths = [str(folder / f"{i}.png") for i in range(count)]
    for path, image in zip(paths, pixels, strict=True):
        Image.fromarray(image).save(path)
    return paths, torch.stack([ma.read_image(p) for p in paths])


def compare(name: str, folder: Path, count: int) -> dict[str, float]:
    torchreid = import_torchreid()
    torch.manual_seed(0)
    net = torchreid.models.build_model(name, num_classes=7, loss="softmax", pretrained=False, use_gpu=False)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    state = {"state_dict": net.state_dict(), "epoch": 1, "rank1": np.float32(0.5), "optimizer": optimizer.state_dict()}
    size = input_size(name)
    with contextlib.redirect_stdout(io.StringIO()):  # torchreid prints what it saves and loads
        torchreid.utils.save_checkpoint(state, str(folder / "log"))
        torch.save(net.state_dict(), folder / "plain.pth")  # torchreid's own torch.load refuses the NumPy rank-1
        extractor = torchreid.utils.FeatureExtractor(
            name, model_path=str(folder / "plain.pth"), image_size=size, device="cpu", verbose=False
        )
    ours = ma.load_model(f"torchreid:{name}", weights=folder / "log" / "model.pth.tar-1")
    scale = 2**-0.5 if name == "hacnn" else 1.0
    out: dict[str, float] = {}
    for label, shape in (("native", size), ("resized", (size[0] // 2, size[1] // 2))):
        paths, pixels = random_images(folder / label, shape, count, seed=1)
        with torch.no_grad():
            theirs, mine = scale * extractor(paths), ours(pixels)
        out[label] = float((mine - theirs).abs().max() / theirs.abs().max())
    out["dim"] = float(mine.shape[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="*", default=list(TORCHREID_MODELS))
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(f"{'torchreid model':24s} {'dim':>5s} {'native':>9s} {'resized':>9s}  seconds")
    worst = 0.0
    for name in args.names:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            r = compare(name, Path(tmp), args.images)
        worst = max(worst, float(r["native"]))
        print(f"{name:24s} {int(r['dim']):5d} {r['native']:9.1e} {r['resized']:9.1e}  {time.perf_counter() - start:7.1f}")
    print(f"largest native-size gap, relative to the largest feature: {worst:.1e}")


if __name__ == "__main__":
    main()
