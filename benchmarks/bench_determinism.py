"""Benchmark: which settings change the numbers of a run (issue #11 item 4: reproducible results).

Every probe runs in a fresh process (``python -c``) with a given intra-op thread count, and
prints a SHA-256 of what it computed; probes are repeated so that run-to-run differences
(same settings) and thread-count differences show up separately. With ``--load N`` the second
repeat of every setting runs while N busy-looping processes compete for the cores.

Probes:

* ``conv``: weight gradient of one 3×3 convolution (64→64 channels, batch 32, 16×8);
* ``train``: the quickstart's B1 recipe (ResNet-18, CE) trained for ``--epochs`` epochs on the
  quickstart's synthetic data: SHA-256 of the checkpoint's weights;
* ``attack``: white-box I-FGSM (ε = 5) of that data's gallery against a fixed checkpoint
  (trained once with 1 thread): SHA-256 of the quantised adversarial pixels.

Run:  nice -n 10 python benchmarks/bench_determinism.py --threads 1 2 --repeats 2 --load 2 --out /tmp/determinism
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

PROBES: dict[str, str] = {
    "conv": """
        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 64, 16, 8, generator=g)
        w = torch.randn(64, 64, 3, 3, generator=g, requires_grad=True)
        (grad,) = torch.autograd.grad(torch.nn.functional.conv2d(x, w, padding=1).square().sum(), w)
        digest = hashlib.sha256(grad.numpy().tobytes()).hexdigest()
    """,
    "train": """
        from metricattack.config import validate
        from metricattack.training import TrainConfig, train
        sys.path.insert(0, str(BENCH))
        from miniature_lab import BASE_TRAIN
        recipe = dict(BASE_TRAIN, data={"dataset": "folder", "root": str(DATA), "cache": True})
        recipe["schedule"] = {"epochs": EPOCHS, "warmup_epochs": 1, "lr_steps": [max(2, EPOCHS - 1)]}
        ckpt = train(validate(TrainConfig, recipe, "probe"), OUT / f"train-{TAG}")
        from safetensors.torch import load_file
        state = load_file(str(ckpt))
        digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    """,
    "attack": """
        from metricattack.attacks.ops import quantize
        from metricattack.attacks.engine import attack_batches, clean_features, plan_attack
        from metricattack.attacks.spec import AttackSpec
        from metricattack.data.layouts import load_dataset
        from metricattack.metrics.distance import EuclideanMetric
        from metricattack.models.checkpoint import load_model
        model = load_model(OUT / "reference" / "model.safetensors").eval()
        ds = load_dataset("folder", DATA)
        spec = AttackSpec(method="ifgsm", eps=5)
        plan = plan_attack([model], EuclideanMetric(), ds, "gallery", spec, clean_features([model], ds, batch_size=64))
        h = hashlib.sha256()
        for b in attack_batches(plan, spec, batch_size=64):
            h.update(quantize(b.adversarial, b.clean, 5).numpy().tobytes())
        digest = h.hexdigest()
    """,
}

PRELUDE = """
import hashlib, sys, torch
from pathlib import Path
torch.set_num_threads(THREADS)
"""


def run_probe(name: str, threads: int, tag: str, args: argparse.Namespace) -> tuple[str, float]:
    """(digest, CPU seconds of the child) of probe ``name`` in a fresh process with ``threads`` threads."""
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(PROBES[name]) + "\nprint(digest)\n"
    consts = {
        "THREADS": str(threads),
        "EPOCHS": str(args.epochs),
        "TAG": repr(tag),
        "OUT": f"Path({str(args.out)!r})",
        "DATA": f"Path({str(args.out / 'data')!r})",
        "BENCH": f"Path({str(Path(__file__).resolve().parent)!r})",
    }
    for key, value in consts.items():
        code = code.replace(key, value)
    shutil.rmtree(args.out / f"train-{tag}", ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    before = os.times()
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    after = os.times()
    return out.strip().splitlines()[-1], (after.children_user - before.children_user) + (after.children_system - before.children_system)


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def prepare(args: argparse.Namespace) -> None:
    """The quickstart's dataset (before issue #11) and a reference checkpoint for the attack probe."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from metricattack.config import validate
    from metricattack.data.synthetic import SynthConfig, generate
    from metricattack.training import TrainConfig, train
    from miniature_lab import BASE_DATA, BASE_TRAIN

    generate(args.out / "data", SynthConfig(**BASE_DATA))
    recipe = dict(BASE_TRAIN, data={"dataset": "folder", "root": str(args.out / "data"), "cache": True})
    recipe["schedule"] = {"epochs": args.epochs, "warmup_epochs": 1, "lr_steps": [max(2, args.epochs - 1)]}
    import torch

    torch.set_num_threads(1)
    train(validate(TrainConfig, recipe, "reference"), args.out / "reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--load", type=int, default=0, help="busy processes during every repeat after the first")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_determinism"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prepare(args)
    print(f"load during repeats ≥ 2: {args.load} busy process(es); os.getloadavg() at start {os.getloadavg()[0]:.1f}")
    print("| probe | threads | repeat | busy processes added | load average | digest (first 16) | child CPU s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.probes:
        for threads in args.threads:
            for repeat in range(1, args.repeats + 1):
                hogs = [_busy() for _ in range(args.load if repeat > 1 else 0)]
                try:
                    time.sleep(0.5 if hogs else 0)
                    digest, cpu = run_probe(name, threads, f"t{threads}-r{repeat}", args)
                finally:
                    for hog in hogs:
                        hog.kill()
                        hog.wait()
                load = os.getloadavg()[0]
                print(f"| {name} | {threads} | {repeat} | {len(hogs)} | {load:.1f} | {digest[:16]} | {cpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()
