"""``metricattack universal``: train one universal perturbation δ on a dataset's training split.

Example (ε = 8, five passes over the training split, the identity objective)::

    metricattack universal --checkpoint runs/b1/model.safetensors --data-root data/Market-1501 \\
        --dataset market1501 --out runs/uap-b1 --eps 8

writes ``uap.safetensors`` (δ), ``uap.png`` (its picture) and ``uap.json`` (the record) into
``--out`` (see :mod:`metricattack.attacks.universal`); a killed run resumes from its last finished
epoch. Apply δ to any split with ``metricattack attack --method uap --method-option
file=OUT/uap.safetensors --eps 8 --threat query`` (or ``gallery``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..attacks.universal import DELTA_FILE, OBJECTIVES, UniversalConfig, train_universal
from ..compute import Compute, add_compute_options, auto_batch_size, compute_of
from ..data.layouts import DATASETS
from ..errors import ConfigError, MetricAttackError
from ..model_options import add_model_option, add_weights_option, model_sources


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``universal`` parser."""
    parser = subparsers.add_parser(
        "universal",
        help="train one universal perturbation on the training split (apply it with attack --method uap)",
        description="Train one L-inf perturbation delta on a dataset's training split with a metric objective "
        "(UAP-retrieval / MUAP style); apply it to any split with: metricattack attack --method uap --method-option file=OUT/" + DELTA_FILE,
    )
    parser.add_argument(
        "--checkpoint", type=Path, action="append", default=[], help="model checkpoint; repeat (or add --model) for an ensemble"
    )
    add_model_option(parser, repeatable=True)
    add_weights_option(parser)
    parser.add_argument("--data-root", type=Path, required=True, help="dataset folder (its training split is used)")
    parser.add_argument("--dataset", required=True, help=f"dataset layout: {', '.join(DATASETS)}")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new, or a previous run of the same training to resume)")
    fields = UniversalConfig.model_fields
    parser.add_argument("--eps", type=float, default=fields["eps"].default, help=f"{fields['eps'].description} (default %(default)s)")
    parser.add_argument("--objective", choices=OBJECTIVES, default=fields["objective"].default, help=fields["objective"].description)
    parser.add_argument(
        "--epochs", type=int, default=fields["epochs"].default, help=f"{fields['epochs'].description} (default %(default)s)"
    )
    parser.add_argument("--alpha", type=float, default=fields["alpha"].default, help=f"{fields['alpha'].description} (default %(default)s)")
    parser.add_argument("--mu", type=float, default=fields["mu"].default, help=f"{fields['mu'].description} (default %(default)s)")
    parser.add_argument(
        "--step-batch", type=int, default=fields["batch_size"].default, help=f"{fields['batch_size'].description} (default %(default)s)"
    )
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help=fields["size"].description)
    parser.add_argument("--seed", type=int, default=fields["seed"].default, help=fields["seed"].description)
    parser.add_argument("--metric", default="euclidean", help="attack metric, as in metricattack attack (default euclidean)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    add_compute_options(parser, batch_size=DEFAULT_BATCH, batch_help="images per batch of the clean feature extraction")
    parser.set_defaults(func=run)


DEFAULT_BATCH = 64
OPTION_OF = {"batch_size": "step_batch"}  # config field -> command-line option, where they differ


def config_of(args: argparse.Namespace) -> UniversalConfig:
    """The training config of the command line; ConfigError naming every bad option."""
    values: dict[str, Any] = {name: getattr(args, OPTION_OF.get(name, name)) for name in UniversalConfig.model_fields}
    values["size"] = tuple(args.size) if args.size else None
    try:
        return UniversalConfig.model_validate(values)
    except ValidationError as exc:
        problems = [f"--{OPTION_OF.get(str(e['loc'][0]), str(e['loc'][0])).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("; ".join(problems)) from None


def run(args: argparse.Namespace) -> int:
    """Train δ and print where it is and how to apply it."""
    from ..data.layouts import load_dataset
    from .attack import resolve_metric

    cfg = config_of(args)
    compute = compute_of(args)
    sources = model_sources(args.checkpoint, args.model)
    if not sources:
        raise MetricAttackError("give the model(s) to train against: --checkpoint FILE and/or --model SPEC (repeatable)")
    dataset = load_dataset(args.dataset, args.data_root)
    models, metrics, records = [], [], []
    for source in sources:
        metric, info = resolve_metric(args.metric, source.anchor)
        loaded = source.load(args.device)
        models.append(loaded.model)
        metrics.append(metric)
        records.append({**loaded.record, "metric": info})
    with compute.applied(models):
        batch_size = auto_batch_size(args.batch_size, DEFAULT_BATCH, args.device, models, dataset.train, backward=False)
    record = train_universal(
        models,
        metrics,
        dataset,
        args.out,
        cfg,
        model_records=records,
        metric_record={"option": args.metric},
        batch_size=batch_size,
        device=args.device,
        compute=compute,
    )
    print(format_record(record, args.out))
    return 0


def format_record(record: dict[str, Any], out: Path) -> str:
    """A few lines: δ's file, size and L∞, the objective per epoch, and the command that applies it."""
    delta, data, cfg = record["delta"], record["dataset"], record["config"]
    losses = ", ".join(f"{x:.4g}" for x in record["losses"])
    return "\n".join(
        [
            f"universal perturbation: {out / delta['file']} ({delta['shape'][1]}x{delta['shape'][2]}, "
            f"L-inf {delta['linf_255']:.2f}/255, eps {cfg['eps']:g}), picture {out / delta['picture']}"
            + ("" if (compute := Compute.model_validate(record.get("compute") or {})).is_default else f", compute: {compute.describe()}"),
            f"trained on {data['images']} training images of {data['identities']} identities ({data['name']}), "
            f"objective {cfg['objective']}, mean objective per epoch: {losses}",
            f"apply it: metricattack attack ... --method uap --method-option file={out / delta['file']} --eps {cfg['eps']:g} --threat query",
        ]
    )
