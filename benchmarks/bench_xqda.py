"""Benchmark: fitting XQDA / KISSME on Market-1501-sized training features.

Synthetic stand-in for deep features: 12,936 L2-normalised vectors of dimension 2,048 from 751
identities and 6 cameras (the Market-1501 training split), with class means in a 256-d subspace
plus correlated noise. Times:

* XQDA fit (closed-form covariances + generalised eigenproblem), KISSME fit (raw and PCA-128),
* baseline measured in the same run: one float64 Gram product ``XᵀX`` of the same matrix,
  the floor of any method that reads the ``N×D²`` second moments (wall and CPU time, since the
  cores are shared),
* ``MahalanobisMetric.pairwise`` (projection + Euclidean) vs ``EuclideanMetric.pairwise`` on raw
  features: ``[Q, G]`` distances for 3,368 queries × 15,913 gallery (Market-1501 test sizes, float32).

Run:  nice -n 10 .venv/bin/python benchmarks/bench_xqda.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from metricattack.metrics.distance import EuclideanMetric, NonPSDMatrixWarning
from metricattack.metrics.kissme import fit_kissme
from metricattack.metrics.xqda import fit_xqda

NUM_IMAGES, DIM, NUM_IDS, NUM_CAMS = 12_936, 2_048, 751, 6
NUM_QUERY, NUM_GALLERY = 3_368, 15_913
T = TypeVar("T")


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


def best_of(repeats: int, fn: Callable[[], T]) -> tuple[float, float, T]:
    """Smallest wall-clock and smallest CPU time (s) over ``repeats`` calls, and the last result.

    CPU time (all threads of this process) is less disturbed than wall time when other jobs
    share the cores; both are printed.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def report(label: str, wall: float, cpu: float, baseline: tuple[float, float] | None, note: str = "") -> None:
    """One line: times, and the ratio to ``baseline`` (wall, cpu) measured in the same run."""
    ratio = f"  ({wall / baseline[0]:5.2f}x wall, {cpu / baseline[1]:5.2f}x cpu of baseline)" if baseline else ""
    print(f"{label:<44} wall {wall:7.3f} s  cpu {cpu:7.3f} s{ratio}  {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    feats, pids, camids = synthetic_features()
    x64 = feats.astype(np.float64)
    print(
        f"features {feats.shape}, {NUM_IDS} ids, {NUM_CAMS} cams, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    *gram, _ = best_of(args.repeats, lambda: x64.T @ x64)
    report("baseline: Gram XᵀX [2048x2048] float64", *gram, None)
    *t, xqda = best_of(args.repeats, lambda: fit_xqda(feats, pids, camids))
    pairs = f"{xqda.info['num_similar_pairs']:,} / {xqda.info['num_dissimilar_pairs']:,} same/diff-id pairs"
    report("XQDA fit (all same-id pairs)", *t, gram, f"r={xqda.info['subspace_dim']}, {pairs}")
    *t, cross = best_of(args.repeats, lambda: fit_xqda(feats, pids, camids, cross_camera=True))
    report("XQDA fit (cross-camera pairs)", *t, gram, f"r={cross.info['subspace_dim']}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonPSDMatrixWarning)  # KISSME kernels are rarely PSD; counted below
        for label, dim in (("KISSME fit (no PCA)", None), ("KISSME fit (PCA 128)", 128)):
            *t, fit = best_of(args.repeats, lambda dim=dim: fit_kissme(feats, pids, camids, dim=dim))
            clipped = f"{fit.info['kernel_num_negative_eigenvalues']} of {fit.info['subspace_dim']} eigenvalues clipped"
            report(label, *t, gram, clipped)

    query = torch.nn.functional.normalize(torch.randn(NUM_QUERY, DIM), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(NUM_GALLERY, DIM), dim=1)
    euclidean = EuclideanMetric()
    with torch.no_grad():
        *euc, _ = best_of(args.repeats, lambda: euclidean.pairwise(query, gallery))
        *maha, _ = best_of(args.repeats, lambda: xqda.metric.pairwise(query, gallery))
    report(f"distances [{NUM_QUERY}x{NUM_GALLERY}] Euclidean (baseline)", *euc, None)
    report(f"distances [{NUM_QUERY}x{NUM_GALLERY}] XQDA, P [{DIM}x{xqda.metric.projection.shape[1]}]", *maha, tuple(euc))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
