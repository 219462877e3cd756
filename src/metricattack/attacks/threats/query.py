"""``query`` (query-side attack): each probe is pushed away from its true gallery matches (same
identity, other camera: the matches the evaluation counts).

Objectives: ``metric`` (the paper's loss: mean distance to the true matches), ``margin`` (the
scale-free ranking margin to the nearest non-match, :class:`~metricattack.attacks.margin.RankingMargin`)
and ``margin-targeted`` (the margin toward the probe's hardest negative identity, its nearest by
the clean features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...data.types import ReIDDataset
from ...metrics.distance import Metric
from ..objectives import LossPart, RefSets, as_list, is_identity
from .base import OtherSplitThreat, Selection, SplitFeatures, register_threat


def query_reference_sets(
    query_pids: Sequence[int] | torch.Tensor,
    query_camids: Sequence[int] | torch.Tensor,
    gallery_pids: Sequence[int] | torch.Tensor,
    gallery_camids: Sequence[int] | torch.Tensor,
) -> RefSets:
    """Per probe: indices of its true gallery matches (same identity, different camera)."""
    by_pid: dict[int, list[tuple[int, int]]] = {}
    for g, (pid, cam) in enumerate(zip(as_list(gallery_pids), as_list(gallery_camids), strict=True)):
        by_pid.setdefault(pid, []).append((g, cam))
    out: RefSets = []
    for pid, cam in zip(as_list(query_pids), as_list(query_camids), strict=True):
        matches = by_pid.get(pid, []) if is_identity(pid) else []
        out.append(tuple(g for g, g_cam in matches if g_cam != cam))
    return out


@dataclass(frozen=True)
class QuerySelection(Selection):
    """A :class:`Selection` with the identities and cameras the ranking margin needs: ``ids = (q_pids, q_cams, g_pids, g_cams)``."""

    ids: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])


@register_threat("query")
class QueryThreat(OtherSplitThreat):
    mode = "query"
    summary = "push probes away from their true gallery matches"
    split = "query"
    objectives = ("metric", "margin", "margin-targeted")

    def reference_sets(self, dataset: ReIDDataset, seed: int) -> tuple[RefSets, None]:
        q, g = dataset.query, dataset.gallery
        return query_reference_sets([r.pid for r in q], [r.camid for r in q], [r.pid for r in g], [r.camid for r in g]), None

    def select(self, dataset: ReIDDataset, seed: int) -> QuerySelection:
        base = super().select(dataset, seed)
        q, g = dataset.query, dataset.gallery
        ids = ([r.pid for r in q], [r.camid for r in q], [r.pid for r in g], [r.camid for r in g])
        return QuerySelection(base.active, base.references, base.targets, ids)

    def part(self, model: nn.Module, metric: Metric, features: SplitFeatures, selection: Selection, objective: str) -> LossPart:
        if objective == "metric":
            return super().part(model, metric, features, selection, objective)
        from ..margin import QueryGallery, RankingMargin, hardest_negatives

        assert isinstance(selection, QuerySelection)  # made by select()
        side = QueryGallery(metric, features.gallery, *selection.ids)
        targets = hardest_negatives(side, side.distances(features.query), 1)[:, 0] if objective == "margin-targeted" else None
        return RankingMargin(model, side, targets=targets)
