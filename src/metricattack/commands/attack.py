"""``metricattack attack``: write an adversarial copy of a dataset and evaluate clean vs adversarial.

Example (paper defaults: I-FGSM, ε = 5, α = 1, n = min(ε + 4, 1.25 ε), Euclidean metric)::

    metricattack attack --checkpoint runs/b1/model.safetensors --data-root data/Market-1501 \\
        --dataset market1501 --out runs/market-adv-b1 --method ifgsm --eps 5

The attack options (``--method``, ``--eps``, ``--method-option KEY=VALUE``, ``--objective``,
``--seed``, ``--threat``) are those of :mod:`metricattack.attack_options`; the method × threat
model pair, the models and the data are checked before the output folder is claimed.

Several ``--checkpoint`` / ``--model`` options attack their ensemble (mean of the per-model
metric losses); ``--model python:MODULE:FUNCTION`` or ``--model torchreid:resnet50 --weights FILE``
attack models from elsewhere (see :mod:`metricattack.model_options`).
The output folder has the source layout (attacked split as PNG), ``manifest.json`` and
``attack_results.json``; an interrupted run resumes when started again with the same options.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attack_options import add_attack_options, attack_spec
from ..attacks.engine import check_attack
from ..attacks.export import FILE_NAMES, ModelEntry, check_output_location, export_attack
from ..attacks.report import format_summary
from ..attacks.spec import AttackSpec, check_savable
from ..compute import add_compute_options, auto_batch_size, compute_of
from ..data.layouts import DATASETS
from ..distributed import is_main_process
from ..errors import MetricAttackError
from ..evaluation.checks import check_test_set
from ..evaluation.ranking import AP_CONVENTIONS
from ..io import sha256_file
from ..metrics.distance import MahalanobisMetric, Metric
from ..model_options import add_model_option, add_weights_option, model_sources
from ..models.sources import ModelSource

DEFAULT_BATCH = 32


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``attack`` parser."""
    parser = subparsers.add_parser(
        "attack",
        help="adversarial metric attack: write an attacked copy of a dataset and evaluate it",
        description="Attack the gallery (or query) of a dataset with one or more models and write it as a new dataset.",
    )
    parser.add_argument(
        "--checkpoint", type=Path, action="append", default=[], help="model checkpoint; repeat (or add --model) for an ensemble attack"
    )
    add_model_option(parser, repeatable=True)
    parser.add_argument(
        "--eval-checkpoint", type=Path, action="append", default=[], help="extra (black-box) model to evaluate on; repeatable"
    )
    add_model_option(parser, "--eval-model", repeatable=True)
    add_weights_option(parser)
    parser.add_argument("--data-root", type=Path, required=True, help="source dataset folder")
    parser.add_argument("--dataset", required=True, help=f"dataset layout: {', '.join(DATASETS)}")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (new or a previous run of the same attack, outside the source)"
    )
    add_attack_options(parser)
    parser.add_argument(
        "--metric",
        default="euclidean",
        help="euclidean, cosine, xqda / kissme (fitted beside each checkpoint), a metric .safetensors file, or a .npy PSD matrix [D, D]",
    )
    parser.add_argument("--ap", choices=AP_CONVENTIONS, default="market", help="AP convention (default market, as the paper)")
    parser.add_argument(
        "--file-names",
        choices=FILE_NAMES,
        default="source",
        help="attacked images are lossless PNG; 'source' (default) keeps every file name and extension "
        "(Market-1501 readers that list *.jpg load them), 'png' gives them a .png extension",
    )
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    add_compute_options(parser, batch_size=DEFAULT_BATCH, batch_help="images per attack batch (bounds memory)")
    parser.set_defaults(func=run, torchrun="group")


def resolve_metric(option: str, checkpoint: Path | None) -> tuple[Metric, dict[str, Any]]:
    """``--metric`` for one model (``checkpoint``: its file, see ``evaluate.resolve_metric``): names and
    metric files as ``evaluate``; ``.npy`` → PSD matrix (non-PSD is an error)."""
    path = Path(option)
    if path.suffix == ".npy":
        if not path.is_file():
            raise MetricAttackError(f"--metric {option}: matrix file does not exist")
        try:
            matrix = torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise MetricAttackError(f"--metric {option}: not a readable .npy matrix: {exc}") from None
        metric = MahalanobisMetric.from_matrix(matrix, on_non_psd="error", name=path.stem)
        return metric, {"name": path.stem, "file": str(path), "sha256": sha256_file(path)}
    from .evaluate import resolve_metric as resolve_named

    return resolve_named(option, checkpoint)


def _entries(
    sources: list[ModelSource], metric_option: str, device: str, shared: dict[str, Metric], spec: AttackSpec | None = None
) -> list[ModelEntry]:
    """Load each model with its metric (checked for the attack ``spec``, if given, else for evaluation);
    the same metric file or name gives one shared metric object."""
    entries = []
    for source in sources:
        metric, info = resolve_metric(metric_option, source.anchor)
        if spec is None:
            loaded = source.load(device)
        else:
            loaded = source.load(device, "attack", gradient=spec.build().uses_gradient)
        key = info.get("sha256", info["name"])
        metric = shared.setdefault(key, metric)
        entries.append(ModelEntry(loaded.model, metric, {**loaded.record, "metric": info}))
    return entries


def _refuse_same_models(attacked: list[ModelEntry], evaluated: list[ModelEntry]) -> None:
    """One model listed twice (the same checkpoint, or the same model spec and weights, by SHA-256)
    is refused: as an evaluation model it would report a white-box attack as a black-box transfer."""
    seen: dict[tuple[str, ...], str] = {}
    for role, entries in (("attacked", attacked), ("evaluated", evaluated)):
        for entry in entries:
            record = entry.record
            if "checkpoint" in record:
                identity: tuple[str, ...] = ("checkpoint", record["sha256"])
                what = f"the same checkpoint (SHA-256 {record['sha256'][:16]}...)"
            else:
                identity, what = ("model", record["model"], record.get("sha256", "")), "the same model and weights"
            here = f"{record['label']} ({role})"
            if identity in seen:
                raise MetricAttackError(
                    f"models {seen[identity]} and {here} are {what}, so its results would report a white-box attack as a "
                    "black-box transfer; list the model once"
                )
            seen[identity] = here


def run(args: argparse.Namespace) -> int:
    """Attack, export, evaluate; print the summary table."""
    from ..data.layouts import load_dataset

    spec = attack_spec(args)
    compute = compute_of(args)
    threat = check_attack([], args.threat, spec)  # the method x threat model pair, before loading anything (models: in export_attack)
    attack_sources = model_sources(args.checkpoint, args.model)
    if not attack_sources:
        raise MetricAttackError("give the model(s) to attack: --checkpoint FILE and/or --model SPEC (repeatable)")
    check_savable(spec)
    dataset = load_dataset(args.dataset, args.data_root)
    check_test_set(dataset)
    check_output_location(args.out, dataset.root, "--out")
    shared: dict[str, Metric] = {}
    attack_entries = _entries(attack_sources, args.metric, args.device, shared, spec)
    eval_entries = _entries(model_sources(args.eval_checkpoint, args.eval_model), args.metric, args.device, shared)
    _refuse_same_models(attack_entries, eval_entries)
    with compute.applied([e.model for e in attack_entries]):
        batch_size = auto_batch_size(
            args.batch_size, DEFAULT_BATCH, args.device, [e.model for e in attack_entries], dataset.split(threat.split), backward=True
        )
    results = export_attack(
        attack_entries,
        dataset,
        args.out,
        spec,
        args.threat,
        eval_models=eval_entries,
        metric_record={"option": args.metric, "per_model": [e.record["metric"] for e in attack_entries]},
        batch_size=batch_size,
        device=args.device,
        ap=args.ap,
        file_names=args.file_names,
        compute=compute,
    )
    if is_main_process():
        print(format_summary(results))
        print(f"adversarial dataset written to {args.out} (manifest.json, attack_results.json)")
    return 0
