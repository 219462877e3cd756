"""Speed of the ranking evaluator on a Market-1501-size problem (3,368 × 15,913, 751 ids, 6 cams).

Times :func:`evaluate_distances` (fast path) under both tie rules against
:func:`evaluate_distances_reference` (per-query stable argsort) on the same float32 distance
matrices, measured in the same run:

* ``realistic``: squared Euclidean distances between synthetic features (identity centre +
  camera shift + noise) tuned so the mAP is about 0.7: true matches mostly near the top;
* ``random``: uniformly random distances (the worst case: positives anywhere in the row);
* ``quantised``: ``realistic`` rounded to 1/64 (about 20 distinct values per row: large tie groups);
* ``constant``: every distance equal (a constant model: one tie group per query; the
  expectation equals the chance level of :mod:`metricattack.evaluation.chance`).

``gallery-order`` (ties by gallery index) is the evaluator of metricattack before tie-aware
ranking, line for line plus the tie-group bookkeeping; ``expected`` is the default. Asserts that
the fast path and the reference agree (CMC / mAP / mINP to 1e-6) under each rule and that
``constant`` scores chance; prints times, ratios and how much the rules differ (float32
distances of real size hold a few exact ties even without quantisation).
The reference is timed once per case (``--reference-queries`` limits it to the first queries on
the tie-heavy cases, where its exact-integer binomials are slow). Run:
``nice -n 10 .venv/bin/python benchmarks/bench_ranking.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from metricattack.evaluation.chance import chance_ranking
from metricattack.evaluation.ranking import RankingResult, evaluate_distances, evaluate_distances_reference

NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMS = 3368, 15913, 751, 6
NUM_DISTRACTORS, NUM_JUNK = 2798, 1000


def market_like_labels(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``(q_pids, g_pids, q_camids, g_camids)`` with Market-1501's sizes (pid 0 distractor, −1 junk)."""
    ids = np.arange(1, NUM_IDS + 1)
    q_pids = np.concatenate([ids, rng.choice(ids, NUM_QUERY - NUM_IDS)])
    q_camids = rng.integers(0, NUM_CAMS, NUM_QUERY)
    real = NUM_GALLERY - NUM_DISTRACTORS - NUM_JUNK
    g_pids = np.concatenate(
        [np.repeat(ids, 4), rng.choice(ids, real - 4 * NUM_IDS), np.zeros(NUM_DISTRACTORS, int), -np.ones(NUM_JUNK, int)]
    )
    g_camids = rng.integers(0, NUM_CAMS, NUM_GALLERY)
    perm = rng.permutation(NUM_GALLERY)
    return q_pids, g_pids[perm], q_camids, g_camids[perm]


def realistic_distances(
    q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray, rng: np.random.Generator, noise: float = 0.98
) -> np.ndarray:
    """Squared Euclidean distances ``[Q, G]`` (float32) of features = identity + camera + noise."""
    dim = 64
    centres = torch.from_numpy(rng.standard_normal((NUM_IDS + 1, dim)).astype(np.float32)) / dim**0.5
    cams = torch.from_numpy(rng.standard_normal((NUM_CAMS, dim)).astype(np.float32)) * 0.3 / dim**0.5

    def feats(pids: np.ndarray, camids: np.ndarray) -> torch.Tensor:
        base = centres[np.clip(pids, 0, None)]
        base[torch.from_numpy(pids <= 0)] = (
            torch.from_numpy(rng.standard_normal((int((pids <= 0).sum()), dim)).astype(np.float32)) / dim**0.5
        )
        return base + cams[camids] + noise * torch.from_numpy(rng.standard_normal((len(pids), dim)).astype(np.float32)) / dim**0.5

    q, g = feats(q_pids, q_camids), feats(g_pids, g_camids)
    return torch.cdist(q, g).pow_(2).numpy()


def timed(fn, *args, repeat: int, **kwargs) -> tuple[float, RankingResult]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return best, result


def same(a: RankingResult, b: RankingResult) -> None:
    assert a.num_valid_queries == b.num_valid_queries
    for k in a.cmc:
        assert abs(a.cmc[k] - b.cmc[k]) <= 1e-6, (k, a.cmc[k], b.cmc[k])
    assert abs(a.mAP - b.mAP) <= 1e-6 and abs(a.mINP - b.mINP) <= 1e-6, (a, b)
    assert np.allclose(a.per_query_ap, b.per_query_ap, atol=1e-6, equal_nan=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fast-path repetitions (best time is reported)")
    parser.add_argument("--reference-queries", type=int, default=300, help="queries the reference evaluates on tie-heavy cases")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    labels = market_like_labels(rng)
    realistic = realistic_distances(*labels, rng)
    cases = {
        "realistic": realistic,
        "random": rng.random((NUM_QUERY, NUM_GALLERY), dtype=np.float32),
        "quantised": np.round(realistic * 64) / 64,
        "constant": np.full((NUM_QUERY, NUM_GALLERY), 0.5, dtype=np.float32),
    }
    print(f"Market-1501 size: {NUM_QUERY} x {NUM_GALLERY}, {NUM_IDS} ids, {NUM_CAMS} cams, float32")
    for name, dist in cases.items():
        tied = name in ("quantised", "constant")
        subset = args.reference_queries if tied else NUM_QUERY
        for ap in ("market", "noninterp"):
            times, results = {}, {}
            for ties in ("expected", "gallery-order"):
                times[ties], results[ties] = timed(evaluate_distances, dist, *labels, ap=ap, ties=ties, repeat=args.repeat)
                t_ref, ref = timed(
                    evaluate_distances_reference, dist[:subset], labels[0][:subset], labels[1], labels[2][:subset], labels[3],
                    ap=ap, ties=ties, repeat=1,
                )  # fmt: skip
                fast_subset = evaluate_distances(
                    dist[:subset], labels[0][:subset], labels[1], labels[2][:subset], labels[3], ap=ap, ties=ties
                )
                same(fast_subset, ref)
                times[f"reference {ties}"] = t_ref * NUM_QUERY / subset
            if name == "constant":
                same(results["expected"], chance_ranking(*labels, ap=ap))
            fast = results["expected"]
            print(
                f"{name:9s} ap={ap:9s} expected {times['expected']:6.3f} s  gallery-order {times['gallery-order']:6.3f} s  "
                f"(x{times['expected'] / times['gallery-order']:4.2f})  reference {times['reference expected']:7.2f} s"
                f"{' (extrapolated)' if tied else ''}  speed-up x{times['reference expected'] / times['expected']:6.1f}  "
                f"| expected rank-1 {fast.cmc[1]:.4f} mAP {fast.mAP:.4f} mINP {fast.mINP:.4f}; "
                f"gallery-order - expected: mAP {results['gallery-order'].mAP - fast.mAP:+.2e} "
                f"mINP {results['gallery-order'].mINP - fast.mINP:+.2e} rank-1 {results['gallery-order'].cmc[1] - fast.cmc[1]:+.2e}"
            )


if __name__ == "__main__":
    main()
