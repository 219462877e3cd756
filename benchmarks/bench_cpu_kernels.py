"""Benchmark: two CPU kernel settings that could speed up the demo's attacks, against today's.

The demo's attacks (``make demo``: 64×32 images, 2 threads) are input-gradient passes of the
quickstart's backbones over a 180-image gallery, in batches of 64 (``attack.batch_size``). This
script times, for ResNet-18, ResNet-34 and DenseNet-121 (random weights: the cost does not
depend on them), one input-gradient pass over 180 images

* in batches of 32, 64 (today), 90 and 180, contiguous memory (today's layout);
* in batches of 64 with ``channels_last`` memory format (model and input),

alternating the settings over ``--repeats`` rounds, and prints the median seconds and the ratio
to today's setting measured in the same run.

Run:  OMP_NUM_THREADS=2 python benchmarks/bench_cpu_kernels.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torchvision

BACKBONES = ("resnet18", "resnet34", "densenet121")
GALLERY, HEIGHT, WIDTH = 180, 64, 32
#: (label, batch size, channels_last); the first one is today's setting.
SETTINGS = [("batch 64 (today)", 64, False), ("batch 32", 32, False), ("batch 90", 90, False), ("batch 180", 180, False)]
SETTINGS += [("batch 64, channels_last", 64, True)]


def input_gradient_pass(model: torch.nn.Module, images: torch.Tensor, batch: int, channels_last: bool) -> float:
    """Seconds for ∂(Σ outputs)/∂images over ``images`` in batches of ``batch``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    start = time.perf_counter()
    for s in range(0, len(images), batch):
        x = images[s : s + batch].contiguous(memory_format=fmt).requires_grad_(True)
        torch.autograd.grad(model(x).sum(), x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(GALLERY, 3, HEIGHT, WIDTH)
    print(f"{args.threads} threads, {args.repeats} rounds, load average {os.getloadavg()[0]:.2f} at start")
    print("| backbone | setting | median s (one pass, 180 images) | ratio to today |")
    print("|---|---|---|---|")
    for name in BACKBONES:
        model = getattr(torchvision.models, name)(num_classes=40).eval().requires_grad_(False)
        input_gradient_pass(model, images, 64, False)  # warm-up
        times: dict[str, list[float]] = {label: [] for label, _, _ in SETTINGS}
        for _ in range(args.repeats):
            for label, batch, channels_last in SETTINGS:
                times[label].append(input_gradient_pass(model, images, batch, channels_last))
        today = statistics.median(times[SETTINGS[0][0]])
        for label, _, _ in SETTINGS:
            median = statistics.median(times[label])
            print(f"| {name} | {label} | {median:.3f} | {median / today:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
