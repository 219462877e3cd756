"""``metricattack robustness``: one trustworthy robustness number for a re-ID model.

Example (the standard protocol at ε = 8/255; ``--version fast`` for a quick look)::

    metricattack robustness --checkpoint runs/b1/model.safetensors --data-root data/Market-1501 \\
        --dataset market1501 --out runs/b1-robustness

The protocol (:mod:`metricattack.robustness.protocol`) attacks every query image with a cascade of
APGD and Square attacks against the clean gallery and keeps, per query, the lowest AP any attack
reached; the checks of :mod:`metricattack.robustness.flags` say when that number may overstate
robustness. Apart from that headline, the gallery-side figure (:mod:`metricattack.robustness.gallery`:
the gallery images attacked by APGD on the paper's metric loss, every query clean). ``--eps`` and ``--seed`` are the shared attack options
(:func:`metricattack.attack_options.add_attack_options`); the methods and their budgets are the
protocol's. The output folder holds ``robustness.json`` (every attack, check and cost; schema in
``docs/robustness-schema.md``), ``evidence.safetensors`` (per-query APs and rank-1 hits) and
``runs/`` (one record per finished attack run, and per finished batch of the gallery side: a killed
evaluation resumes from there). Under ``torchrun`` every attack run's queries, and the gallery side's
batches, are split over the processes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..attack_options import add_attack_options
from ..compute import Compute, add_compute_options, auto_batch_size, compute_of
from ..data.layouts import DATASETS
from ..distributed import is_main_process
from ..errors import MetricAttackError
from ..evaluation.checks import check_test_set
from ..evaluation.ranking import AP_CONVENTIONS
from ..io import atomic_write_json
from ..model_options import add_model_option, add_weights_option, single_model_source
from ..outputs import check_output_folder, claim_output
from ..robustness.evaluate import IDENTITY
from ..robustness.protocol import VERSIONS
from ..robustness.result import RobustnessResult

RESULT_FILE, EVIDENCE_FILE, RUNS = "robustness.json", "evidence.safetensors", "runs"
DEFAULT_BATCH = 32


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``robustness`` parser."""
    parser = subparsers.add_parser(
        "robustness",
        help="robust mAP of a model: the worst case per query over an attack cascade, with checks for gradient masking",
        description="Attack every query with the protocol's cascade (APGD on the metric loss, the targeted ranking margin and the "
        "self-referenced loss, then Square), keep the lowest AP per query, and report robust mAP and rank-1 with bootstrap "
        "intervals, the checks (never weaker, eps sweep, convergence, black box, zero gradient, randomness) and the cost; apart "
        "from it, the gallery-side figure (the gallery attacked by APGD on the paper's metric loss, every query clean).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="model checkpoint (.safetensors with .json sidecar)")
    add_model_option(source)
    add_weights_option(parser)
    parser.add_argument("--data-root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--dataset", required=True, help=f"dataset layout: {', '.join(DATASETS)}")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (new, or an unfinished evaluation of the same model to resume)"
    )
    parser.add_argument(
        "--version", choices=VERSIONS, default="standard", help="protocol version (default standard; fast for the demo and CI)"
    )
    add_attack_options(parser, method=False, eps=8.0)
    parser.add_argument(
        "--metric", default="euclidean", help="euclidean (default), cosine, xqda / kissme (fitted beside the checkpoint) or a metric file"
    )
    parser.add_argument("--ap", choices=AP_CONVENTIONS, default="market", help="AP convention (default market)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    add_compute_options(parser, batch_size=DEFAULT_BATCH, batch_help="query images per attack batch (bounds memory)")
    parser.set_defaults(func=run, torchrun="group")


def _is_previous(folder: Path) -> bool:
    return (folder / RUNS / IDENTITY).is_file()


def _compute(result: RobustnessResult) -> str:
    """``, compute: bf16`` when the model ran other than in the default fp32."""
    compute = Compute.model_validate(result.provenance.get("compute") or {})
    return "" if compute.is_default else f", compute: {compute.describe()}"


def format_result(result: RobustnessResult) -> str:
    """The plain-text summary ``metricattack robustness`` prints."""
    lines = [
        f"robustness ({result.protocol.version} protocol, query attack against the clean gallery, {result.metric} distance, "
        f"{result.dataset.num_valid_queries} queries with a true match{_compute(result)})",
        f"  clean mAP {result.clean.value:.2f} [{result.clean.low:.2f}, {result.clean.high:.2f}]   chance mAP {result.chance_mAP:.2f}",
    ]
    for row in result.robust:
        lines.append(
            f"  eps {row.eps:g}/255: robust mAP {row.mAP.value:.2f} [{row.mAP.low:.2f}, {row.mAP.high:.2f}]   "
            f"robust rank-1 {row.rank1.value:.2f} [{row.rank1.low:.2f}, {row.rank1.high:.2f}]"
        )
    head = result.headline
    lines.append(f"  cascade at eps {head.eps:g} (each run on the queries still above chance AP):")
    lines.append(f"    {'attack':<15} {'run':>3} {'attacked':>8} {'lowered':>7} {'mAP after':>9} {'forward':>9} {'backward':>9}")
    for a in head.attacks:
        lines.append(f"    {a.attack:<15} {a.run:>3} {a.attacked:>8} {a.lowered:>7} {a.mAP_after:>9.2f} {a.forwards:>9} {a.backwards:>9}")
    decisive = ", ".join(f"{k} {v}" for k, v in head.decisive.items() if v)
    lines.append(f"  decisive (queries whose lowest AP each set): {decisive}")
    for row in result.robust:
        lines.append(f"  reference attacks at eps {row.eps:g} (mAP): {', '.join(f'{k} {v:.2f}' for k, v in row.references.items())}")
    if (g := result.gallery) is not None:
        budget = "every eligible image" if g.top_k is None else f"those in the clean top {g.top_k} of a query of their identity"
        lines.append(
            f"  gallery side at eps {g.eps:g}/255 (queries clean; {g.method} on the paper's metric loss, {g.steps} iterations, "
            f"{g.attacked} of {g.eligible} eligible gallery images attacked: {budget}):"
        )
        lines.append(
            f"    mAP {g.mAP.value:.2f} [{g.mAP.low:.2f}, {g.mAP.high:.2f}]   rank-1 {g.rank1.value:.2f} [{g.rank1.low:.2f}, {g.rank1.high:.2f}]"
            "   reference attacks (mAP): " + ", ".join(f"{k} {v:.2f}" for k, v in g.references.items())
        )
    lines.append("  checks:")
    for f in result.flags:
        lines.append(f"    [{f.status}] {f.name}: {f.summary}")
    c = result.cost
    saved = 1 - (c.cascade_forwards + c.cascade_backwards) / max(c.without_cascade_forwards + c.without_cascade_backwards, 1)
    lines.append(
        f"  cost: {c.per_query_forwards:.0f} forward + {c.per_query_backwards:.0f} backward passes per query "
        f"({c.forwards} + {c.backwards} in all, checks included; the cascade skipped {saved:.0%} of its passes), {c.seconds:.0f} s"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write robustness.json and the evidence, print the summary."""
    from ..benchmark.evidence import save_evidence
    from ..data.layouts import load_dataset
    from ..robustness.evaluate import run_protocol
    from .evaluate import resolve_metric

    compute = compute_of(args)
    if args.eps < 1:
        raise MetricAttackError(f"--eps {args.eps:g}: adversarial queries are 8-bit images (a pixel moves in steps of 1); use at least 1")
    source = single_model_source(args)
    dataset = load_dataset(args.dataset, args.data_root)
    check_test_set(dataset)
    out = check_output_folder("--out", args.out, command="robustness", is_previous=_is_previous, datasets=[dataset.root])
    metric, metric_info = resolve_metric(args.metric, source.anchor)
    loaded = source.load(args.device)
    record = {**loaded.record, "metric": metric_info}
    protocol = VERSIONS.get(args.version).model_copy(update={"seed": args.seed})
    with compute.applied([loaded.model]):
        batch_size = auto_batch_size(args.batch_size, DEFAULT_BATCH, args.device, [loaded.model], dataset.query, backward=True)
    with claim_output(out, "robustness"):
        result, evidence = run_protocol(
            loaded.model,
            dataset,
            eps=args.eps,
            protocol=protocol,
            metric=metric,
            ap=args.ap,
            batch_size=batch_size,
            device=args.device,
            records=out / RUNS,
            model_record=record,
            progress=True,
            compute=compute,
        )
        if is_main_process():
            atomic_write_json(out / RESULT_FILE, result.model_dump(mode="json"))
            save_evidence(out / EVIDENCE_FILE, evidence)
            print(format_result(result))
            print(f"written to {out} ({RESULT_FILE}, {EVIDENCE_FILE})")
    return 0
