"""``targeted`` (the paper's Eq. 8): each gallery image of a queried identity is pulled toward one
seeded probe of another identity (the metric is minimised)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...data.types import JUNK_PID, ReIDDataset
from ...errors import MetricAttackError
from ..objectives import RefSets, as_list, is_identity
from .base import OtherSplitThreat, register_threat


def targeted_reference_sets(
    gallery_pids: Sequence[int] | torch.Tensor, query_pids: Sequence[int] | torch.Tensor, seed: int
) -> tuple[RefSets, torch.Tensor]:
    """Per gallery image of a queried identity: one target probe of another identity.

    Returns ``(sets, targets [G] long)`` with ``targets[g] = −1`` for images not attacked (junk,
    distractors, identities without query). Targets are drawn uniformly among the probes whose
    identity differs, with ``torch.Generator().manual_seed(seed)``, identity by identity in
    ascending identity order (within an identity: gallery order).
    """
    g_pids, q_pids = as_list(gallery_pids), as_list(query_pids)
    queried = {p for p in q_pids if is_identity(p)}
    gen = torch.Generator().manual_seed(int(seed))
    targets = torch.full((len(g_pids),), -1, dtype=torch.long)
    q_tensor = torch.tensor(q_pids, dtype=torch.long)
    members_of: dict[int, list[int]] = {}
    for g, pid in enumerate(g_pids):
        members_of.setdefault(pid, []).append(g)
    for pid in sorted(queried):
        members = members_of.get(pid, [])
        if not members:
            continue
        candidates = torch.nonzero((q_tensor != pid) & (q_tensor != JUNK_PID), as_tuple=False).flatten()
        if candidates.numel() == 0:
            raise MetricAttackError(f"targeted attack: identity {pid} has no probe of another identity to be pulled toward")
        draws = torch.randint(candidates.numel(), (len(members),), generator=gen)
        targets[members] = candidates[draws]
    return [(int(t),) if t >= 0 else () for t in targets.tolist()], targets


@register_threat("targeted")
class TargetedThreat(OtherSplitThreat):
    mode = "targeted"
    summary = "pull gallery images toward one probe of another identity (Eq. 8)"
    split = "gallery"
    minimise = True

    def reference_sets(self, dataset: ReIDDataset, seed: int) -> tuple[RefSets, torch.Tensor]:
        return targeted_reference_sets([r.pid for r in dataset.gallery], [r.pid for r in dataset.query], seed)
