"""Triplets of a P×K batch for the ranking defenses (ACT, HM): mining and the margin loss.

Every image with another image of its identity and an image of another identity in the batch
is an anchor. Its positive and negative are drawn (uniformly, with the caller's seeded
generator) among candidates chosen by a rule on the batch's Euclidean feature distances
``d`` (Zhou et al.'s miners, robrank ``losses/miner.py``, adapted to P×K batches: there, each
anchor comes with a fixed partner image):

* positive ``random``: any other image of the identity; ``softhard``: one farther than the
  anchor's closest negative (any, when none is);
* negative ``random``: any image of another identity; ``softhard``: one closer than the
  anchor's farthest positive; ``semihard``: one with ``d(a,p) < d(a,n) < d(a,p) + margin``
  for the drawn positive ``p`` (FaceNet's semi-hard negatives); each falls back to any
  negative when no candidate qualifies.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from .base import distances

PositiveRule = Literal["random", "softhard"]
NegativeRule = Literal["random", "softhard", "semihard"]


class Triplets(NamedTuple):
    """Batch indices ``[T]`` of anchors, positives and negatives."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor


def _draw(candidates: torch.Tensor, fallback: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per row, one column drawn uniformly among ``candidates [T,B]`` (``fallback`` rows where it has none)."""
    mask = torch.where(candidates.any(1, keepdim=True), candidates, fallback)
    return torch.multinomial(mask.double(), 1, generator=generator).squeeze(1)


def mine_triplets(
    features: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    *,
    positive: PositiveRule = "random",
    negative: NegativeRule = "random",
    margin: float = 0.2,
) -> Triplets:
    """One triplet per anchor of ``features [B,D]`` / ``labels [B]`` (see the module docstring)."""
    features = features.detach().float().cpu()
    labels = labels.cpu()
    size = len(labels)
    d = torch.cdist(features, features)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    others = same & ~torch.eye(size, dtype=torch.bool)
    different = ~same
    anchors = torch.nonzero(others.any(1) & different.any(1)).flatten()
    if anchors.numel() == 0:
        empty = torch.empty(0, dtype=torch.long)
        return Triplets(empty, empty, empty)
    da, pos_mask, neg_mask = d[anchors], others[anchors], different[anchors]
    inf = torch.tensor(float("inf"))
    closest_negative = torch.where(neg_mask, da, inf).amin(1, keepdim=True)
    farthest_positive = torch.where(pos_mask, da, -inf).amax(1, keepdim=True)
    if positive == "softhard":
        positives = _draw(pos_mask & (da > closest_negative), pos_mask, generator)
    else:
        positives = _draw(pos_mask, pos_mask, generator)
    if negative == "softhard":
        negatives = _draw(neg_mask & (da < farthest_positive), neg_mask, generator)
    elif negative == "semihard":
        dap = da.gather(1, positives.unsqueeze(1))
        negatives = _draw(neg_mask & (dap < da) & (da < dap + margin), neg_mask, generator)
    else:
        negatives = _draw(neg_mask, neg_mask, generator)
    return Triplets(anchors, positives, negatives)


def hardness(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Triplet hardness ``d(a,p) − d(a,n)`` ``[T]`` (positive: the negative is closer than the positive)."""
    return distances(a, p) - distances(a, n)


def triplet_margin_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean max(0, d(a,p) − d(a,n) + margin)`` over the rows of ``a, p, n [T,D]`` (0 for no rows)."""
    if a.shape[0] == 0:
        return a.sum() * 0.0
    return torch.relu(hardness(a, p, n) + margin).mean()
