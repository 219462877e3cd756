"""The robustness protocol (fast and standard) on every model of a benchmark config: one table per version.

For each version and model, runs the benchmark's robustness experiment alone on that model
(``metricattack benchmark --only robustness``; the models and the experiment's stages are cached,
so a killed measurement resumes at its first unfinished attack run) in a child process, and
records the child's CPU seconds (user + system) in ``<out>/robustness-demo-cpu.json`` (one entry
per invocation: a resumed model sums its entries). Then prints, per version, every model's clean
mAP, robust mAP at each ε with its interval, the reference attacks' mAP at that ε, chance, each
check's status, the decisive-attack counts and the CPU seconds, as markdown.

Run (1 thread: the caller sets OMP_NUM_THREADS=1)::

    python benchmarks/bench_robustness_demo.py --config configs/quickstart.yaml --out runs/demo --queries 6
    python benchmarks/bench_robustness_demo.py ... --table-only     # the tables from what is measured
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

MODELS = ["B1", "B2", "B3", "B4", "HACNN", "Mancs"]
CPU_FILE = "robustness-demo-cpu.json"


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(config: str, out: Path, version: str, model: str, queries: int) -> None:
    """One benchmark invocation (robustness of ``model`` under ``version`` on ``queries`` queries); its CPU appended."""
    before = child_cpu()
    command = [sys.executable, "-m", "metricattack", "benchmark", "--config", config, "--out", str(out), "--only", "robustness"]
    for option in (f"version={version}", f"models=[{model}]", f"queries={queries}"):
        command += ["--set", f"experiments.robustness.{option}"]
    log = out / f"robustness-demo-{version}-{model}-q{queries}.log"
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    path = out / CPU_FILE
    cpu = json.loads(path.read_text()) if path.is_file() else {}
    cpu.setdefault(f"{version}/{model}/{queries}", []).append(round(child_cpu() - before, 1))
    path.write_text(json.dumps(cpu, indent=1))
    if code:
        raise SystemExit(f"the benchmark failed for {version} {model} (exit {code}): see {log}")


def results(out: Path, queries: int) -> dict[tuple[str, str], dict[str, Any]]:
    """(version, model) → robustness.json of the stages in ``out`` evaluated on ``queries`` queries."""
    found = {}
    for path in sorted((out / "cache" / "robustness").glob("*/robustness.json")):
        r = json.loads(path.read_text())
        if r["dataset"]["num_queries"] == queries:
            found[(r["protocol"]["version"], r["model"]["name"])] = r
    return found


def table(version: str, models: list[str], found: dict[tuple[str, str], dict[str, Any]], cpu: dict[str, list[float]], queries: int) -> str:
    def interval(e: dict[str, float]) -> str:
        return f"{e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"

    lines = [
        "| model | clean mAP | ε | robust mAP | FGSM | I-FGSM | MI-FGSM | PGD | chance | checks flagged | decisive | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for model in models:
        r = found.get((version, model))
        if r is None:
            lines.append(f"| {model} | not measured | | | | | | | | | | |")
            continue
        flagged = [f["name"] for f in r["flags"] if f["status"] != "ok"]
        statuses = ", ".join(f"{f['name']} {f['status']}" for f in r["flags"] if f["status"] != "ok") or "none"
        seconds = sum(cpu.get(f"{version}/{model}/{queries}", []))
        for i, row in enumerate(r["robust"]):
            refs = row.get("references") or (r["references"] if i == 0 else {})
            decisive = ", ".join(f"{k} {v}" for k, v in row["decisive"].items() if v)
            lines.append(
                "| "
                + " | ".join(
                    [
                        model if i == 0 else "",
                        interval(r["clean"]) if i == 0 else "",
                        f"{row['eps']:g}",
                        interval(row["mAP"]),
                        *(f"{refs[m]:.2f}" if m in refs else "–" for m in ("fgsm", "ifgsm", "mifgsm", "pgd")),
                        f"{r['chance_mAP']:.2f}" if i == 0 else "",
                        (statuses if flagged else "none") if i == 0 else "",
                        decisive,
                        f"{seconds:.0f}" if i == 0 else "",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--queries", type=int, required=True, help="evenly spaced queries (the experiment's `queries`)")
    parser.add_argument("--versions", nargs="+", default=["fast", "standard"])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--table-only", action="store_true", help="print the tables of what is measured, run nothing")
    args = parser.parse_args()
    if not args.table_only:
        for version in args.versions:
            for model in args.models:
                run_one(args.config, args.out, version, model, args.queries)
    found = results(args.out, args.queries)
    path = args.out / CPU_FILE
    cpu = json.loads(path.read_text()) if path.is_file() else {}
    for version in args.versions:
        print(f"\n{version} protocol, {args.queries} queries (CPU s: the child processes, user + system)\n")
        print(table(version, args.models, found, cpu, args.queries))


if __name__ == "__main__":
    main()
