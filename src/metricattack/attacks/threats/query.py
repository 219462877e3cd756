"""``query`` (query-side attack): each probe is pushed away from its true gallery matches (same
identity, other camera: the matches the evaluation counts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...data.types import ReIDDataset
from ..objectives import RefSets, as_list, is_identity
from .base import OtherSplitThreat, register_threat


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


@register_threat("query")
class QueryThreat(OtherSplitThreat):
    mode = "query"
    summary = "push probes away from their true gallery matches"
    split = "query"

    def reference_sets(self, dataset: ReIDDataset, seed: int) -> tuple[RefSets, None]:
        q, g = dataset.query, dataset.gallery
        return query_reference_sets([r.pid for r in q], [r.camid for r in q], [r.pid for r in g], [r.camid for r in g]), None
