"""Feature extraction and feature-level evaluation with bounded memory.

* :func:`extract_features` runs a model over image records (sharded under ``torchrun``:
  each rank extracts its share, the rows are gathered on every rank).
* :func:`evaluate_features` computes query × gallery distances one chunk of queries at a
  time and ranks each chunk right away, so memory is one ``[chunk, G]`` distance block plus
  the features (MSMT17: 11,659 × 82,161 stays far below 4 GB).
* :func:`evaluate_model` = both, for a model on a dataset's query and gallery splits.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import closing

import torch
from torch import nn

from ..compute import make_compute
from ..data.types import ImageRecord, ReIDDataset
from ..distributed import gather_indexed
from ..errors import MetricAttackError
from ..metrics.distance import Metric
from ..models.contract import check_device, check_model, forward_features, model_name, warn_once
from ..overlap import DEFAULT_WORKERS
from ..progress import Progress
from ..wording import counted
from .ranking import DEFAULT_RANKS, APConvention, RankingResult, TieRule, evaluate_distance_blocks


@torch.no_grad()
def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    batch_size: int = 64,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    name: str | None = None,
    precision: str | None = None,
    workers: int = DEFAULT_WORKERS,
) -> torch.Tensor:
    """Features ``[N, D]`` (float32, on CPU) of ``records`` in order, from ``model(images at native size)``.

    The one feature path of every command: ``model`` takes images ``[B, 3, H, W]`` in [0, 1]
    of any size, resizes and normalises them itself (:mod:`metricattack.models.preprocessing`)
    and returns features; it is put in eval mode. Batches hold images of one native size.
    Under ``torchrun`` each rank extracts whole batches of the one-process batching and the rows
    are gathered on every rank: the result equals one process at the same ``batch_size``, byte for byte.

    The model is checked first (:func:`~metricattack.models.contract.check_model`, once per
    model) and every batch's output against the contract: an error names the model (``name``,
    default the name it was loaded under) and the image file; features equal for every image
    are warned about (they score exactly the chance level). ``precision`` (``"fp32"``, ``"bf16"``,
    ``"fp16"``): run the model at it (:mod:`metricattack.compute`); None: as it is.

    The next batches are decoded on ``workers`` threads while the model computes
    (:func:`~metricattack.data.loading.read_batches`; 0: in this thread), into page-locked memory
    when ``device`` is a GPU; the features do not depend on it.
    ``progress``: report the batches (a bar on a terminal, else lines at a bounded rate:
    :mod:`metricattack.progress`); False inside a loop that reports.
    """
    if precision is not None:
        with make_compute("extract_features", precision=precision).applied([model]):
            return extract_features(model, records, batch_size, device=device, progress=progress, name=name, workers=workers)
    from ..data.loading import make_loader, read_batches  # the loader pulls in image I/O; keep ranking imports light

    if len(records) == 0:
        raise MetricAttackError("cannot extract features: no images given (empty split?)")
    label = name or model_name(model)
    check_device(model, label)
    model.eval().to(device)
    check_model(model, label, device=device)
    loader = make_loader(records, batch_size, shard=True)
    rows: list[torch.Tensor] = []
    placed: list[torch.Tensor] = []
    target = torch.device(device)
    stream = read_batches(loader, workers=workers, pin_memory=target.type == "cuda")
    with closing(stream):
        for _, indices, images in Progress(
            stream, desc=f"features ({counted(len(records), 'image')})", unit="batch", total=len(loader), report=progress
        ):
            what = functools.partial(_files, records, indices)
            rows.append(forward_features(model, images.to(target, non_blocking=True), label, what).float().cpu())
            placed.append(torch.tensor(indices, dtype=torch.long))
    # a rank without a batch (fewer batches than ranks) contributes nothing
    local = torch.cat(rows) if rows else torch.zeros(0, 0)
    features = gather_indexed(local, torch.cat(placed) if placed else torch.zeros(0, dtype=torch.long), len(records))
    if len(records) > 1 and bool((features == features[0]).all()):
        warn_once(
            model,
            "constant",
            f"model {label} gives the same features to all {len(records)} images: every distance ties, so it scores "
            "exactly the chance level (and no attack can move it)",
        )
    return features


def _files(records: Sequence[ImageRecord], rows: list[int], i: int | None) -> str:
    """The images of record indices ``rows`` (``i`` None: the batch) or the ``i``-th of them, for messages."""
    if i is not None or len(rows) == 1:
        return f"image {os.fspath(records[rows[i or 0]].path)}"
    return f"the batch of {len(rows)} images {os.fspath(records[rows[0]].path)} .. {os.path.basename(records[rows[-1]].path)}"


def _distance_chunks(q_emb: torch.Tensor, g_emb: torch.Tensor, metric: Metric, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, q_emb.shape[0], chunk_size):
        yield start, metric.pairwise_embedded(q_emb[start : start + chunk_size], g_emb)


@torch.no_grad()
def evaluate_features(
    q_feats: torch.Tensor,
    g_feats: torch.Tensor,
    q_pids: Sequence[int] | torch.Tensor,
    g_pids: Sequence[int] | torch.Tensor,
    q_camids: Sequence[int] | torch.Tensor,
    g_camids: Sequence[int] | torch.Tensor,
    metric: Metric,
    *,
    ap: APConvention = "market",
    ranks: Sequence[int] = DEFAULT_RANKS,
    chunk_size: int = 1024,
    ties: TieRule = "expected",
) -> RankingResult:
    """CMC / mAP / mINP of ``q_feats [Q, D]`` against ``g_feats [G, D]`` under ``metric``.

    The gallery is embedded once; distances are computed ``chunk_size`` queries at a time
    (peak extra memory ≈ ``chunk_size · G · 4`` bytes) and ranked as they come, so the
    result equals :func:`~metricattack.evaluation.ranking.evaluate_distances` on the full matrix
    (``ties``: its tie rule, default the expectation over the orders of equal distances).
    """
    if chunk_size < 1:
        raise MetricAttackError(f"chunk_size must be a positive integer, got {chunk_size}")
    for name, feats in (("query features", q_feats), ("gallery features", g_feats)):
        metric.check_features(feats, name)
    if q_feats.shape[1] != g_feats.shape[1]:
        raise MetricAttackError(f"query features have dimension {q_feats.shape[1]} but gallery features {g_feats.shape[1]}")
    q_emb = metric.embed(q_feats.float())
    g_emb = metric.embed(g_feats.float())
    return evaluate_distance_blocks(
        _distance_chunks(q_emb, g_emb, metric, chunk_size), q_pids, g_pids, q_camids, g_camids, ap=ap, ranks=ranks, ties=ties
    )


def evaluate_model(
    model: nn.Module,
    dataset: ReIDDataset,
    metric: Metric,
    *,
    ap: APConvention = "market",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    chunk_size: int = 1024,
    progress: bool = True,
    ties: TieRule = "expected",
    precision: str | None = None,
) -> RankingResult:
    """Extract query and gallery features of ``dataset`` with ``model`` (at ``precision``, as :func:`extract_features`)
    and evaluate them under ``metric``."""
    q = extract_features(model, dataset.query, batch_size=batch_size, device=device, progress=progress, precision=precision)
    g = extract_features(model, dataset.gallery, batch_size=batch_size, device=device, progress=progress, precision=precision)
    return evaluate_split_features(q, g, dataset, metric, ap=ap, chunk_size=chunk_size, ties=ties)


def evaluate_split_features(
    q_feats: torch.Tensor,
    g_feats: torch.Tensor,
    dataset: ReIDDataset,
    metric: Metric,
    *,
    ap: APConvention = "market",
    chunk_size: int = 1024,
    ties: TieRule = "expected",
) -> RankingResult:
    """:func:`evaluate_features` with identities and cameras taken from ``dataset``'s query / gallery."""
    return evaluate_features(
        q_feats,
        g_feats,
        [r.pid for r in dataset.query],
        [r.pid for r in dataset.gallery],
        [r.camid for r in dataset.query],
        [r.camid for r in dataset.gallery],
        metric,
        ap=ap,
        chunk_size=chunk_size,
        ties=ties,
    )
