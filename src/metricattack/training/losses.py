"""Training losses: identity cross-entropy and batch-hard triplet loss."""

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
