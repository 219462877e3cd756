"""Learned Mahalanobis metrics by name (XQDA, KISSME), fitted for a checkpoint and stored beside it.

:data:`LEARNED_METRICS` maps a kind to its fitter ``fit(features [N, D], pids [N], camids [N] | None,
**options) -> LearnedFit`` (:func:`~metricattack.metrics.xqda.fit_xqda`,
:func:`~metricattack.metrics.kissme.fit_kissme`; the shared statistics are in
:mod:`metricattack.metrics.pairs`). Files live beside the model:
``<checkpoint stem>.<kind>.safetensors`` plus ``<checkpoint stem>.<kind>.json``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.layouts import dataset_fingerprint, load_dataset
from ..data.types import DISTRACTOR_PID, JUNK_PID
from ..distributed import barrier, is_main_process, rank_and_world
from ..errors import MetricAttackError
from ..evaluation.features import extract_features
from ..io import remove_leftovers, sha256_file
from ..models.sources import ModelSource
from ..outputs import check_output_file, with_sidecars
from ..registry import Registry
from .distance import MahalanobisMetric, is_metric_file, load_metric, save_metric, sidecar_path
from .kissme import fit_kissme
from .pairs import LearnedFit, check_dim, check_on_non_psd
from .xqda import fit_xqda

Fitter = Callable[..., LearnedFit]

LEARNED_METRICS: Registry[Fitter] = Registry("learned metric")
"""Learned metric kind → fitter ``(features, pids, camids=None, *, options...) -> LearnedFit``."""
LEARNED_METRICS.register("xqda", fit_xqda)
LEARNED_METRICS.register("kissme", fit_kissme)


def _check_option_names(kind: str, options: dict[str, Any]) -> Fitter:
    """The fitter of ``kind``; MetricAttackError when ``options`` holds a keyword it does not take."""
    fitter = LEARNED_METRICS.get(kind)
    accepted = [p.name for p in inspect.signature(fitter).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise MetricAttackError(f"{kind} does not take option(s) {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return fitter


def check_fit_options(kind: str, input_dim: int | None, options: dict[str, Any]) -> None:
    """Validate the options of :func:`fit_learned` for ``input_dim``-d features before any feature is extracted
    (``None``: a model without ``feature_dim``; the fit checks ``dim`` against the features)."""
    _check_option_names(kind, options)
    if input_dim is not None:
        check_dim(options.get("dim"), input_dim)
    check_on_non_psd(options.get("on_non_psd", "project"))
    reg = options.get("reg", 0.0)
    if not (isinstance(reg, int | float) and 0 <= reg < float("inf")):
        raise MetricAttackError(f"{kind} regulariser reg must be a finite number >= 0, got {reg}")


def metric_path(checkpoint: str | Path, kind: str) -> Path:
    """Where the ``kind`` metric of ``checkpoint`` lives: ``<stem>.<kind>.safetensors`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.{kind}.safetensors")


def fit_learned(
    kind: str,
    features: torch.Tensor | np.ndarray,
    pids: torch.Tensor | np.ndarray | list[int],
    camids: torch.Tensor | np.ndarray | list[int] | None = None,
    **options: Any,
) -> LearnedFit:
    """Fit the learned metric ``kind`` (a :data:`LEARNED_METRICS` name) on ``features [N, D]``.

    ``options`` are the keyword arguments of :func:`~metricattack.metrics.xqda.fit_xqda` or
    :func:`~metricattack.metrics.kissme.fit_kissme` (``dim``, ``reg``, ``cross_camera``, ``on_non_psd``).
    """
    return _check_option_names(kind, options)(features, pids, camids, **options)


def fit_learned_metric(
    kind: str,
    features: torch.Tensor | np.ndarray,
    pids: torch.Tensor | np.ndarray | list[int],
    camids: torch.Tensor | np.ndarray | list[int] | None = None,
    **options: Any,
) -> MahalanobisMetric:
    """The :class:`MahalanobisMetric` of :func:`fit_learned` (projection ``[D, k]``)."""
    return fit_learned(kind, features, pids, camids, **options).metric


def save_learned_metric(fit: LearnedFit, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``fit.metric`` to ``path`` (``.safetensors``) + JSON sidecar with ``fit.info`` and ``provenance``."""
    meta = {"learned_metric": {"kind": fit.kind, "input_dim": int(fit.basis.shape[0]), "fit": fit.info}}
    return save_metric(fit.metric, path, {**meta, **(provenance or {})})


def load_learned_metric(path: str | Path, feature_dim: int | None = None) -> MahalanobisMetric:
    """Load a learned metric file; with ``feature_dim``, refuse one fitted on features of another size."""
    metric = load_metric(path)
    if not isinstance(metric, MahalanobisMetric):
        raise MetricAttackError(f"metric file {path} holds a {metric.kind!r} metric, expected a learned Mahalanobis metric")
    if feature_dim is not None and metric.feature_dim != feature_dim:
        raise MetricAttackError(
            f"metric file {path} was fitted on {metric.feature_dim}-d features but the model gives "
            f"{feature_dim}-d features; fit it again for this model (metricattack fit-metric)"
        )
    return metric


def load_for_checkpoint(checkpoint: str | Path, kind: str, feature_dim: int | None = None) -> MahalanobisMetric:
    """Load the ``kind`` metric saved beside ``checkpoint`` (see :func:`metric_path`).

    A metric fitted for other weights (``checkpoint`` retrained or replaced in place: its SHA-256
    differs from the one the metric's sidecar records) is refused: its projection was learned on
    another model's features.
    """
    path = metric_path(checkpoint, kind)
    refit = f"`metricattack fit-metric --checkpoint {checkpoint} --kind {kind} ...`"
    if not path.is_file():
        raise MetricAttackError(f"no {kind} metric beside checkpoint {checkpoint} (expected {path}); create it with {refit}")
    metric = load_learned_metric(path, feature_dim)
    recorded = _fitted_for(path)
    if recorded is not None and recorded != (actual := sha256_file(checkpoint)):
        raise MetricAttackError(
            f"{kind} metric {path} was fitted for the model with SHA-256 {recorded[:16]}..., but {checkpoint} now has SHA-256 "
            f"{actual[:16]}... (retrained or replaced since); fit it again for these weights with {refit}"
        )
    return metric


def _fitted_for(path: Path) -> str | None:
    """The SHA-256 of the model file a learned metric was fitted for (None for files that do not record it)."""
    try:
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8")).get("meta", {})
    except (OSError, ValueError, AttributeError):
        return None
    model = meta.get("model") if isinstance(meta, dict) else None
    recorded = model.get("sha256") if isinstance(model, dict) else None
    return recorded if isinstance(recorded, str) else None


def fit_for_checkpoint(
    checkpoint: str | Path | ModelSource,
    data_root: str | Path,
    dataset: str,
    kind: str,
    *,
    batch_size: int = 64,
    out: str | Path | None = None,
    **options: Any,
) -> Path:
    """Fit ``kind`` on the training features of a model; save it beside the model's file.

    ``checkpoint`` is a checkpoint path or any :class:`~metricattack.models.sources.ModelSource`
    (a Python model, another project's weights). Features come from
    ``extract_features(model, train records)`` (junk and distractor images excluded: they are
    not identities). Writes ``out`` (default :func:`metric_path` of the checkpoint or weights
    file) + JSON sidecar recording the model (its SHA-256), the dataset fingerprint, the options,
    the fit diagnostics and the software versions. Under torchrun every rank extracts its
    shard, rank 0 writes.
    """
    LEARNED_METRICS.get(kind)  # an unknown kind fails before the model is loaded
    source = checkpoint if isinstance(checkpoint, ModelSource) else ModelSource(checkpoint=Path(checkpoint))
    if out is None and source.anchor is None:
        raise MetricAttackError(
            f"{source.label} has no checkpoint or --weights file to write the {kind} metric beside; give --out FILE (.safetensors)"
        )
    path = Path(out) if out is not None else metric_path(source.anchor, kind)  # type: ignore[arg-type]  # checked above
    if path.suffix != ".safetensors":
        raise MetricAttackError(f"metric file {path} must end with .safetensors (its JSON sidecar is written beside it)")
    if batch_size < 1:
        raise MetricAttackError(f"batch size must be a positive integer, got {batch_size}")
    loaded = source.load()
    check_fit_options(kind, getattr(loaded.model, "feature_dim", None), options)
    data = load_dataset(dataset, data_root)
    check_output_file(
        "metric file",
        path,
        kind="metricattack metric file",
        is_previous=is_metric_file,
        inputs=with_sidecars([source.anchor] if source.anchor is not None else []),
        datasets=[data.root],
        sidecar=True,
    )
    records = [r for r in data.train if r.pid not in (JUNK_PID, DISTRACTOR_PID)]
    features = extract_features(loaded.model, records, batch_size=batch_size)
    fit = fit_learned(kind, features, [r.pid for r in records], [r.camid for r in records], **options)
    provenance = {
        "model": loaded.record,
        "dataset": {
            "name": dataset,
            "root": str(data_root),
            "fingerprint": dataset_fingerprint(data),
            "split": "train",
            "num_images": len(records),
        },
        "options": {"batch_size": batch_size, **fit.info["options"]},
        "world_size": rank_and_world()[1],
    }
    if source.checkpoint is not None:
        provenance |= {"checkpoint": str(source.checkpoint), "checkpoint_sha256": loaded.record["sha256"]}
    if is_main_process():
        for leftover_of in (path, sidecar_path(path)):
            remove_leftovers(path.parent, prefix=f".{leftover_of.name}.", recursive=False)
        save_learned_metric(fit, path, provenance)
    barrier()
    return path
