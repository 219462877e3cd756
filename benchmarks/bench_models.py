"""Training-step cost of the architectures: forward + backward time per image and peak memory.

Each model runs its training forward (``forward_train``) on a batch at its own input size and
backpropagates the sum of its losses' inputs (every logits head, the embedding), as a training
step does (no optimiser step). Models: ResNet-50 (B1, 256×128, the baseline of the ratios),
HACNN (160×64), Mancs (ResNet-50, 256×128), and the CPU-sized variants of the synthetic
configs (``configs/synthetic/{hacnn,mancs}-cpu.yaml``) beside the quickstart's ResNet-18 (64×32).

* time: models are timed in turns (one step of each, ``--repeats`` rounds, after a warm-up
  round) and each keeps its median, so that load changes on a shared machine hit all of them;
  printed per image and as a ratio to ResNet-50 measured in the same run.
* memory: the peak resident memory of a fresh process (one per model) across one training step,
  minus its resident memory just before the step (model built, batch made): activations,
  gradients and allocator overhead of the step.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_models.py`` (add ``--threads N``, ``--batch B``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from metricattack.models.base import ReIDNet
from metricattack.models.hacnn import HACNN
from metricattack.models.mancs import Mancs
from metricattack.models.reid import ReIDModel
from metricattack.training.config import load_train_config
from metricattack.training.trainer import build_model

REPO = Path(__file__).resolve().parents[1]
CLASSES = 751  # Market-1501's training identities: the classifier sizes of a real run


def _from_config(name: str) -> Callable[[], ReIDNet]:
    return lambda: build_model(load_train_config(REPO / "configs" / "synthetic" / name), CLASSES, pretrained=False)


MODELS: dict[str, Callable[[], ReIDNet]] = {
    "ResNet-50 (B1) 256x128": lambda: ReIDModel("resnet50", CLASSES, (256, 128)),
    "HACNN 160x64": lambda: HACNN(CLASSES),
    "Mancs (ResNet-50) 256x128": lambda: Mancs(CLASSES),
    "ResNet-18 64x32 (quickstart B1)": lambda: ReIDModel("resnet18", CLASSES, (64, 32), last_stride=2),
    "HACNN-CPU 64x32 (hacnn-cpu.yaml)": _from_config("hacnn-cpu.yaml"),
    "Mancs-CPU 64x32 (mancs-cpu.yaml)": _from_config("mancs-cpu.yaml"),
}
BASELINE = "ResNet-50 (B1) 256x128"


def training_step(model: ReIDNet, images: torch.Tensor) -> None:
    """Forward (training mode) and backward of the sum of every output the losses use."""
    out = model.forward_train(images)
    total = out.embedding.sum() + sum(lg.sum() for lg in (*out.logits, *out.attention_logits))
    model.zero_grad(set_to_none=True)
    total.backward()


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_memory_child(name: str, batch: int, threads: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MODELS[name]().train()
    images = torch.rand(batch, 3, *model.input_size)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident size
    before = _rss_kib("VmRSS")
    training_step(model, images)
    queue.put((_rss_kib("VmHWM") - before) / 1024.0)


def peak_memory_mib(name: str, batch: int, threads: int) -> float:
    """Peak extra resident memory (MiB) of one training step of ``name``, in a fresh process."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_peak_memory_child, args=(name, batch, threads, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models = {name: build().train() for name, build in MODELS.items()}
    batches = {name: torch.rand(args.batch, 3, *m.input_size) for name, m in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for name, model in models.items():
            start = time.perf_counter()
            training_step(model, batches[name])
            if round_:
                seconds[name].append(time.perf_counter() - start)
    per_image = {name: statistics.median(s) / args.batch * 1000 for name, s in seconds.items()}
    memory = {name: peak_memory_mib(name, args.batch, args.threads) for name in models}

    print(f"forward + backward, batch {args.batch}, {args.threads} thread(s), median of {args.repeats} rounds; load {os.getloadavg()}")
    print(f"{'model':34s} {'params':>8s} {'ms/image':>9s} {'x ResNet-50':>12s} {'peak MiB':>9s} {'x ResNet-50':>12s}")
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"{name:34s} {params:7.2f}M {per_image[name]:9.1f} {per_image[name] / per_image[BASELINE]:12.3f} "
            f"{memory[name]:9.0f} {memory[name] / memory[BASELINE]:12.3f}"
        )


if __name__ == "__main__":
    main()
