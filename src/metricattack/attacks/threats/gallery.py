"""``gallery`` (the paper's non-targeted attack, Sec. 3.4): each gallery image of identity k is
pushed away from all query images of identity k; junk, distractors and identities without a
query stay untouched."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...data.types import ReIDDataset
from ..objectives import RefSets, as_list, is_identity
from .base import OtherSplitThreat, register_threat


def gallery_reference_sets(gallery_pids: Sequence[int] | torch.Tensor, query_pids: Sequence[int] | torch.Tensor) -> RefSets:
    """Per gallery image: indices of the query images of its identity (empty for junk/distractors)."""
    by_pid: dict[int, list[int]] = {}
    for q, pid in enumerate(as_list(query_pids)):
        by_pid.setdefault(pid, []).append(q)
    return [tuple(by_pid.get(pid, ())) if is_identity(pid) else () for pid in as_list(gallery_pids)]


@register_threat("gallery")
class GalleryThreat(OtherSplitThreat):
    mode = "nontargeted"
    summary = "non-targeted: push gallery images away from their identity's probes"
    split = "gallery"

    def reference_sets(self, dataset: ReIDDataset, seed: int) -> tuple[RefSets, None]:
        return gallery_reference_sets([r.pid for r in dataset.gallery], [r.pid for r in dataset.query]), None
