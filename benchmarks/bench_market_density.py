"""Project the cost of ``configs/synthetic/market-density.yaml`` from a run of it at a fraction of its size (issue 24).

Runs ``metricattack benchmark`` on the config with its synthetic dataset's counts scaled by
``--fraction`` and every model trained for one epoch (``--set`` overrides, printed), into ``--out``,
and logs every stage that runs with its wall time, process CPU time and the load average
(``OUT/stage-times.jsonl``; a rerun resumes the benchmark and logs only the stages it ran).
Then it scales each stage to the full config by what its work is proportional to, counted from
the two datasets' plans (no image drawn):

* dataset: images drawn;
* model: training images x the full recipe's epochs (one epoch measured);
* features: query + gallery images;
* attack, adv_features: attacked gallery images (the gallery of the test identities);
* the rest of the run (opening the dataset, rankings, findings, report): query x gallery images,
  an upper bound (the rankings are the only part above linear).

CPU time at one thread is the comparable number on a shared machine (the wall time there measures
the load); ``--speedup`` divides the projected model work (every stage but the dataset, which
draws in one thread) by a 2-thread-on-a-quiet-machine factor measured elsewhere.

Usage (one thread, low priority)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -u benchmarks/bench_market_density.py --fraction 0.1 --out /tmp/md-tenth
    .venv/bin/python benchmarks/bench_market_density.py --out /tmp/md-tenth --project-only --speedup 2.5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from metricattack import stages
from metricattack.benchmark.config import BenchmarkConfig, load_benchmark_config
from metricattack.cli import main
from metricattack.data.synthetic import SynthConfig, plan

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic" / "market-density.yaml"
SCALED = ("num_train_ids", "num_test_ids", "train_images", "query_images", "gallery_images", "num_distractors", "num_junk")
LOG = "stage-times.jsonl"


def overrides(cfg: BenchmarkConfig, fraction: float) -> list[str]:
    """``--set`` values: the synthetic counts times ``fraction``, one epoch per model (no warm-up, no step)."""
    synth = cfg.dataset.synthetic
    assert synth is not None, "the config must use a synthetic dataset"
    sets = [f"dataset.synthetic.{name}={round(getattr(synth, name) * fraction)}" for name in SCALED if getattr(synth, name)]
    sets += [f"models.{m.name}.train.schedule={{epochs: 1, warmup_epochs: 0, lr_steps: []}}" for m in cfg.models]
    return sets


def counts(synth: SynthConfig) -> dict[str, int]:
    """Images drawn, training images, query + gallery images, attacked gallery images, query x gallery."""
    split = {"train": 0, "query": 0, "gallery": 0, "attacked": 0}
    jobs = plan(synth)
    for job in jobs:
        folder = job.relpath.split("/", 1)[0]
        kind = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}[folder]
        split[kind] += 1
        split["attacked"] += kind == "gallery" and job.pid > 0
    return {
        "drawn": len(jobs),
        "train": split["train"],
        "features": split["query"] + split["gallery"],
        "attacked": split["attacked"],
        "pairs": split["query"] * split["gallery"],
    }


def run(config: Path, fraction: float, out: Path) -> None:
    """The scaled benchmark, every stage that runs logged to ``out / LOG``."""
    cfg = load_benchmark_config(config)
    sets = overrides(cfg, fraction)
    print("overrides:", " ".join(f"--set '{s}'" for s in sets), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / LOG
    original = stages.StageCache._work

    def timed(self: stages.StageCache, spec: stages.StageSpec, marker: Path, work: Any) -> Any:
        wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        result = original(self, spec, marker, work)
        record = {"kind": spec.kind, "name": spec.label, "wall": round(time.perf_counter() - wall, 3)}
        record.update(cpu=round(time.process_time() - cpu, 3), load_before=load, load_after=os.getloadavg()[0], threads=spec.threads)
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return result

    stages.StageCache._work = timed  # type: ignore[method-assign]
    wall, cpu = time.perf_counter(), time.process_time()
    main(["benchmark", "--config", str(config), "--out", str(out / "run"), "--no-progress", *(a for s in sets for a in ("--set", s))])
    with log.open("a", encoding="utf-8") as f:
        total = {"wall": round(time.perf_counter() - wall, 3), "cpu": round(time.process_time() - cpu, 3)}
        f.write(json.dumps({"kind": "TOTAL", **total, "load": os.getloadavg()[0]}) + "\n")


def project(config: Path, fraction: float, out: Path, speedup: float) -> None:
    """Print each logged stage scaled to the full config (markdown table) and the totals."""
    cfg = load_benchmark_config(config)
    full_synth = cfg.dataset.synthetic
    assert full_synth is not None
    small = counts(load_benchmark_config(config, overrides(cfg, fraction)).dataset.synthetic)  # type: ignore[arg-type]
    full = counts(full_synth)
    epochs = {m.name: m.train.schedule.epochs for m in cfg.models if m.train is not None}
    per = {"dataset": "drawn", "model": "train", "features": "features", "attack": "attacked", "adv_features": "attacked"}
    records = [json.loads(line) for line in (out / LOG).read_text(encoding="utf-8").splitlines()]
    rows, pending, rest, finished = [], 0.0, 0.0, False
    for r in records:
        if r["kind"] == "TOTAL":  # one per finished invocation: its CPU beside the stages it logged
            rest, pending, finished = rest + r["cpu"] - pending, 0.0, True
            continue
        unit = per.get(r["kind"], "train")
        factor = full[unit] / small[unit] * (epochs[r["name"]] if r["kind"] == "model" else 1)
        rows.append((f"{r['kind']} {r['name']}", r["cpu"], r["wall"], r["load_before"], factor, r["cpu"] * factor))
        pending += r["cpu"]
    if finished:  # the run's own work beside its stages (unknown before an invocation has finished)
        pairs = full["pairs"] / small["pairs"]
        rows.append(("rest of the run (dataset scan, rankings, findings, report)", rest, None, None, pairs, rest * pairs))
    print("| stage | CPU s | wall s | load | x | projected CPU s |\n|---|---:|---:|---:|---:|---:|")
    for name, cpu, wall, load, factor, projected in rows:
        print(
            f"| {name} | {cpu:.1f} | {'' if wall is None else f'{wall:.0f}'} | {'' if load is None else f'{load:.1f}'} | {factor:.1f} | {projected:,.0f} |"
        )
    total = sum(r[5] for r in rows)
    drawn = sum(r[5] for r in rows if r[0].startswith("dataset"))
    print(f"\nprojected CPU at one thread: {total:,.0f} s = {total / 3600:.2f} h (counts full/scaled: {full} / {small})")
    if speedup != 1.0:
        two = drawn + (total - drawn) / speedup
        print(f"projected wall at 2 threads on a quiet machine (model work / {speedup:g}): {two:,.0f} s = {two / 3600:.2f} h")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--fraction", type=float, default=0.1, help="scale of the dataset's counts (default 0.1)")
    parser.add_argument("--out", type=Path, required=True, help="work folder (the run in OUT/run, the log in OUT/stage-times.jsonl)")
    parser.add_argument("--project-only", action="store_true", help="only print the projection of OUT's log")
    parser.add_argument("--speedup", type=float, default=1.0, help="2-thread quiet-machine factor for the model work")
    args = parser.parse_args()
    if not args.project_only:
        run(args.config, args.fraction, args.out)
    project(args.config, args.fraction, args.out, args.speedup)


if __name__ == "__main__":
    cli()
