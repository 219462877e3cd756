"""What one device does with metricattack's work, in minutes (issue #25; run by ``benchmarks/device_check.sh``).

Prints, on the first CUDA GPU (or, without one, on the CPU at small sizes, saying so):

1. ResNet-50 forward + backward to the input pixels (one attack step, the unit U of the GPU
   projection in ``benchmarks/RESULTS.md``) in images/s, in fp32, bf16 and fp16 (``--precision``:
   :mod:`metricattack.compute`; fp32 with PyTorch's TF32 defaults, printed);
2. the attack export's loop (I-FGSM, ε = 5, 6 steps, PNG + SHA-256 + records) against the bare model
   work of the same attack, unpipelined and pipelined (``benchmarks/bench_export_pipeline.py``);
3. evaluation time of a Market-1501-size ranking (3,368 × 15,913 random 2048-d features, Euclidean);
4. training images/s of ``metricattack.training.train`` (its second epoch, cross-entropy + triplet, P×K batches;
   fp32 and, on a GPU, bf16).

GPU sizes: ResNet-50 at 256×128, batch 64; export on 720 gallery images of 128×64 (all attacked);
training on 1,440 images. CPU sizes (a smoke run): ResNet-50 at 64×32, batch 2; the export with
ResNet-18 at 32×16 on 24 images; the ranking at a tenth of each side (337 × 1,592); training ResNet-18
at 32×16 on 48 images.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from metricattack.compute import Compute, make_compute
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.evaluation.features import evaluate_features
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.checkpoint import checkpoint_meta
from metricattack.models.reid import ReIDModel
from metricattack.overlap import DEFAULT_WORKERS
from metricattack.training import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export_pipeline import dataset, describe, measure  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device, repeats: int, warm_up: bool = True) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs (after one warm-up run)."""
    if warm_up:
        fn()
        synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(device: torch.device, size: tuple[int, int], batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = ReIDModel("resnet50", num_classes=751, input_size=size).eval().to(device)
    images = torch.rand(batch, 3, *size, device=device)
    print(f"1. ResNet-50 at {size[0]}x{size[1]}, forward + backward to the pixels (an attack step), batch {batch}:")
    for name in ("fp32", "bf16", "fp16"):
        compute = make_compute(precision=name)

        def step(compute: Compute = compute) -> None:
            x = images.clone().requires_grad_(True)
            compute.input_gradient(model(x).sum(1), x)

        with compute.applied([model]):
            try:
                fast = device.type == "cuda" or name != "fp16"  # fp16 has no fast CPU kernels (~30x fp32): one run
                seconds = timed(step, device, repeats if fast else 1, warm_up=fast)
            except RuntimeError as exc:  # a precision this device does not run
                print(f"   {name}: not available here ({str(exc).splitlines()[0]})")
                continue
        print(f"   {name}: {batch / seconds:9.1f} images/s ({1e3 * seconds / batch:.2f} ms per image)")


def export(device: torch.device, gpu: bool, work: Path, rounds: int) -> None:
    if gpu:
        data, backbone, size, batch = dataset(work, 128, 64, num_test_ids=120, num_distractors=0), "resnet50", (256, 128), 64
    else:
        data, backbone, size, batch = dataset(work, 64, 32, num_test_ids=4, num_distractors=0), "resnet18", (32, 16), 8
    print(f"2. attack export (I-FGSM eps 5, 6 steps) vs the bare model work, {DEFAULT_WORKERS} host workers, {rounds} rounds:")
    result = measure(
        "export", backbone, size, data, work / "export", batch_size=batch, rounds=rounds, workers=DEFAULT_WORKERS, device=str(device)
    )
    print(f"   {describe(result)}")


def ranking(device: torch.device, gpu: bool, repeats: int) -> None:
    queries, gallery = (3368, 15913) if gpu else (337, 1592)
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(queries, 2048, generator=gen).to(device), torch.randn(gallery, 2048, generator=gen).to(device)
    q_pids, g_pids = torch.randint(1, 752, (queries,), generator=gen), torch.randint(1, 752, (gallery,), generator=gen)
    q_cams, g_cams = torch.randint(0, 6, (queries,), generator=gen), torch.randint(0, 6, (gallery,), generator=gen)

    def evaluate() -> None:
        evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, EuclideanMetric())

    seconds = timed(evaluate, device, repeats)
    print(f"3. evaluation of {queries:,} x {gallery:,} random 2048-d features (Euclidean, Market mAP): {seconds:.2f} s")


def training(device: torch.device, gpu: bool, work: Path) -> None:
    ids = 120 if gpu else 4
    root = work / f"train-{ids}"
    if not root.is_dir():
        generate(root, SynthConfig(seed=0, num_train_ids=ids, num_test_ids=2, num_cameras=3, images_per_camera=4, height=128, width=64))
    backbone, size, batch = ("resnet50", (256, 128), 64) if gpu else ("resnet18", (32, 16), 16)
    print(f"4. training {backbone} at {size[0]}x{size[1]} (cross-entropy + triplet, P x K batches of {batch}), second epoch:")
    for precision in ("fp32", "bf16") if gpu else ("fp32",):
        cfg = TrainConfig.model_validate(
            {
                "data": {"dataset": "folder", "root": str(root), "cache": True},
                "model": {"backbone": backbone, "input_size": list(size), "pretrained": False},
                "loss": {"cross_entropy": {"label_smoothing": 0.1}, "triplet": {"margin": 0.3}},
                "schedule": {"epochs": 2},
                "batch": {"batch_size": batch, "sampler": "pk", "images_per_id": 4},
                "compute": {"precision": precision},
                "device": str(device),
                "progress": False,
            }
        )
        second = checkpoint_meta(train(cfg, work / f"run-{device.type}-{precision}"))["meta"]["history"][-1]  # the first epoch warms up
        print(f"   {precision}: {second['images_per_second']:9.1f} images/s ({second['images']} images in {second['seconds']:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # each line as it is measured, also into a pipe
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    if gpu:
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        print(f"fp32 is PyTorch's default: TF32 in matrix products {tf32[0]}, in convolutions {tf32[1]}")
    else:
        print(f"device: CPU ({os.cpu_count()} CPUs, {torch.get_num_threads()} intra-op threads), torch {torch.__version__}")
        print("no CUDA GPU: the CPU part at small sizes (a smoke run, not the GPU numbers); the tests marked cuda will skip")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="metricattack-device-check-") as scratch:
        work = args.work or Path(scratch)
        forward_backward(device, (256, 128) if gpu else (64, 32), 64 if gpu else 2, 10 if gpu else 1)
        export(device, gpu, work, rounds=3 if gpu else 1)
        ranking(device, gpu, 3 if gpu else 1)
        training(device, gpu, work)
    print(f"measurements took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
