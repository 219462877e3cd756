"""Ranking metrics: exact values on hand-made rankings (with ties: against every order of the
tied items), a constant model at exactly chance, and fast path == reference evaluator."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

from metricattack.errors import MetricAttackError
from metricattack.evaluation import ranking
from metricattack.evaluation.chance import chance_ranking
from metricattack.evaluation.ranking import (
    evaluate_distance_blocks,
    evaluate_distances,
    evaluate_distances_reference,
)

EVALUATORS = [evaluate_distances, evaluate_distances_reference]

# Gallery (index: pid, camera):
#   g0 (1, c0)  g1 (2, c1)  g2 (1, c1)  g3 (-1 junk, c1)  g4 (0 distractor, c2)
#   g5 (1, c2)  g6 (3, c0)  g7 (1, c2)  g8 (2, c0)        g9 (5, c2)
G_PIDS = [1, 2, 1, -1, 0, 1, 3, 1, 2, 5]
G_CAMS = [0, 1, 1, 1, 2, 2, 0, 2, 0, 2]
Q_PIDS = [1, 2, 3, 4, 5]
Q_CAMS = [0, 1, 1, 0, 2]
DIST = np.array(
    [
        # A (pid 1, c0): g0 same pid+cam -> ignored, g3 junk -> ignored. Valid order:
        # g1 W (pos 0), g2 P (1), g4 distractor W (2), g5 P (3), g6 W (4), g7 P (5), g8, g9.
        # Positives at r = 1, 3, 5 (n = 3).
        [0.05, 0.10, 0.20, 0.25, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80],
        # B (pid 2, c1): g1 same pid+cam -> ignored (closest!), g3 junk ignored. g4 and g8 tie at
        # 0.2: gallery order ranks the lower gallery index first -> g4 W (0), g8 P (1). n = 1, r = 1.
        [0.90, 0.00, 0.50, 0.10, 0.20, 0.60, 0.70, 0.80, 0.20, 0.95],
        # C (pid 3, c1): junk g3 first (ignored); g6 P and g7 W tie at 0.1, g6 has the lower
        # index -> g6 at r = 0 in gallery order. n = 1.
        [0.30, 0.40, 0.50, 0.00, 0.60, 0.70, 0.10, 0.10, 0.80, 0.90],
        # D (pid 4): no gallery image of pid 4 -> no valid match, excluded.
        [0.50, 0.40, 0.30, 0.20, 0.10, 0.00, 0.60, 0.70, 0.80, 0.90],
        # E (pid 5, c2): its only gallery image g9 has the same camera -> ignored -> excluded.
        [0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30, 0.20, 0.10, 0.00],
    ],
    dtype=np.float32,
)

# Gallery order (ties by index):
# market AP of A: i=0,r=1: prec 1/2, old 0/1   -> (0 + 1/2)/2   = 1/4
#                 i=1,r=3: prec 2/4, old 1/3   -> (1/3 + 1/2)/2 = 5/12
#                 i=2,r=5: prec 3/6, old 2/5   -> (2/5 + 1/2)/2 = 9/20
#                 AP = (1/4 + 5/12 + 9/20)/3 = (67/60)/3 = 67/180
# market AP of B: i=0,r=1: (0 + 1/2)/2 = 1/4.  C: i=0,r=0: old = 1, prec 1 -> 1.
# noninterp AP: A (1/2 + 2/4 + 3/6)/3 = 1/2, B 1/2, C 1.
# INP = n / (r_last + 1): A 3/6, B 1/2, C 1/1.  First hits: A r=1, B r=1, C r=0.
# Expected over the tie orders (A has no tie): B's and C's one positive shares the top two
# positions with a wrong match, first or second with probability 1/2 each: noninterp AP
# (1 + 1/2)/2 = 3/4, market AP ((1 + 1)/2 + (0 + 1/2)/2)/2 = 5/8, INP 3/4, rank-1 1/2.
EXPECTED_AP = {
    "gallery-order": {"market": [67 / 180, 1 / 4, 1.0], "noninterp": [1 / 2, 1 / 2, 1.0]},
    "expected": {"market": [67 / 180, 5 / 8, 5 / 8], "noninterp": [1 / 2, 3 / 4, 3 / 4]},
}
EXPECTED_INP = {"gallery-order": (1 / 2 + 1 / 2 + 1) / 3, "expected": (1 / 2 + 3 / 4 + 3 / 4) / 3}


@pytest.mark.parametrize("evaluate", EVALUATORS)
@pytest.mark.parametrize("ap", ["market", "noninterp"])
@pytest.mark.parametrize("ties", ["expected", "gallery-order"])
def test_hand_made_ranking_exact(evaluate, ap, ties):
    res = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap=ap, ranks=(1, 2, 5, 20), ties=ties)
    assert res.num_queries == 5 and res.num_valid_queries == 3
    assert res.cmc == {1: pytest.approx(1 / 3), 2: 1.0, 5: 1.0, 20: 1.0}  # rank-1 (0 + 1 + 0)/3 or (0 + 1/2 + 1/2)/3
    assert res.per_query_ap[:3] == pytest.approx(EXPECTED_AP[ties][ap], abs=1e-12)
    assert np.isnan(res.per_query_ap[3:]).all()
    assert res.mAP == pytest.approx(sum(EXPECTED_AP[ties][ap]) / 3, abs=1e-12)
    assert res.mINP == pytest.approx(EXPECTED_INP[ties], abs=1e-12)
    assert res.ap_convention == ap and res.ties == ties and res.to_dict()["tie_rule"] == ranking.TIE_RULES[ties]


@pytest.mark.parametrize("evaluate", EVALUATORS)
def test_first_hit_at_top_market_ap_uses_precision_one_before_it(evaluate):
    # one query, pid 7 camera 0; positives (other camera) at valid positions 0 and 2
    # market: i=0,r=0: (1 + 1)/2 = 1; i=1,r=2: (1/2 + 2/3)/2 = 7/12 -> AP = (1 + 7/12)/2 = 19/24
    # noninterp: (1 + 2/3)/2 = 5/6; INP = 2/3
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    args = (dist, [7], [7, 8, 7, 9], [0], [1, 1, 1, 1])
    market = evaluate(*args, ap="market")
    noninterp = evaluate(*args, ap="noninterp")
    assert market.mAP == pytest.approx(19 / 24, abs=1e-12)
    assert noninterp.mAP == pytest.approx(5 / 6, abs=1e-12)
    assert market.mINP == pytest.approx(2 / 3) and market.cmc[1] == 1.0


@pytest.mark.parametrize("evaluate", EVALUATORS)
def test_negative_zero_ties_with_zero(evaluate):
    # -0.0 == 0.0: a tie. Gallery order puts the lower index (the wrong match g0) first; the
    # expectation puts the positive first or second with probability 1/2 (market AP (1 + 1/4)/2)
    dist = np.array([[0.0, -0.0]], dtype=np.float32)
    by_index = evaluate(dist, [1], [2, 1], [0], [1, 1], ties="gallery-order")
    assert by_index.cmc[1] == 0.0 and by_index.mAP == pytest.approx(0.25)
    expected = evaluate(dist, [1], [2, 1], [0], [1, 1])
    assert expected.cmc[1] == 0.5 and expected.mAP == pytest.approx(5 / 8) and expected.ties == "expected"


# ----------------------------------------------------------------------------- ties against brute force


def _brute_force(dist_row, q_pid, q_cam, g_pids, g_cams, ranks):
    """``(market AP, noninterp AP, {k: P(hit in top k)}, INP)`` averaged over every order of the tied items."""
    valid = [g for g in range(len(g_pids)) if g_pids[g] != -1 and not (g_pids[g] == q_pid and g_cams[g] == q_cam)]
    groups = [[g for g in valid if dist_row[g] == v] for v in sorted({dist_row[g] for g in valid})]
    totals = np.zeros(3 + len(ranks))
    orders = list(itertools.product(*(itertools.permutations(group) for group in groups)))
    for parts in orders:
        hit = np.array([g_pids[g] == q_pid for part in parts for g in part], dtype=float)
        n, at = hit.sum(), np.flatnonzero(hit)
        prec = np.cumsum(hit) / np.arange(1, len(hit) + 1)
        old = np.array([1.0 if r == 0 else prec[r - 1] for r in at])
        totals += [((old + prec[at]) / 2).sum() / n, prec[at].sum() / n, n / (at[-1] + 1), *(float(at[0] < k) for k in ranks)]
    mean = totals / len(orders)
    return mean[0], mean[1], dict(zip(ranks, mean[3:], strict=True)), mean[2]


# Gallery: pid, camera. Query 0 (pid 1, cam 0): g0 same camera (ignored), g6 junk.
TIE_G_PIDS = [1, 1, 2, 1, 3, 1, -1, 2, 1, 4]
TIE_G_CAMS = [0, 1, 1, 2, 1, 2, 0, 2, 2, 1]
TIE_DIST = np.array(
    [
        # pid 1: tie group {g1 P, g2 W, g3 P} at the top, then g4 W, then {g5 P, g7 W, g8 P, g9 W} last
        [0.0, 0.1, 0.1, 0.1, 0.2, 0.3, 0.0, 0.3, 0.3, 0.3],
        # pid 2: g2 (same camera) ignored; {g1, g4, g7 P} tie in the middle, {g8, g9} after
        [0.5, 0.2, 0.0, 0.1, 0.2, 0.0, 0.4, 0.2, 0.3, 0.3],
        # pid 1, cam 1 (g1 ignored): every valid item tied (a constant row)
        [0.7] * 10,
        # pid 4: a group of one positive after a tie of wrong matches
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.3],
    ]
)
TIE_Q_PIDS, TIE_Q_CAMS = [1, 2, 1, 4], [0, 1, 1, 0]


@functools.cache
def _brute_force_tie_queries(ranks):
    return [_brute_force(TIE_DIST[q], TIE_Q_PIDS[q], TIE_Q_CAMS[q], TIE_G_PIDS, TIE_G_CAMS, ranks) for q in range(len(TIE_DIST))]


@pytest.mark.parametrize("evaluate", EVALUATORS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_equal_the_average_over_every_tie_order(evaluate, dtype):
    ranks = (1, 2, 3, 4, 6, 9)
    dist = TIE_DIST.astype(dtype)
    res = {ap: evaluate(dist, TIE_Q_PIDS, TIE_G_PIDS, TIE_Q_CAMS, TIE_G_CAMS, ap=ap, ranks=ranks) for ap in ("market", "noninterp")}
    brute = _brute_force_tie_queries(ranks)
    assert res["market"].num_valid_queries == 4
    assert res["market"].per_query_ap == pytest.approx([b[0] for b in brute], abs=1e-12)
    assert res["noninterp"].per_query_ap == pytest.approx([b[1] for b in brute], abs=1e-12)
    for k in ranks:
        assert res["market"].cmc[k] == pytest.approx(np.mean([b[2][k] for b in brute]), abs=1e-12)
    assert res["market"].mINP == pytest.approx(np.mean([b[3] for b in brute]), abs=1e-12)
    # the ties are what this test is about: gallery order scores differently
    by_index = evaluate(dist, TIE_Q_PIDS, TIE_G_PIDS, TIE_Q_CAMS, TIE_G_CAMS, ranks=ranks, ties="gallery-order")
    assert abs(by_index.mAP - res["market"].mAP) > 0.01 and abs(by_index.cmc[1] - res["market"].cmc[1]) > 0.01


@pytest.mark.parametrize("evaluate", EVALUATORS)
@pytest.mark.parametrize("ap", ["market", "noninterp"])
def test_a_constant_model_scores_exactly_chance(evaluate, ap):
    # all features equal -> all distances equal: every query's valid items form one tie group
    rng = np.random.default_rng(3)
    nq, ng = 30, 120
    ids = (rng.integers(1, 9, nq), rng.integers(-1, 9, ng), rng.integers(0, 3, nq), rng.integers(0, 3, ng))
    ranks = tuple(range(1, ng + 2))
    res = evaluate(np.full((nq, ng), 0.25, dtype=np.float32), *ids, ap=ap, ranks=ranks)
    chance = chance_ranking(*ids, ap=ap, ranks=ranks)
    assert res.num_valid_queries == chance.num_valid_queries > 20
    np.testing.assert_allclose(res.per_query_ap, chance.per_query_ap, rtol=0, atol=1e-13, equal_nan=True)
    assert res.mAP == pytest.approx(chance.mAP, abs=1e-13) and res.mINP == pytest.approx(chance.mINP, abs=1e-13)
    assert res.cmc == pytest.approx(chance.cmc, abs=1e-13)
    by_index = evaluate(np.full((nq, ng), 0.25, dtype=np.float32), *ids, ap=ap, ranks=ranks, ties="gallery-order")
    assert by_index.mAP != pytest.approx(chance.mAP, abs=1e-3)  # gallery order is not chance


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_ties_both_rules_give_the_same_numbers_bit_for_bit(dtype):
    for seed in range(3):
        problem = _random_problem(seed, 25, 140, dtype)
        for ap in ("market", "noninterp"):
            expected = evaluate_distances(*problem, ap=ap)
            by_index = evaluate_distances(*problem, ap=ap, ties="gallery-order")
            assert expected.cmc == by_index.cmc and expected.mAP == by_index.mAP and expected.mINP == by_index.mINP
            np.testing.assert_array_equal(expected.per_query_ap, by_index.per_query_ap)


def test_no_valid_query_at_all():
    res = evaluate_distances(np.zeros((2, 3)), [1, 2], [1, 3, -1], [0, 0], [0, 1, 1])
    assert res.num_valid_queries == 0 and res.mAP == 0.0 and res.cmc[1] == 0.0
    assert res.to_dict(include_per_query=True)["per_query_ap"] == [None, None]


def _random_problem(seed: int, nq: int, ng: int, dtype=np.float32, ties: bool = False):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, 8, nq)
    g_pids = rng.integers(-1, 8, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    # a realistic-ish matrix: positives pulled towards the top, so candidate sets vary in size
    dist = rng.random((nq, ng)) + 0.6 * (q_pids[:, None] != g_pids[None, :])
    dist = np.round(dist, 1) if ties else dist
    return dist.astype(dtype), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize(
    "seed,nq,ng,dtype,ties",
    [
        (0, 1, 1, np.float32, False),
        (1, 7, 50, np.float32, False),
        (2, 40, 300, np.float32, False),
        (3, 33, 257, np.float64, False),
        (4, 25, 200, np.float16, True),
        (5, 30, 120, np.float32, True),
        (6, 30, 120, np.float64, True),
    ],
)
@pytest.mark.parametrize("ap", ["market", "noninterp"])
@pytest.mark.parametrize("rule", ["expected", "gallery-order"])
def test_fast_equals_reference(seed, nq, ng, dtype, ties, ap, rule):
    problem = _random_problem(seed, nq, ng, dtype, ties)
    fast = evaluate_distances(*problem, ap=ap, ties=rule)
    ref = evaluate_distances_reference(*problem, ap=ap, ties=rule)
    assert fast.cmc == pytest.approx(ref.cmc, abs=1e-12) and fast.num_valid_queries == ref.num_valid_queries
    np.testing.assert_allclose(fast.per_query_ap, ref.per_query_ap, atol=1e-12, equal_nan=True)
    assert fast.mINP == pytest.approx(ref.mINP, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decimals", [None, 1])
def test_small_blocks_and_uniform_random_rows(monkeypatch, dtype, decimals):
    # blocks of one or a few rows, and positives spread anywhere in the row (worst case), with and without ties
    monkeypatch.setattr(ranking, "BLOCK_ELEMENTS", 700)
    rng = np.random.default_rng(7)
    nq, ng = 23, 311
    dist = rng.random((nq, ng))
    args = (
        (dist if decimals is None else np.round(dist, decimals)).astype(dtype),
        rng.integers(0, 5, nq),
        rng.integers(-1, 5, ng),
        rng.integers(0, 2, nq),
        rng.integers(0, 2, ng),
    )
    fast, ref = evaluate_distances(*args), evaluate_distances_reference(*args)
    assert fast.cmc == pytest.approx(ref.cmc, abs=1e-12) and fast.mINP == pytest.approx(ref.mINP, abs=1e-12)
    np.testing.assert_allclose(fast.per_query_ap, ref.per_query_ap, atol=1e-12, equal_nan=True)


def test_blocks_equal_one_shot_and_input_untouched():
    dist, *ids = _random_problem(9, 20, 90)
    before = dist.copy()
    one_shot = evaluate_distances(dist, *ids)
    blocks = evaluate_distance_blocks([(0, dist[:7]), (7, torch.from_numpy(dist[7:8])), (8, dist[8:])], *ids)
    assert blocks.cmc == one_shot.cmc and blocks.mAP == one_shot.mAP and blocks.mINP == one_shot.mINP
    np.testing.assert_array_equal(dist, before)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dist": np.zeros((2, 3))}, "shape [3, 4]"),
        ({"dist": np.full((3, 4), np.nan)}, "NaN"),
        ({"q_camids": [0, 0]}, "q_camids"),
        ({"ap": "voc"}, "unknown AP convention 'voc'"),
        ({"ties": "random"}, "unknown tie rule 'random'; expected one of expected, gallery-order"),
        ({"ranks": (0,)}, "CMC ranks"),
        ({"q_pids": [], "q_camids": [], "dist": np.zeros((0, 4))}, "query set is empty"),
    ],
)
def test_bad_input_errors(kwargs, message):
    args = {"dist": np.zeros((3, 4)), "q_pids": [1, 2, 3], "g_pids": [1, 2, 3, 4], "q_camids": [0, 0, 0], "g_camids": [1, 1, 1, 1]}
    options = {k: kwargs.pop(k) for k in ("ap", "ranks", "ties") if k in kwargs}
    args.update(kwargs)
    for evaluate in EVALUATORS:
        with pytest.raises(MetricAttackError, match=message.replace("[", r"\[").replace("]", r"\]")):
            evaluate(args["dist"], args["q_pids"], args["g_pids"], args["q_camids"], args["g_camids"], **options)


def test_blocks_must_cover_queries_in_order():
    dist, *ids = _random_problem(3, 6, 10)
    with pytest.raises(MetricAttackError, match="expected a block at row 3"):
        evaluate_distance_blocks([(0, dist[:3]), (4, dist[4:])], *ids)
    with pytest.raises(MetricAttackError, match="covered 3 of 6"):
        evaluate_distance_blocks([(0, dist[:3])], *ids)


def test_result_to_dict_is_json_ready():
    res = evaluate_distances(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    d = res.to_dict()
    assert d["cmc"]["1"] == pytest.approx(1 / 3) and d["ap_convention"] == "market"
    assert d["num_valid_queries"] == 3 and "per_query_ap" not in d and d["ties"] == "expected"
