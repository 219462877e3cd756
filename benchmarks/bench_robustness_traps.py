"""The trap models of the robustness checks against the plain model: robust mAP and flags, with and without BPDA.

Each deterministic trap of :data:`metricattack.robustness.traps.TRANSFORMS` (JPEG, 8-bit
quantisation, resize chain) wraps the same model; every model is evaluated with the tests' miniature
protocol (:data:`metricattack.robustness.traps.MINIATURE`: APGD 6 iterations (two starts on the metric
and self losses), Square 20 queries, ε 8,
reference FGSM and I-FGSM, sweep ε 4 / 64) on the first ``--queries`` queries. The issue's criterion: each
trap is flagged, and its BPDA counterpart comes back within 2 points of the plain model's robust mAP.

Run: ``.venv/bin/python benchmarks/bench_robustness_traps.py --data-root data/tiny --checkpoint model/model.safetensors``
(``--models clean,jpeg,jpeg+bpda``: some of them; ``--queries 36``: the tiny set's every query).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch

from metricattack.data.layouts import load_dataset
from metricattack.models.checkpoint import load_model
from metricattack.robustness.evaluate import run_protocol
from metricattack.robustness.traps import MINIATURE, Preprocessed

MODELS = ["clean", "jpeg", "jpeg+bpda", "resize", "resize+bpda", "quantize", "quantize+bpda"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--dataset", default="folder")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)} (default all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    full = load_dataset(args.dataset, args.data_root)
    dataset = dataclasses.replace(full, query=full.query[: args.queries])
    base = load_model(args.checkpoint)
    print(f"load average at start {os.getloadavg()[0]:.2f}, 1 thread, {args.queries} queries")
    print("| model | robust mAP | its clean mAP | flagged | CPU s |")
    print("|---|---:|---:|---|---:|")
    for name in args.models.split(","):
        transform, _, bpda = name.partition("+")
        model = base if name == "clean" else Preprocessed(base, transform, bpda=bool(bpda))
        start = time.process_time()
        result, _ = run_protocol(model, dataset, protocol=MINIATURE, batch_size=8)
        flagged = ", ".join(f.name for f in result.flagged()) or "none"
        print(
            f"| {name} | {result.headline.mAP.value:.2f} | {result.clean.value:.2f} | {flagged} | {time.process_time() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
