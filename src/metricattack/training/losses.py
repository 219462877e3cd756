"""Training losses: identity cross-entropy, batch-hard triplet loss, curriculum-sampled triplet loss (Mancs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[B,B]`` between the rows of ``features [B,D]``.

    Computed from the Gram matrix; clamped before the square root so the gradient stays
    finite on the diagonal (a zero distance gets a zero, not a NaN, gradient).
    """
    sq = features.pow(2).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * features @ features.T
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017), mean over anchors.

    For each anchor i of ``features [B,D]`` with ``labels [B]``: the farthest positive
    ``d_ap[i] = max_{j: y_j = y_i} d(i, j)`` and the closest negative
    ``d_an[i] = min_{j: y_j != y_i} d(i, j)`` under Euclidean distance;
    ``loss = mean_i max(0, d_ap[i] - d_an[i] + margin)``. Anchors without a negative in the
    batch are skipped (loss 0 if none has one).
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features [B,D] and labels [B], got {tuple(features.shape)} and {tuple(labels.shape)}")
    dist = pairwise_euclidean(features)  # [B,B]
    same = labels[:, None] == labels[None, :]  # [B,B], diagonal True
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)  # [B]
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)  # [B]; inf when no negative
    valid = torch.isfinite(d_an)
    if not valid.any():
        return features.sum() * 0.0
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean identity cross-entropy of ``logits [B,C]`` against ``labels [B]`` in 0..C-1."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def curriculum_hardness(epoch: int, curriculum_epochs: int) -> float:
    """Hardness in [0, 1] of 1-based ``epoch``: 0 at epoch 1, rising linearly to 1 at ``curriculum_epochs``."""
    if curriculum_epochs <= 1:
        return 1.0
    return min(1.0, max(0.0, (epoch - 1) / (curriculum_epochs - 1)))


def _draw_by_hardness(hardness_key: torch.Tensor, allowed: torch.Tensor, hardness: float) -> torch.Tensor:
    """For each row, one column among ``allowed`` drawn by its hardness rank: index ``[B]``.

    ``hardness_key [B,B]`` is larger for harder candidates; the candidate of rank r (0 = hardest)
    is drawn with probability proportional to ``exp(-r * hardness / (1 - hardness))``: uniform at
    hardness 0, the hardest at hardness 1. Uses torch's global RNG (seeded by the trainer).
    """
    key = hardness_key.masked_fill(~allowed, float("-inf"))
    order = key.argsort(dim=1, descending=True)
    if hardness >= 1.0:
        return order[:, 0]
    ranks = order.argsort(dim=1).to(hardness_key.dtype)
    weights = torch.exp(-ranks * (hardness / (1.0 - hardness))) * allowed
    weights = torch.where(allowed.any(dim=1, keepdim=True), weights, torch.ones_like(weights))  # rows without candidates: unused
    return torch.multinomial(weights, 1).squeeze(1)


def curriculum_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float, hardness: float) -> torch.Tensor:
    """Triplet loss with curriculum sampling (Mancs, Wang et al. ECCV 2018), mean over anchors.

    For each anchor i of ``features [B,D]`` one positive (another image of its identity) and one
    negative are drawn by hardness rank (:func:`_draw_by_hardness`): positives ranked by
    decreasing distance, negatives by increasing distance. ``hardness`` in [0, 1] moves the
    sampling from uniform (easy and hard triplets alike) to the hardest, where the loss equals
    :func:`batch_hard_triplet_loss`; :func:`curriculum_hardness` schedules it over epochs.
    ``loss = mean_i max(0, d(i, p_i) - d(i, n_i) + margin)`` over anchors that have a positive
    and a negative in the batch (0 if none has).
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features [B,D] and labels [B], got {tuple(features.shape)} and {tuple(labels.shape)}")
    if not 0.0 <= hardness <= 1.0:
        raise ValueError(f"hardness must be in [0, 1], got {hardness}")
    dist = pairwise_euclidean(features)  # [B,B]
    same = labels[:, None] == labels[None, :]
    positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    valid = positives.any(dim=1) & (~same).any(dim=1)
    if not valid.any():
        return features.sum() * 0.0
    with torch.no_grad():
        pos = _draw_by_hardness(dist, positives, hardness)
        neg = _draw_by_hardness(-dist, ~same, hardness)
    d_ap = dist.gather(1, pos[:, None]).squeeze(1)
    d_an = dist.gather(1, neg[:, None]).squeeze(1)
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()
