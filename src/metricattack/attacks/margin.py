"""Query-side ranking objectives against a fixed (clean) gallery: the scale-free ranking margin.

A probe ``x`` of identity ``y`` and camera ``c`` is ranked against gallery features ``g_j`` with a
metric ``d``. Under the evaluation protocol its *true matches* ``P`` are the gallery images of
identity ``y`` from another camera, its *non-matches* ``N`` every other identity and the
distractors; junk and same-identity same-camera images count as neither. The ranking margin

    ``m(x) = (d_P − d_N) / (d_P + d_N)``,  ``d_P = min_{j∈P} d(f(x), g_j)``,  ``d_N = min_{j∈N} d(f(x), g_j)``

is positive exactly when a non-match outranks every true match (rank-1 is wrong), lies in
[−1, 1], and does not change when the metric is scaled: the analogue for retrieval of the DLR loss
APGD pairs with cross-entropy. Ascending it pushes the nearest true match away and pulls the
nearest non-match in. The *targeted* margin replaces ``N`` with the images of one negative
identity, chosen per probe among its hardest ones (:func:`hardest_negatives`; a distractor
image is an identity of its own), like APGD-T's target classes.

:class:`QueryGallery` holds the fixed side (embedded gallery, identities, cameras); it also gives a
batch's distances, per-query APs and rank-1 hits (:meth:`QueryGallery.ap`, :meth:`QueryGallery.first_hit`)
by the evaluation protocol (ties counted as the evaluator's default, an expectation over their
orders), which the robustness cascade and Square's stopping rule use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data.types import DISTRACTOR_PID, JUNK_PID
from ..errors import MetricAttackError
from ..evaluation.chance import expected_ap
from ..evaluation.ranking import APConvention, evaluate_distances, match_counts
from ..metrics.distance import Metric

_TINY = 1e-12  # keeps the margin defined when both distances are zero


class QueryGallery:
    """The fixed gallery a query attack is measured against.

    Args:
        metric: the distance.
        gallery: clean gallery features ``[G, D]`` (detached here).
        query_pids, query_camids: ``[Q]`` of the attacked probes (indexed by the objectives' ``indices``).
        gallery_pids, gallery_camids: ``[G]``.
        ap: AP convention of :meth:`ap` and :meth:`chance_ap`.
    """

    def __init__(
        self,
        metric: Metric,
        gallery: torch.Tensor,
        query_pids: Sequence[int],
        query_camids: Sequence[int],
        gallery_pids: Sequence[int],
        gallery_camids: Sequence[int],
        ap: APConvention = "market",
    ) -> None:
        if gallery.dim() != 2 or gallery.shape[0] != len(gallery_pids) or len(gallery_pids) != len(gallery_camids):
            raise MetricAttackError(f"gallery features {tuple(gallery.shape)} do not match {len(gallery_pids)} gallery identities")
        if len(query_pids) != len(query_camids):
            raise MetricAttackError(f"got {len(query_pids)} query identities but {len(query_camids)} query cameras")
        self.metric, self.ap_convention = metric, ap
        with torch.no_grad():
            self.embedded = metric.embed(gallery.detach().float())
        self.q_pids = torch.as_tensor(list(query_pids), dtype=torch.long)
        self.q_cams = torch.as_tensor(list(query_camids), dtype=torch.long)
        self.g_pids = torch.as_tensor(list(gallery_pids), dtype=torch.long)
        self.g_cams = torch.as_tensor(list(gallery_camids), dtype=torch.long)
        # a gallery image's identity group: its pid, or for a distractor a group of its own (negative numbers)
        self.g_groups = torch.where(self.g_pids == DISTRACTOR_PID, -2 - torch.arange(len(self.g_pids)), self.g_pids)

    def __len__(self) -> int:
        return len(self.q_pids)

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, G]`` metric distances of features ``[B, D]`` to the gallery (differentiable in ``features``)."""
        return self.metric.pairwise_embedded(self.metric.embed(features), self.embedded.to(features.device, features.dtype))

    def masks(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(matches [B, G], non_matches [B, G])`` bool for the probes ``indices``, by the protocol."""
        pid = self.q_pids[indices].unsqueeze(1)
        cam = self.q_cams[indices].unsqueeze(1)
        g_pid, g_cam = self.g_pids.unsqueeze(0), self.g_cams.unsqueeze(0)
        junk = g_pid == JUNK_PID
        same = g_pid == pid
        matches = same & (g_cam != cam) & ~junk & (pid != JUNK_PID) & (pid != DISTRACTOR_PID)
        return matches, ~same & ~junk

    def has_match(self) -> torch.Tensor:
        """``[Q]`` bool: the probes with at least one true match (the others are not ranked)."""
        matches, _ = self.masks(torch.arange(len(self)))
        return matches.any(1)

    @torch.no_grad()
    def ap(self, distances: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
        """``[B]`` AP of the probes ``indices`` ranked by ``distances [B, G]`` (NaN without a match)."""
        idx = indices.cpu()
        return evaluate_distances(
            distances.detach().float().cpu(), self.q_pids[idx], self.g_pids, self.q_cams[idx], self.g_cams, ap=self.ap_convention
        ).per_query_ap

    @torch.no_grad()
    def first_hit(self, distances: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
        """``[B]`` chance that the probe's first valid gallery item is a true match (1.0 or 0.0
        without ties; the share of true matches among the items tied at the smallest distance, as the
        evaluator's default tie rule counts rank-1), NaN without a match."""
        matches, non_matches = self.masks(indices.cpu())
        dist = distances.detach().float().cpu().masked_fill(~(matches | non_matches), float("inf"))
        first = dist == dist.amin(1, keepdim=True)
        hit = ((first & matches).sum(1) / first.sum(1).clamp_min(1)).double().numpy()
        hit[~matches.any(1).numpy()] = np.nan
        return hit

    def chance_ap(self) -> np.ndarray:
        """``[Q]`` expected AP of each probe under a uniformly random ranking (NaN without a match)."""
        positives, valid = match_counts(self.q_pids.numpy(), self.g_pids.numpy(), self.q_cams.numpy(), self.g_cams.numpy())
        out = np.full(len(positives), np.nan)
        ok = positives > 0
        if ok.any():
            out[ok] = expected_ap(positives[ok], valid[ok], self.ap_convention)
        return out


def hardest_negatives(side: QueryGallery, distances: torch.Tensor, count: int, chunk: int = 256) -> torch.Tensor:
    """``[Q, count]`` identity groups of each probe's ``count`` nearest negative identities under
    the clean ``distances [Q, G]`` (nearest first, by their nearest image; ties by group number)."""
    groups, column_group = torch.unique(side.g_groups, return_inverse=True)
    if count > len(groups):
        raise MetricAttackError(f"asked for {count} negative identities, the gallery has {len(groups)} identity groups")
    out = []
    for start in range(0, len(side), chunk):
        rows = torch.arange(start, min(start + chunk, len(side)))
        _, non_matches = side.masks(rows)
        dist = distances[rows].detach().float().cpu().masked_fill(~non_matches, float("inf"))
        nearest = torch.full((len(rows), len(groups)), float("inf"))
        nearest.scatter_reduce_(1, column_group.expand(len(rows), -1), dist, reduce="amin")
        out.append(groups[torch.argsort(nearest, dim=1, stable=True)[:, :count]])
    return torch.cat(out)


class RankingMargin:
    """The ranking margin of the module docstring as an attack objective ``(images, indices) -> [B]``.

    Args:
        model: maps images ``[B,3,H,W]`` in [0,1] to features ``[B, D]``.
        side: the fixed gallery (:class:`QueryGallery`).
        targets: ``[Q]`` identity group each probe is pulled toward (targeted margin), or None (every non-match).
        stop_at: ``[Q]`` AP at or below which a probe's search is done (:meth:`score`, e.g. its chance AP);
            None: never done.
    """

    def __init__(
        self, model: nn.Module, side: QueryGallery, targets: torch.Tensor | None = None, stop_at: np.ndarray | None = None
    ) -> None:
        self.model, self.side, self.targets, self.stop_at = model, side, targets, stop_at

    def prepare(self, clean: torch.Tensor, indices: torch.Tensor) -> None:
        """Nothing to prepare: the gallery is fixed."""

    def margins(self, distances: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``[B]`` margins of the probes ``indices`` from their ``distances [B, G]``."""
        matches, negatives = self.side.masks(indices.cpu())
        if self.targets is not None:
            negatives = negatives & (self.side.g_groups.unsqueeze(0) == self.targets[indices.cpu()].unsqueeze(1))
        if not bool(matches.any(1).all()) or not bool(negatives.any(1).all()):
            raise MetricAttackError("the ranking margin needs probes with at least one true match and one non-match")
        inf = torch.tensor(float("inf"), device=distances.device, dtype=distances.dtype)
        d_pos = torch.where(matches.to(distances.device), distances, inf).amin(1)
        d_neg = torch.where(negatives.to(distances.device), distances, inf).amin(1)
        return (d_pos - d_neg) / (d_pos + d_neg + _TINY)

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.margins(self.side.distances(self.model(images)), indices)

    @torch.no_grad()
    def score(self, images: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(margins [B], done [B])`` from one forward pass (a Square scorer): done when the
        probe's AP is at or below ``stop_at``."""
        distances = self.side.distances(self.model(images))
        margins = self.margins(distances, indices)
        if self.stop_at is None:
            return margins, torch.zeros_like(margins, dtype=torch.bool)
        done = self.side.ap(distances, indices) <= self.stop_at[indices.cpu().numpy()]
        return margins, torch.from_numpy(done).to(margins.device)
