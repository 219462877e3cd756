"""The ranking margin and the query-side gallery: exact values on hand-made features, and the
evaluation protocol's matches, APs and rank-1 hits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metricattack.attacks.margin import QueryGallery, RankingMargin, hardest_negatives
from metricattack.errors import MetricAttackError
from metricattack.evaluation.chance import chance_ranking
from metricattack.evaluation.ranking import evaluate_distances
from metricattack.metrics.distance import CosineMetric, EuclideanMetric

# gallery: pid 1 cam 0, pid 1 cam 1, pid 2 cam 1, distractor, junk, pid 3 cam 1, distractor
G_PIDS, G_CAMS = [1, 1, 2, 0, -1, 3, 0], [0, 1, 1, 0, 1, 1, 1]
GALLERY = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.1, 0.0], [0.0, 0.5], [0.0, 4.0]])
# two probes of identity 1 (cameras 0 and 1) and one of identity 2 (camera 0)
Q_PIDS, Q_CAMS = [1, 1, 2], [0, 1, 0]


def side(metric=None) -> QueryGallery:
    return QueryGallery(metric or EuclideanMetric(), GALLERY, Q_PIDS, Q_CAMS, G_PIDS, G_CAMS)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_matches_follow_the_protocol() -> None:
    matches, non_matches = side().masks(torch.arange(3))
    # probe 0 (pid 1, cam 0): its cam-0 image is ignored, the junk is neither, the distractors are non-matches
    assert matches[0].tolist() == [False, True, False, False, False, False, False]
    assert non_matches[0].tolist() == [False, False, True, True, False, True, True]
    assert matches[1].tolist() == [True, False, False, False, False, False, False]
    assert matches[2].tolist() == [False, False, True, False, False, False, False]
    assert side().has_match().tolist() == [True, True, True]


def test_margin_exact_values_scale_free_and_targeted() -> None:
    probes = torch.tensor([[0.0, 0.0], [0.9, 0.0], [0.0, 1.0]])
    margin = RankingMargin(Identity(), side())
    # probe 0: nearest match (1,0) at d=1, nearest non-match (0,0.5) at 0.25 → (1 − 0.25)/(1 + 0.25)
    # probe 1: match (0,0) at 0.81, non-match (0,0.5) at 0.81 + 0.25 = 1.06
    # probe 2: match (0,2) at 1, non-match (0,0.5) at 0.25
    expected = torch.tensor([0.75 / 1.25, (0.81 - 1.06) / (0.81 + 1.06), 0.75 / 1.25])
    assert torch.allclose(margin(probes, torch.arange(3)), expected)
    # scaling the metric (cosine has scale 1/2) leaves the margin alone; the features here are not normalised, so compare two scales of Euclidean
    doubled = QueryGallery(EuclideanMetric(), GALLERY * 2, Q_PIDS, Q_CAMS, G_PIDS, G_CAMS)
    assert torch.allclose(RankingMargin(Identity(), doubled)(probes * 2, torch.arange(3)), expected)
    # targeted at identity 2 for probe 0: nearest image of pid 2 is (0,2) at d=4 → (1 − 4)/(1 + 4)
    targeted = RankingMargin(Identity(), side(), targets=torch.tensor([2, 3, 3]))
    assert torch.isclose(targeted(probes, torch.arange(3))[0], torch.tensor(-3 / 5))


def test_margin_gradient_pushes_the_match_away() -> None:
    probe = torch.tensor([[0.5, 0.0]], requires_grad=True)
    RankingMargin(Identity(), side())(probe, torch.tensor([0])).sum().backward()
    assert probe.grad is not None and probe.grad[0, 0] < 0  # away from the match at (1, 0)


def test_ap_and_first_hit_agree_with_the_evaluator() -> None:
    g = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    q = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    s = QueryGallery(CosineMetric(), g, Q_PIDS, Q_CAMS, G_PIDS, G_CAMS)
    dist = s.distances(q)
    full = evaluate_distances(dist, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    assert np.allclose(s.ap(dist[1:], torch.tensor([1, 2])), full.per_query_ap[1:])
    assert np.nanmean(s.first_hit(dist, torch.arange(3))) == pytest.approx(full.cmc[1])
    assert np.allclose(s.chance_ap(), chance_ranking(Q_PIDS, G_PIDS, Q_CAMS, G_CAMS).per_query_ap)


def test_hardest_negatives_by_nearest_image_distractors_apart() -> None:
    probes = torch.tensor([[0.0, 0.0], [0.9, 0.0], [0.0, 1.0]])
    s = side()
    groups = hardest_negatives(s, s.distances(probes), 2)
    # probe 0: pid 3 (d 0.25), then pid 2 (d 4) — the distractors at d 9 and 16 are single-image groups
    assert groups[0].tolist() == [3, 2]
    # probe 2 (pid 2): pid 3 (0.25), pid 1's cam-0 image (1.0)
    assert groups[2].tolist() == [3, 1]
    with pytest.raises(MetricAttackError, match="identity groups"):
        hardest_negatives(s, s.distances(probes), 10)


def test_probes_without_a_match_are_refused() -> None:
    s = QueryGallery(EuclideanMetric(), GALLERY, [4], [0], G_PIDS, G_CAMS)
    assert not s.has_match().any() and np.isnan(s.chance_ap()).all()
    with pytest.raises(MetricAttackError, match="true match"):
        RankingMargin(Identity(), s)(torch.zeros(1, 2), torch.tensor([0]))


def test_first_hit_counts_ties_as_the_evaluator_does() -> None:
    # probe 2 (pid 2, cam 0) at the origin: its match (gallery 2) and a distractor (gallery 3) both at distance 1
    g = torch.tensor([[5.0, 0.0], [5.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [9.0, 9.0], [9.0, 0.0], [0.0, 9.0]])
    s = QueryGallery(EuclideanMetric(), g, Q_PIDS, Q_CAMS, G_PIDS, G_CAMS)
    dist = s.distances(torch.zeros(3, 2))
    hit = s.first_hit(dist, torch.arange(3))
    assert hit[2] == 0.5  # its match (1,0) and a distractor (-1,0) tie at distance 1
    assert hit[2] == pytest.approx(evaluate_distances(dist[2:], Q_PIDS[2:], G_PIDS, Q_CAMS[2:], G_CAMS).cmc[1])
