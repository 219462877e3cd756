"""Training losses: identity cross-entropy, sigmoid focal loss, multi-label sigmoid loss, batch-hard
triplet loss, and Mancs' curriculum-sampled triplet loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision


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


def _one_hot(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [B,C] and labels [B], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return F.one_hot(labels, logits.shape[1]).to(logits.dtype)


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, alpha: float | None = None) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., ICCV 2017) of identity ``logits [B,C]`` against ``labels [B]``.

    Each of the C outputs is a binary classifier (one-hot targets): with ``p = sigmoid(z)`` and
    ``p_t = p`` for the image's identity, ``1 - p`` for the others,
    ``loss = sum_c -alpha_t (1 - p_t)^gamma log(p_t)``, summed over classes and averaged over
    images (one positive per image, so this is Lin et al.'s normalisation by the number of
    positives). ``alpha`` (``alpha_t = alpha`` for the identity, ``1 - alpha`` for the others)
    is off by default; ``gamma = 0`` without ``alpha`` is the binary cross-entropy.
    """
    losses = torchvision.ops.sigmoid_focal_loss(logits, _one_hot(logits, labels), alpha=-1 if alpha is None else alpha, gamma=gamma)
    return losses.sum() / logits.shape[0]


def multilabel_sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label sigmoid cross-entropy of ``logits [B,C]`` (one-hot ``labels [B]``): summed over classes, mean over images."""
    return F.binary_cross_entropy_with_logits(logits, _one_hot(logits, labels), reduction="sum") / logits.shape[0]


class CurriculumState(NamedTuple):
    """Where the curriculum stands: the Gaussian over negatives' distance ranks.

    ``mean`` and ``width`` are fractions of an anchor's rank range: rank 0 is its closest
    (hardest) negative, rank N-1 its farthest (easiest), and rank r sits at ``r / (N - 1)``.
    """

    mean: float
    width: float


def curriculum_state(epoch: int, t0: int, t1: int, width_start: float, width_end: float) -> CurriculumState:
    """The curriculum of 1-based ``epoch``: the mean moves linearly from the easiest negative (1)
    at epoch 1 to the hardest (0) at epoch ``t0``; the width shrinks linearly from
    ``width_start`` at epoch 1 to ``width_end`` at epoch ``t1``; both stay there afterwards."""

    def progress(t: int) -> float:
        return 1.0 if t <= 1 else min(1.0, max(0.0, (epoch - 1) / (t - 1)))

    return CurriculumState(1.0 - progress(t0), width_end + (width_start - width_end) * (1.0 - progress(t1)))


def negative_rank_probabilities(distances: torch.Tensor, negatives: torch.Tensor, state: CurriculumState) -> torch.Tensor:
    """Probability ``[B,B]`` of drawing each negative of each anchor (row), zero off ``negatives``.

    Row i's negatives are ranked by increasing distance (``distances [B,B]``, rank 0 = hardest)
    and drawn with probability proportional to ``exp(-(r/(N_i-1) - mean)^2 / (2 width^2))``;
    a row without negatives is all zeros.
    """
    key = distances.masked_fill(~negatives, float("inf"))
    ranks = key.argsort(dim=1).argsort(dim=1).to(distances.dtype)  # rank of each column among the row's negatives first
    span = (negatives.sum(dim=1, keepdim=True) - 1).clamp_min(1).to(distances.dtype)
    logits = -((ranks / span - state.mean) ** 2) / (2 * state.width**2)
    probabilities = torch.softmax(logits.masked_fill(~negatives, float("-inf")), dim=1)
    return torch.nan_to_num(probabilities, nan=0.0)  # rows without negatives: softmax of all -inf


def curriculum_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float, state: CurriculumState) -> torch.Tensor:
    """Triplet loss with Mancs' curriculum sampling (Wang et al., ECCV 2018), mean over triplets.

    Every (anchor i, positive j) pair of ``features [B,D]`` / ``labels [B]`` is used in turn, and
    one negative k is drawn for it from the anchor's negatives by :func:`negative_rank_probabilities`
    at ``state`` (:func:`curriculum_state`): ``loss = mean_(i,j) max(0, d(i, j) - d(i, k) + margin)``,
    Euclidean distances. Pairs whose anchor has no negative in the batch are skipped (0 if none
    is left). Uses torch's global RNG (seeded by the trainer).
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features [B,D] and labels [B], got {tuple(features.shape)} and {tuple(labels.shape)}")
    dist = pairwise_euclidean(features)  # [B,B]
    same = labels[:, None] == labels[None, :]
    positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives &= (~same).any(dim=1, keepdim=True)  # anchors with a negative
    anchor, positive = positives.nonzero(as_tuple=True)
    if len(anchor) == 0:
        return features.sum() * 0.0
    with torch.no_grad():
        negative = torch.multinomial(negative_rank_probabilities(dist, ~same, state)[anchor], 1).squeeze(1)
    return F.relu(dist[anchor, positive] - dist[anchor, negative] + margin).mean()
