"""Ranking metrics: exact values on hand-made rankings, and fast path == reference evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metricattack.errors import MetricAttackError
from metricattack.evaluation import ranking
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
        # 0.2: tie rule ranks the lower gallery index first -> g4 W (0), g8 P (1). n = 1, r = 1.
        [0.90, 0.00, 0.50, 0.10, 0.20, 0.60, 0.70, 0.80, 0.20, 0.95],
        # C (pid 3, c1): junk g3 first (ignored); g6 P and g7 W tie at 0.1, g6 has the lower
        # index -> g6 at r = 0. n = 1.
        [0.30, 0.40, 0.50, 0.00, 0.60, 0.70, 0.10, 0.10, 0.80, 0.90],
        # D (pid 4): no gallery image of pid 4 -> no valid match, excluded.
        [0.50, 0.40, 0.30, 0.20, 0.10, 0.00, 0.60, 0.70, 0.80, 0.90],
        # E (pid 5, c2): its only gallery image g9 has the same camera -> ignored -> excluded.
        [0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30, 0.20, 0.10, 0.00],
    ],
    dtype=np.float32,
)
# market AP of A: i=0,r=1: prec 1/2, old 0/1   -> (0 + 1/2)/2   = 1/4
#                 i=1,r=3: prec 2/4, old 1/3   -> (1/3 + 1/2)/2 = 5/12
#                 i=2,r=5: prec 3/6, old 2/5   -> (2/5 + 1/2)/2 = 9/20
#                 AP = (1/4 + 5/12 + 9/20)/3 = (67/60)/3 = 67/180
# market AP of B: i=0,r=1: (0 + 1/2)/2 = 1/4.  C: i=0,r=0: old = 1, prec 1 -> 1.
# noninterp AP: A (1/2 + 2/4 + 3/6)/3 = 1/2, B 1/2, C 1.
# INP = n / (r_last + 1): A 3/6, B 1/2, C 1/1.  First hits: A r=1, B r=1, C r=0.
EXPECTED_AP = {"market": [67 / 180, 1 / 4, 1.0], "noninterp": [1 / 2, 1 / 2, 1.0]}


@pytest.mark.parametrize("evaluate", EVALUATORS)
@pytest.mark.parametrize("ap", ["market", "noninterp"])
def test_hand_made_ranking_exact(evaluate, ap):
    res = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap=ap, ranks=(1, 2, 5, 20))
    assert res.num_queries == 5 and res.num_valid_queries == 3
    assert res.cmc == {1: pytest.approx(1 / 3), 2: 1.0, 5: 1.0, 20: 1.0}
    assert res.per_query_ap[:3] == pytest.approx(EXPECTED_AP[ap], abs=1e-12)
    assert np.isnan(res.per_query_ap[3:]).all()
    assert res.mAP == pytest.approx(sum(EXPECTED_AP[ap]) / 3, abs=1e-12)
    assert res.mINP == pytest.approx((1 / 2 + 1 / 2 + 1) / 3, abs=1e-12)
    assert res.ap_convention == ap and "gallery index" in res.tie_rule


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


def test_negative_zero_ties_with_zero():
    # -0.0 == 0.0: a tie, so the lower gallery index (the wrong match g0) comes first
    dist = np.array([[0.0, -0.0]], dtype=np.float32)
    for evaluate in EVALUATORS:
        res = evaluate(dist, [1], [2, 1], [0], [1, 1])
        assert res.cmc[1] == 0.0 and res.mAP == pytest.approx(0.25)


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
def test_fast_equals_reference(seed, nq, ng, dtype, ties, ap):
    problem = _random_problem(seed, nq, ng, dtype, ties)
    fast = evaluate_distances(*problem, ap=ap)
    ref = evaluate_distances_reference(*problem, ap=ap)
    assert fast.cmc == ref.cmc and fast.num_valid_queries == ref.num_valid_queries
    np.testing.assert_allclose(fast.per_query_ap, ref.per_query_ap, atol=1e-12, equal_nan=True)
    assert fast.mINP == pytest.approx(ref.mINP, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_blocks_and_uniform_random_rows(monkeypatch, dtype):
    # blocks of one or a few rows, and positives spread anywhere in the row (worst case)
    monkeypatch.setattr(ranking, "BLOCK_ELEMENTS", 700)
    rng = np.random.default_rng(7)
    nq, ng = 23, 311
    args = (
        rng.random((nq, ng)).astype(dtype),
        rng.integers(0, 5, nq),
        rng.integers(-1, 5, ng),
        rng.integers(0, 2, nq),
        rng.integers(0, 2, ng),
    )
    fast, ref = evaluate_distances(*args), evaluate_distances_reference(*args)
    assert fast.cmc == ref.cmc
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
        ({"ranks": (0,)}, "CMC ranks"),
        ({"q_pids": [], "q_camids": [], "dist": np.zeros((0, 4))}, "query set is empty"),
    ],
)
def test_bad_input_errors(kwargs, message):
    args = {"dist": np.zeros((3, 4)), "q_pids": [1, 2, 3], "g_pids": [1, 2, 3, 4], "q_camids": [0, 0, 0], "g_camids": [1, 1, 1, 1]}
    options = {k: kwargs.pop(k) for k in ("ap", "ranks") if k in kwargs}
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
    assert d["num_valid_queries"] == 3 and "per_query_ap" not in d
