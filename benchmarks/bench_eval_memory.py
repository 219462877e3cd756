"""Peak memory of an MSMT17-size evaluation from features (11,659 queries × 82,161 gallery).

Features are random but structured like a re-ID model's: an identity centre (3,060 test
identities, 15 cameras) plus camera shift plus noise, L2-normalised. Runs
:func:`evaluate_features` (query chunks of ``--chunk-size``) and reports the process's peak
resident memory (``ru_maxrss``), the memory held by the features alone, and, as the baseline,
the size a one-shot float32 distance matrix would have.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_eval_memory.py --dim 512``
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from metricattack.evaluation.features import evaluate_features
from metricattack.metrics.distance import build_metric

NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMS = 11659, 82161, 3060, 15


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def features(
    pids: np.ndarray, camids: np.ndarray, centres: torch.Tensor, cams: torch.Tensor, gen: torch.Generator, noise: float
) -> torch.Tensor:
    """``[N, D]`` L2-normalised features: centre of ``pid`` + camera shift + Gaussian noise."""
    dim = centres.shape[1]
    out = torch.empty(len(pids), dim)
    for s in range(0, len(pids), 8192):  # in slices, so building them does not set the peak
        p, c = torch.from_numpy(pids[s : s + 8192]), torch.from_numpy(camids[s : s + 8192])
        out[s : s + 8192] = centres[p] + cams[c] + noise * torch.randn(len(p), dim, generator=gen) / dim**0.5
    return out.div_(out.norm(dim=1, keepdim=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512, help="feature dimension (2048 for ResNet-50 features)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries per distance chunk")
    parser.add_argument("--metric", default="euclidean", choices=("euclidean", "cosine"))
    parser.add_argument("--noise", type=float, default=1.1, help="feature noise relative to identity spread")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    q_pids = np.concatenate([np.arange(1, NUM_IDS + 1), rng.integers(1, NUM_IDS + 1, NUM_QUERY - NUM_IDS)])
    g_pids = rng.integers(1, NUM_IDS + 1, NUM_GALLERY)
    q_cams, g_cams = rng.integers(0, NUM_CAMS, NUM_QUERY), rng.integers(0, NUM_CAMS, NUM_GALLERY)
    centres = torch.randn(NUM_IDS + 1, args.dim, generator=gen) / args.dim**0.5
    cams = 0.3 * torch.randn(NUM_CAMS, args.dim, generator=gen) / args.dim**0.5
    base = peak_rss_mib()
    q = features(q_pids, q_cams, centres, cams, gen, args.noise)
    g = features(g_pids, g_cams, centres, cams, gen, args.noise)
    feat_mib = (q.numel() + g.numel()) * 4 / 2**20
    with_feats = peak_rss_mib()
    start = time.perf_counter()
    result = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, build_metric(args.metric), chunk_size=args.chunk_size)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    one_shot = NUM_QUERY * NUM_GALLERY * 4 / 2**20
    print(f"MSMT17 size {NUM_QUERY} x {NUM_GALLERY}, dim {args.dim}, metric {args.metric}, chunk {args.chunk_size}")
    print(f"  rank-1 {result.cmc[1]:.4f} mAP {result.mAP:.4f} mINP {result.mINP:.4f} ({result.ap_convention} AP), {seconds:.1f} s")
    print(f"  peak RSS {peak:.0f} MiB (interpreter+libs {base:.0f} MiB, after features {with_feats:.0f} MiB; features {feat_mib:.0f} MiB)")
    print(f"  baseline: a one-shot float32 distance matrix alone would take {one_shot:.0f} MiB")
    assert peak < 4096, f"peak RSS {peak:.0f} MiB exceeds 4 GiB"


if __name__ == "__main__":
    main()
