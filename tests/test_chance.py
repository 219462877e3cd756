"""Chance level of a random ranking: closed forms against exhaustive and sampled rankings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from metricattack.evaluation.chance import chance_ranking
from metricattack.evaluation.ranking import evaluate_distances, match_counts

# gallery: three images of pid 1 (cams 1, 2, 0), two of pid 2 (cams 1, 0), junk, a distractor
G_PIDS = np.array([1, 1, 1, 2, 2, -1, 0])
G_CAMS = np.array([1, 2, 0, 1, 0, 1, 1])


def test_match_counts_follow_the_protocol() -> None:
    positives, valid = match_counts([1, 2, 3], G_PIDS, [0, 0, 0], G_CAMS)
    # pid 1 cam 0: its cam-0 image and the junk are ignored -> 2 positives among 5 valid items
    assert positives.tolist() == [2, 1, 0] and valid.tolist() == [5, 5, 6]


@pytest.mark.parametrize("ap", ["market", "noninterp"])
def test_chance_equals_the_average_over_every_ordering(ap: str) -> None:
    """Every one of the 7! orderings of the gallery, for two queries: the exact expectation."""
    perms = np.array(list(itertools.permutations(range(7))), dtype=np.float64)
    dist = np.concatenate([perms, perms, perms[:1]])  # queries: pid 1, pid 2, pid 3 (no match)
    q_pids = np.repeat([1, 2, 3], [len(perms), len(perms), 1])
    q_cams = np.zeros(len(dist), dtype=np.int64)
    brute = evaluate_distances(dist, q_pids, G_PIDS, q_cams, G_CAMS, ap=ap, ranks=(1, 2, 3, 9))
    exact = chance_ranking([1, 2, 3], G_PIDS, [0, 0, 0], G_CAMS, ap=ap, ranks=(1, 2, 3, 9))
    assert exact.num_valid_queries == 2 and exact.num_queries == 3
    assert exact.mAP == pytest.approx(brute.mAP, abs=1e-12)
    assert exact.mINP == pytest.approx(brute.mINP, abs=1e-12)
    for k in (1, 2, 3, 9):
        assert exact.cmc[k] == pytest.approx(brute.cmc[k], abs=1e-12)
    assert exact.cmc[9] == 1.0 and np.isnan(exact.per_query_ap[2])


def test_chance_matches_sampled_rankings_on_a_larger_gallery() -> None:
    """4 positives among 80 valid items: the closed form within 4 standard errors of 20,000 draws."""
    rng = np.random.default_rng(0)
    g_pids = np.array([1] * 4 + list(range(2, 78)))
    g_cams = np.ones(80, dtype=np.int64)
    draws = 20_000
    sampled = evaluate_distances(
        rng.random((draws, 80)), np.ones(draws, dtype=np.int64), g_pids, np.zeros(draws, dtype=np.int64), g_cams, ranks=(1, 10)
    )
    exact = chance_ranking([1], g_pids, [0], g_cams, ranks=(1, 10))
    stderr = np.nanstd(sampled.per_query_ap) / np.sqrt(draws)
    assert abs(exact.mAP - sampled.mAP) < 4 * stderr
    assert exact.cmc[1] == pytest.approx(4 / 80)
    assert abs(exact.cmc[10] - sampled.cmc[10]) < 4 * np.sqrt(exact.cmc[10] * (1 - exact.cmc[10]) / draws)


def test_chance_without_any_valid_query_is_zero() -> None:
    res = chance_ranking([5], G_PIDS, [0], G_CAMS)
    assert res.num_valid_queries == 0 and res.mAP == 0.0
