"""Speed of the ranking evaluator on a Market-1501-size problem (3,368 × 15,913, 751 ids, 6 cams).

Times :func:`evaluate_distances` (fast path) against :func:`evaluate_distances_reference`
(per-query stable argsort) on the same float32 distance matrices, measured in the same run:

* ``realistic``: squared Euclidean distances between synthetic features (identity centre +
  camera shift + noise) tuned so the mAP is about 0.7: true matches mostly near the top;
* ``random``: uniformly random distances (the worst case: positives anywhere in the row).

Asserts that both evaluators give the same CMC / mAP / mINP (to 1e-6; the matrices are
tie-free) and prints times and ratios. Run: ``nice -n 10 .venv/bin/python benchmarks/bench_ranking.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    labels = market_like_labels(rng)
    cases = {"realistic": realistic_distances(*labels, rng), "random": rng.random((NUM_QUERY, NUM_GALLERY), dtype=np.float32)}
    print(f"Market-1501 size: {NUM_QUERY} x {NUM_GALLERY}, {NUM_IDS} ids, {NUM_CAMS} cams, float32")
    for name, dist in cases.items():
        for ap in ("market", "noninterp"):
            t_fast, fast = timed(evaluate_distances, dist, *labels, ap=ap, repeat=args.repeat)
            t_ref, ref = timed(evaluate_distances_reference, dist, *labels, ap=ap, repeat=1)
            same(fast, ref)
            print(
                f"{name:9s} ap={ap:9s} fast {t_fast:6.3f} s  reference {t_ref:6.3f} s  speed-up x{t_ref / t_fast:6.1f}  "
                f"| rank-1 {fast.cmc[1]:.4f} mAP {fast.mAP:.4f} mINP {fast.mINP:.4f} (identical to reference)"
            )


if __name__ == "__main__":
    main()
