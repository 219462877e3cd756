"""Benchmark: fitting XQDA / KISSME on Market-1501-sized training features.

Synthetic stand-in for deep features: 12,936 L2-normalised vectors of dimension 2,048 from 751
identities and 6 cameras (the Market-1501 training split), with class means in a 256-d subspace
plus correlated noise. Times:

* XQDA fit (closed-form covariances + generalised eigenproblem), KISSME fit (raw and PCA-128),
* baseline measured in the same run: one float64 Gram product ``XᵀX`` of the same matrix,
  the floor of any method that reads the ``N×D²`` second moments,
* Mahalanobis distances ``[Q, G]`` as projection + Euclidean vs Euclidean on raw features
  (3,368 queries × 15,913 gallery, Market-1501 test sizes, float32).

Run:  nice -n 10 .venv/bin/python benchmarks/bench_xqda.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from metricattack.metrics.kissme import fit_kissme
from metricattack.metrics.xqda import fit_xqda

NUM_IMAGES, DIM, NUM_IDS, NUM_CAMS = 12_936, 2_048, 751, 6
NUM_QUERY, NUM_GALLERY = 3_368, 15_913


def synthetic_features(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features [N, D] float32 L2-normalised, pids [N], camids [N])``."""
    rng = np.random.default_rng(seed)
    pids = np.sort(rng.integers(0, NUM_IDS, NUM_IMAGES))
    camids = rng.integers(0, NUM_CAMS, NUM_IMAGES)
    means = rng.standard_normal((NUM_IDS, 256)) @ rng.standard_normal((256, DIM))
    mixing = rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)
    noise = (rng.standard_normal((NUM_IMAGES, DIM)) * np.linspace(0.2, 3.0, DIM)) @ mixing
    feats = (means[pids] / np.sqrt(256) + noise).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats, pids, camids


def best_of(repeats: int, fn) -> tuple[float, object]:
    """Smallest wall-clock time (s) of ``repeats`` calls and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    feats, pids, camids = synthetic_features()
    x64 = feats.astype(np.float64)
    print(f"features {feats.shape}, {NUM_IDS} ids, {NUM_CAMS} cams, torch threads {torch.get_num_threads()}")

    t_gram, _ = best_of(args.repeats, lambda: x64.T @ x64)
    t_xqda, xqda = best_of(args.repeats, lambda: fit_xqda(feats, pids, camids))
    t_xqda_cc, _ = best_of(args.repeats, lambda: fit_xqda(feats, pids, camids, cross_camera=True))
    t_kiss, _ = best_of(args.repeats, lambda: fit_kissme(feats, pids, camids, on_non_psd="project"))
    t_kiss_pca, _ = best_of(args.repeats, lambda: fit_kissme(feats, pids, camids, dim=128))
    print(f"baseline Gram XᵀX (float64)   {t_gram:7.3f} s")
    print(f"XQDA fit                      {t_xqda:7.3f} s  ({t_xqda / t_gram:5.1f}x Gram)  r={xqda.info['subspace_dim']}")
    print(f"XQDA fit, cross-camera pairs  {t_xqda_cc:7.3f} s  ({t_xqda_cc / t_gram:5.1f}x Gram)")
    print(f"KISSME fit (no PCA)           {t_kiss:7.3f} s  ({t_kiss / t_gram:5.1f}x Gram)")
    print(f"KISSME fit (PCA 128)          {t_kiss_pca:7.3f} s  ({t_kiss_pca / t_gram:5.1f}x Gram)")

    query = torch.nn.functional.normalize(torch.randn(NUM_QUERY, DIM), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(NUM_GALLERY, DIM), dim=1)
    projection = torch.from_numpy(xqda.projection).float()

    def sq_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp_min_(0)

    with torch.no_grad():
        t_euc, _ = best_of(args.repeats, lambda: sq_euclidean(query, gallery))
        t_maha, _ = best_of(args.repeats, lambda: sq_euclidean(query @ projection, gallery @ projection))
    print(f"distances [{NUM_QUERY}x{NUM_GALLERY}] Euclidean      {t_euc:7.3f} s")
    print(f"distances [{NUM_QUERY}x{NUM_GALLERY}] XQDA (P, r={projection.shape[1]}) {t_maha:7.3f} s  ({t_maha / t_euc:5.2f}x Euclidean)")


if __name__ == "__main__":
    main()
