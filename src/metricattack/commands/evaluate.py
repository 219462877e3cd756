"""``metricattack evaluate``: CMC / mAP / mINP of a model checkpoint on a dataset's query and gallery.

Prints a table and, with ``--out``, writes JSON (atomically) with the results and their
provenance: checkpoint SHA-256, dataset fingerprint, metric (and its file's SHA-256), AP
convention, options and software versions.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..compute import add_compute_options, auto_batch_size, compute_of
from ..data.layouts import DATASETS
from ..distributed import is_main_process, rank_and_world
from ..errors import MetricAttackError
from ..evaluation.chance import dataset_chance
from ..evaluation.checks import check_test_set
from ..evaluation.features import evaluate_split_features, extract_features
from ..evaluation.ranking import AP_CONVENTIONS, TIE_RULES, RankingResult
from ..io import atomic_path, atomic_write_json, environment_versions, is_leftover_name, remove_leftovers, sha256_file
from ..metrics.distance import Metric, build_metric, load_metric, parameter_free_metrics
from ..metrics.learned import LEARNED_METRICS, load_for_checkpoint, metric_path
from ..model_options import add_model_option, add_weights_option, single_model_source
from ..outputs import check_output_file, check_output_folder, with_sidecars
from ..stages import StageCache, StageSpec
from ..wording import counted

AP_NAMES = {
    "market": "official Market-1501 trapezoidal AP",
    "noninterp": "non-interpolated AP (torchreid / fast-reid)",
}
RESULT_FORMAT = "metricattack.evaluation/1"
BASELINES = {"color-histogram-hsv": "hsv", "color-histogram-rgb": "rgb"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="rank-1/5/10/20, mAP and mINP of a model on a dataset",
        description="Extract query and gallery features with CHECKPOINT's model and report CMC, mAP and mINP.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="model checkpoint (.safetensors with .json sidecar)")
    add_model_option(source)
    source.add_argument(
        "--baseline",
        choices=sorted(BASELINES),
        help="evaluate a parameter-free baseline instead of a model: colour histograms of 6 stripes",
    )
    add_weights_option(parser)
    parser.add_argument("--data-root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--dataset", required=True, help=f"dataset layout: {', '.join(DATASETS)}")
    parser.add_argument(
        "--metric",
        default="euclidean",
        help="euclidean (squared, paper Eq. 3), cosine, xqda / kissme (the metric fitted beside the "
        "checkpoint or --weights file by `metricattack fit-metric`), or the path of a metric .safetensors file",
    )
    parser.add_argument(
        "--ap", choices=AP_CONVENTIONS, default="market", help="AP convention (default: market, the official Market-1501 evaluation's)"
    )
    parser.add_argument(
        "--ties",
        choices=list(TIE_RULES),
        default="expected",
        help="equal distances: expected = the expectation over their orders (default; a constant model scores chance), "
        "gallery-order = ranked by gallery index (torchreid / fast-reid parity on tie-free distances)",
    )
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries per distance chunk (bounds memory)")
    parser.add_argument("--device", default="cpu", help="torch device for feature extraction (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--out", type=Path, default=None, help="write results + provenance to this JSON file")
    parser.add_argument(
        "--features-cache", type=Path, default=None, help="folder to reuse extracted features from (keyed by checkpoint and dataset)"
    )
    add_compute_options(parser, batch_size=DEFAULT_BATCH, batch_help="feature extraction batch size")
    parser.set_defaults(func=run, torchrun="group")


def resolve_metric(spec: str, checkpoint: Path | None) -> tuple[Metric, dict[str, Any]]:
    """The metric named by ``--metric`` and a provenance record for it.

    ``checkpoint``: the model's file (checkpoint or ``--weights``) learned metrics are stored beside;
    ``None`` for a model without one (then a learned metric must be given as a file).
    """
    key = spec.lower()
    if key in parameter_free_metrics():
        return build_metric(key), {"name": key}
    if key in LEARNED_METRICS:
        if checkpoint is None:
            raise MetricAttackError(
                f"--metric {spec}: this model has no checkpoint or --weights file to find the {key} metric beside; "
                f"give the metric file written by `metricattack fit-metric --out FILE`"
            )
        path = metric_path(checkpoint, key)
        return load_for_checkpoint(checkpoint, key), {"name": key, "file": str(path), "sha256": sha256_file(path)}
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        metric = load_metric(path)
        return metric, {"name": metric.name, "file": str(path), "sha256": sha256_file(path)}
    raise MetricAttackError(
        f"unknown --metric {spec!r}: expected {', '.join(parameter_free_metrics() + LEARNED_METRICS.names())} "
        "or the path of a metric .safetensors file"
    )


FEATURES_FILE = "features.safetensors"
DEFAULT_BATCH = 64
# the packages the cached features come from (tests/test_stage_code.py)
CODE_FEATURES_CACHE = ("models", "data", "evaluation", "metrics", "compute")


def _read_features(path: Path, count: int) -> torch.Tensor | None:
    """Features ``[count, D]`` stored at ``path``, or None when the file is missing, unreadable or of another size."""
    try:
        feats = load_file(str(path)).get("features")
    except Exception:  # noqa: BLE001 - a damaged cache entry is simply recomputed
        return None
    return feats if feats is not None and feats.dim() == 2 and feats.shape[0] == count else None


def cached_features(cache: Path | None, key: dict[str, Any], compute: Callable[[], torch.Tensor], count: int) -> torch.Tensor:
    """``compute()`` features ``[count, D]``, or reuse those computed for ``key`` in the stage cache at ``cache``.

    One stage per ``key`` (checkpoint SHA-256, dataset fingerprint, split) and version of the
    model, data and evaluation code: ``<cache>/cache/features/<key>/features.safetensors``
    (:class:`~metricattack.stages.StageCache`); a damaged or mismatching file is recomputed.
    """
    if cache is None:
        return compute()
    found: dict[str, torch.Tensor] = {}

    def work(folder: Path) -> dict[str, Any]:
        found["features"] = compute()
        if is_main_process():
            with atomic_path(folder / FEATURES_FILE) as tmp:
                save_file({"features": found["features"].contiguous()}, str(tmp), metadata={k: str(v) for k, v in key.items()})
        return {"file": FEATURES_FILE, "rows": count}

    def valid(folder: Path, outputs: dict[str, Any]) -> bool:
        feats = _read_features(folder / str(outputs.get("file")), count)
        if feats is not None:
            found["features"] = feats
        return feats is not None

    spec = StageSpec("features", str(key.get("split", "")), key, code=CODE_FEATURES_CACHE)
    StageCache(cache).run(spec, work, valid=valid)
    return found["features"]


def is_features_cache(folder: Path) -> bool:
    """True when ``folder`` holds only what ``--features-cache`` writes (``cache/features/``,
    ``logs/stages.jsonl``, leftovers of killed writes), none of it a symbolic link: never a run
    folder of another command, whose ``cache/`` and ``logs/`` would get mixed with it."""
    layout = {folder: {"cache", "logs"}, folder / "cache": {"features"}, folder / "logs": {"stages.jsonl"}}
    for where, names in layout.items():
        if where != folder and (where.is_symlink() or (where.exists() and not where.is_dir())):
            return False
        if not where.is_dir():
            continue  # not made yet
        with os.scandir(where) as entries:
            if any(e.is_symlink() or not (e.name in names or is_leftover_name(e.name)) for e in entries):
                return False
    return True


def is_evaluation_result(path: Path) -> bool:
    """True when ``path`` is a results file written by ``metricattack evaluate --out``."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == RESULT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_outputs(args: argparse.Namespace, dataset_root: Path) -> None:
    """``--out`` and ``--features-cache`` before any work: never an input, never inside the dataset, writable."""
    files = [Path(args.metric)] if Path(args.metric).suffix in (".safetensors", ".npy") else []
    anchor = single_model_source(args).anchor if args.baseline is None else None  # the checkpoint or --weights file
    if anchor is not None:
        files += [anchor, *(metric_path(anchor, kind) for kind in LEARNED_METRICS)]
    inputs = with_sidecars(files)
    if args.out is not None:
        check_output_file(
            "--out",
            args.out,
            kind="metricattack evaluation results JSON",
            is_previous=is_evaluation_result,
            inputs=inputs,
            datasets=[dataset_root],
        )
    if args.features_cache is not None:
        check_output_folder(
            "--features-cache",
            args.features_cache,
            command="evaluate features cache",
            is_previous=is_features_cache,
            datasets=[dataset_root],
        )


def format_table(result: RankingResult, metric_name: str) -> str:
    """A small text table: rank-k, mAP, mINP in percent, and the AP convention."""
    heads = [f"rank-{k}" for k in result.cmc] + ["mAP", "mINP"]
    values = [100 * v for v in result.cmc.values()] + [100 * result.mAP, 100 * result.mINP]
    lines = [
        f"metric: {metric_name}   AP convention: {result.ap_convention} ({AP_NAMES[result.ap_convention]})",
        "  ".join(f"{h:>7s}" for h in heads),
        "  ".join(f"{v:7.2f}" for v in values),
        f"queries: {result.num_queries} ({result.num_valid_queries} with a valid match); ties: {result.tie_rule}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate; print the table; write ``--out`` JSON on the main process."""
    from ..data.layouts import dataset_fingerprint, load_dataset

    if args.chunk_size < 1:
        raise MetricAttackError(f"--chunk-size must be positive, got {args.chunk_size}")
    compute = compute_of(args)
    if args.baseline is not None:
        if args.metric.lower() not in parameter_free_metrics():
            raise MetricAttackError(f"--baseline works with --metric {' or '.join(parameter_free_metrics())}, not {args.metric!r}")
        from ..evaluation.baselines import ColorHistogramExtractor

        name = args.baseline
        metric, metric_info = build_metric(args.metric.lower()), {"name": args.metric.lower()}
        model: torch.nn.Module = ColorHistogramExtractor(BASELINES[args.baseline])
        ckpt_sha = f"baseline:{args.baseline}"
        model_record = None
    else:
        source = single_model_source(args)
        metric, metric_info = resolve_metric(args.metric, source.anchor)  # a bad --metric stops before any work
    dataset = load_dataset(args.dataset, args.data_root)
    check_test_set(dataset)
    _check_outputs(args, dataset.root)
    if args.baseline is None:
        loaded = source.load(args.device)
        model, model_record, name = loaded.model, loaded.record, source.label
        dim = getattr(model, "feature_dim", None)
        if metric.feature_dim is not None and dim is not None and metric.feature_dim != dim:
            raise MetricAttackError(
                f"metric {args.metric} expects {metric.feature_dim}-d features but the model in {source.checkpoint or name} gives "
                f"{dim}-d features; fit the metric for this model (metricattack fit-metric)"
            )
        # the features cache key: a checkpoint's SHA-256, or the model spec with its weights' (or module file's) SHA-256
        ckpt_sha = model_record["sha256"] if "checkpoint" in model_record else f"{model_record['model']}:{model_record['sha256']}"
    fingerprint = dataset_fingerprint(dataset)
    start = time.perf_counter()
    feats = {}
    with compute.applied([model]):
        batch_size = auto_batch_size(args.batch_size, DEFAULT_BATCH, args.device, [model], dataset.gallery, backward=False)
        for split in ("query", "gallery"):
            records = dataset.split(split)
            feats[split] = cached_features(
                args.features_cache,
                {"checkpoint_sha256": ckpt_sha, "dataset_fingerprint": fingerprint, "split": split},
                functools.partial(extract_features, model, records, batch_size=batch_size, device=args.device),
                len(records),
            )
    result = evaluate_split_features(
        feats["query"], feats["gallery"], dataset, metric, ap=args.ap, chunk_size=args.chunk_size, ties=args.ties
    )
    seconds = time.perf_counter() - start
    if not is_main_process():
        return 0
    print(
        f"{dataset.name}: {counted(len(dataset.query), 'query', 'queries')}, {counted(len(dataset.gallery), 'gallery image')}, model {name}"
        + ("" if compute.is_default else f", compute: {compute.describe()}")
    )
    print(format_table(result, metric_info["name"]))
    chance = dataset_chance(dataset, args.ap)
    print(f"chance level (a random ranking of this gallery): rank-1 {100 * chance.cmc[1]:.2f}  mAP {100 * chance.mAP:.2f}")
    if args.out is not None:
        remove_leftovers(args.out.parent, prefix=f".{args.out.name}.", recursive=False)
        atomic_write_json(
            args.out,
            {
                "format": RESULT_FORMAT,
                "results": result.to_dict(),
                "chance": chance.to_dict(),
                "metric": metric_info,
                "checkpoint": {"path": model_record["checkpoint"], "sha256": model_record["sha256"]}
                if model_record is not None and "checkpoint" in model_record
                else None,
                "model": model_record,
                "baseline": args.baseline,
                "dataset": {
                    "name": args.dataset,
                    "root": str(args.data_root),
                    "fingerprint": fingerprint,
                    "num_query": len(dataset.query),
                    "num_gallery": len(dataset.gallery),
                },
                "options": {
                    "ap": args.ap,
                    "ties": args.ties,
                    "batch_size": batch_size,
                    "chunk_size": args.chunk_size,
                    "device": args.device,
                    "world_size": rank_and_world()[1],
                    "compute": compute.record(),
                },
                "seconds": round(seconds, 3),
                "versions": environment_versions(),
            },
        )
        print(f"results written to {args.out}")
    return 0
