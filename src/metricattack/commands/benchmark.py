"""``metricattack benchmark --config CONFIG``: reproduce the paper's tables and figures.

Runs (or resumes) every stage of the config into ``--out`` and writes ``results.json``,
``tables/*.md|csv``, ``figures/*.png`` and ``report.html`` there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..benchmark.config import BenchmarkConfig, load_benchmark_config
from ..benchmark.experiments import EXPERIMENTS
from ..errors import ConfigError
from ..outputs import check_output_folder, claim_output


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="run the paper's experiments and write results.json, tables, figures and report.html",
        description="Run every stage of CONFIG (cached and resumable) and write results.json, tables, figures "
        "and a self-contained report.html into --out.",
    )
    parser.add_argument("--config", required=True, type=Path, help="benchmark YAML, e.g. configs/quickstart.yaml")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--only", default=None, help=f"comma-separated experiments to run: {','.join(EXPERIMENTS)}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set attack.eps=8 or --set models.B4.train.seed=1 (list entries by index or name; repeatable)",
    )
    parser.set_defaults(func=run)


def _is_benchmark_run(folder: Path) -> bool:
    return (folder / "logs" / "stages.jsonl").is_file() or (folder / "results.json").is_file()


def _sources(cfg: BenchmarkConfig) -> list[Path]:
    """The dataset folder a run reads (none for the synthetic data it generates itself)."""
    if cfg.dataset.name == "synthetic" or cfg.dataset.root is None:
        return []
    from ..data.layouts import load_dataset

    return [load_dataset(cfg.dataset.name, cfg.dataset.root).root]


def run(args: argparse.Namespace) -> int:
    from ..benchmark.runner import run_benchmark

    only = [o.strip() for o in (args.only or "").split(",") if o.strip()]
    if args.only is not None and not only:
        raise ConfigError(f"--only {args.only!r} names no experiment; give some of {','.join(EXPERIMENTS)} or leave it out to run all")
    cfg = load_benchmark_config(args.config, args.overrides, only)
    out = args.out or Path("runs") / cfg.name
    check_output_folder("--out", out, command="benchmark", is_previous=_is_benchmark_run, inputs=[args.config], datasets=_sources(cfg))
    with claim_output(out, "benchmark"):
        results = run_benchmark(cfg, out, str(args.config))
    for row in results.table1 or []:
        print(f"{row.model:>6}  clean rank-1 {row.clean.rank1:6.2f}  mAP {row.clean.mAP:6.2f}  ({row.description})")
    chance = results.dataset.chance
    if results.table1 and chance is not None:
        print(f"{'chance':>6}  clean rank-1 {chance.rank1:6.2f}  mAP {chance.mAP:6.2f}  (a random ranking of this gallery, expected)")
    print(f"findings of the paper on this run ({results.provenance.ap_convention} AP):")
    for finding in [*results.findings, *results.further_findings]:
        print(f"  [{finding.status}] {finding.id}. {finding.title}")
    print(f"results: {out / 'results.json'}  tables: {out / 'tables'}  figures: {out / 'figures'}")
    print(f"report:  {out / 'report.html'} (open it in a browser)")
    return 0
