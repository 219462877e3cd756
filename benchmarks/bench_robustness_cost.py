"""What the robustness protocol costs, in passes of one image per query, and what the cascade saves.

1. **Measured** (``--result robustness.json ...``): forward and backward passes per query that an
   evaluation spent (checks included), those of its cascades alone, what the same cascade runs
   would have cost on every query (no cascade), and the saving.
2. **Bound per version** (every :data:`~metricattack.robustness.protocol.VERSIONS` entry): the
   passes per query when no query ever drops out (the cascade saves nothing, Square never stops):
   APGD ``(steps + 1) · runs`` forward + backward per ε, Square ``steps + 1`` forwards, one forward to
   rank each run's adversarial query, the extra starts, the reference attacks (their steps resolved
   at the headline ε) and the ε sweep.
3. **Projection** to Market-1501's 3,368 queries: passes, and CPU hours at this machine's rate of one
   forward + backward and one forward pass of ``--backbone`` at ``--height x --width`` (measured here
   on a batch, one intra-op thread). A GPU's time is these passes over its own throughput.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_robustness_cost.py --result runs/x/robustness.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from metricattack.attacks.spec import make_spec
from metricattack.models.reid import ReIDModel
from metricattack.robustness.protocol import VERSIONS, Protocol

MARKET_QUERIES = 3368


def bound(protocol: Protocol) -> tuple[int, int]:
    """(forward, backward) passes per query of ``protocol`` when every run attacks every query to its full budget."""
    gradient = sum((s.steps + 1) * s.runs for s in protocol.cascade if s.method == "apgd")
    search = sum(s.steps + 1 for s in protocol.cascade if s.method == "square")
    runs = sum(s.runs for s in protocol.cascade)
    extra = sum((s.steps + 1) * s.runs for s in protocol.cascade if s.method == "apgd")  # the convergence check doubles the starts
    references = sum(  # at every ε; FGSM is one step
        int(make_spec("bound", method=m, eps=e).resolved()["options"].get("steps", 1))
        for m in protocol.reference_methods
        for e in protocol.epsilons
    )
    sweep = len(protocol.sweep_epsilons) * (protocol.sweep_steps + 1)
    eps = len(protocol.epsilons)
    backward = eps * gradient + extra + references + sweep
    ranking = (
        eps * runs
        + sum(s.runs for s in protocol.cascade if s.method == "apgd")
        + eps * len(protocol.reference_methods)
        + len(protocol.sweep_epsilons)
    )
    return backward + eps * search + ranking, backward


def rates(backbone: str, height: int, width: int, batch: int, rounds: int) -> tuple[float, float]:
    """CPU seconds of one forward + backward pass and of one forward pass, per image."""
    torch.manual_seed(0)
    model = ReIDModel(backbone, num_classes=10, input_size=(height, width)).eval()
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))

    def both() -> None:
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(leaf).square().sum(), leaf)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    out = []
    for work in (both, forward):
        work()  # warm-up
        start = time.process_time()
        for _ in range(rounds):
            work()
        out.append((time.process_time() - start) / rounds / batch)
    return out[0], out[1]


def measured(path: Path) -> dict:
    result = json.loads(path.read_text(encoding="utf-8"))
    c, queries = result["cost"], result["dataset"]["num_queries"]
    spent = c["cascade_forwards"] + c["cascade_backwards"]
    without = c["without_cascade_forwards"] + c["without_cascade_backwards"]
    return {
        "file": str(path),
        "version": result["protocol"]["version"],
        "queries": queries,
        "robust_mAP": result["robust"][0]["mAP"]["value"],
        "per_query": (c["per_query_forwards"], c["per_query_backwards"]),
        "cascade_per_query": (c["cascade_forwards"] / queries, c["cascade_backwards"] / queries),
        "without_cascade_per_query": (c["without_cascade_forwards"] / queries, c["without_cascade_backwards"] / queries),
        "saving": 1 - spent / without if without else 0.0,
        "seconds": c["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, nargs="*", default=[], help="robustness.json files of measured evaluations")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average at start {os.getloadavg()[0]:.2f}, 1 thread, torch {torch.__version__}")
    both, forward = rates(args.backbone, args.height, args.width, args.batch_size, args.rounds)
    print(
        f"{args.backbone} {args.height}x{args.width}: forward + backward {both * 1000:.1f} ms, forward {forward * 1000:.1f} ms of CPU per image"
    )
    rows = [measured(p) for p in args.result]
    if rows:
        print(
            "\n| evaluation | queries | robust mAP | passes / query (forward + backward) | cascade runs / query | same runs on every query | saving |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['version']} ({r['file']}) | {r['queries']} | {r['robust_mAP']:.2f} | {r['per_query'][0]:.0f} + {r['per_query'][1]:.0f} "
            f"| {r['cascade_per_query'][0]:.0f} + {r['cascade_per_query'][1]:.0f} "
            f"| {r['without_cascade_per_query'][0]:.0f} + {r['without_cascade_per_query'][1]:.0f} | {r['saving']:.0%} |"
        )
    print(f"\n| version | bound: passes / query (forward + backward) | Market-1501 ({MARKET_QUERIES} queries) | CPU hours here |")
    print("|---|---:|---:|---:|")
    bounds = {}
    for name in VERSIONS.names():
        f, b = bound(VERSIONS.get(name))
        bounds[name] = (f, b)
        hours = MARKET_QUERIES * (b * both + (f - b) * forward) / 3600
        print(f"| {name} | {f} + {b} | {MARKET_QUERIES * f / 1e6:.2f} M + {MARKET_QUERIES * b / 1e6:.2f} M | {hours:.1f} |")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(json.dumps({"rates": {"both": both, "forward": forward}, "measured": rows, "bounds": bounds, "args": vars(args)}, default=str))


if __name__ == "__main__":
    main()
