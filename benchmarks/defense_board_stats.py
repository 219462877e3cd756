"""The defense leaderboard's verdict in numbers: each defense beyond the paper against the paper's
metric-preserving model, from a finished benchmark run (``results.json`` + its evidence file).

Per ε: both marginal robust-mAP intervals (the leaderboard's), the paired difference over the same
queries with its interval (the report's bootstrap: same resamples, seed and draws), the clean-mAP
drop, and how many queries would make the two marginal intervals stop overlapping if the gap and the
per-query spread stayed as measured: the half-widths that must fit into the gap shrink as
1/sqrt(queries), so ``queries × ((lower half-width of the defense + upper half-width of the paper's)
/ gap)²``. Prints one line per defense and ε.

    python benchmarks/defense_board_stats.py RUN      # RUN: the benchmark's --out folder
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from metricattack.benchmark.evidence import Bootstrap, load_evidence
from metricattack.benchmark.experiments.defenses import MAX_CLEAN_DROP, robust_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a benchmark run folder with results.json and the defense leaderboard")
    args = parser.parse_args()
    results = json.loads((args.run / "results.json").read_text(encoding="utf-8"))
    board, info = results["defenses"], results["evidence"]
    if board is None or board["status"] != "ok":
        raise SystemExit(f"{args.run / 'results.json'}: no defense leaderboard in this run")
    vectors = load_evidence(args.run / info["file"])
    boot = Bootstrap(vectors, info["resamples"], info["seed"], info["confidence"])
    paper = next((e for e in board["entries"] if e["paper"]), None)
    if paper is None:
        raise SystemExit("the leaderboard has no metric-preserving model to compare with")
    print(
        f"{'model':<14} {'eps':>4} {'robust [interval]':>24} {'paper [interval]':>24} {'paired diff [interval]':>26} {'drop':>6}  overlap  queries to separate"
    )
    for entry in board["entries"]:
        if entry["method"] is None or entry["paper"]:
            continue
        for eps in board["epsilons"]:
            own, ref = boot.mAP(robust_key(entry["model"], "query", eps)), boot.mAP(robust_key(paper["model"], "query", eps))
            queries = int(np.isfinite(vectors[robust_key(entry["model"], "query", eps)]).sum())
            (lo, hi), (plo, phi), diff = boot.interval(own), boot.interval(ref), own - ref
            dlo, dhi = boot.interval(diff)
            gap = float(diff[0])
            need = "never (not ahead)" if gap <= 0 else f"{math.ceil(queries * (((own[0] - lo) + (phi - ref[0])) / gap) ** 2)}"
            print(
                f"{entry['model']:<14} {eps:>4g} {own[0]:>8.2f} [{lo:6.2f}, {hi:6.2f}] {ref[0]:>8.2f} [{plo:6.2f}, {phi:6.2f}]"
                f" {gap:>+9.2f} [{dlo:+6.2f}, {dhi:+6.2f}] {100 * entry['clean_drop']:>5.1f}%"
                f"  {'yes' if lo <= phi else 'no ':<7}  {need} (now {queries}; clean drop ok: {entry['clean_drop'] <= MAX_CLEAN_DROP})"
            )


if __name__ == "__main__":
    main()
