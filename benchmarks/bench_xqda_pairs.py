"""XQDA's pairs (issue #10): clean accuracy of XQDA fitted on all same-identity pairs vs on
cross-camera pairs only (Liao et al.'s cross-view pairs), on a benchmark config's first model.

    python benchmarks/bench_xqda_pairs.py --config configs/quickstart.yaml --out /tmp/xqda-pairs

Generates the config's synthetic dataset, trains its first model with its recipe (both cached in
--out), extracts features once, fits XQDA both ways and prints rank-1 / mAP next to the
Euclidean distance (official Market-1501 AP).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from metricattack.benchmark.config import load_benchmark_config
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import generate
from metricattack.evaluation.features import extract_features
from metricattack.evaluation.ranking import evaluate_distances
from metricattack.metrics.distance import Metric, build_metric
from metricattack.metrics.learned import fit_learned
from metricattack.models.checkpoint import load_model
from metricattack.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_benchmark_config(args.config)
    model = cfg.models[0]
    if cfg.dataset.synthetic is None or model.train is None:
        raise SystemExit("needs a synthetic dataset and a trained (not checkpoint) first model")
    root = generate(args.out / "data", cfg.dataset.synthetic)
    checkpoint = train(model.train.train_config("folder", root, "cpu", "bench"), args.out / model.name)
    ds = load_dataset("folder", root)
    net = load_model(checkpoint)
    feats = {s: extract_features(net, list(ds.split(s)), batch_size=128, progress=False).float() for s in ("train", "query", "gallery")}
    pids = torch.tensor([r.pid for r in ds.train])
    cams = torch.tensor([r.camid for r in ds.train])
    keep = pids > 0

    def score(metric: Metric) -> str:
        with torch.no_grad():
            dist = metric.pairwise(feats["query"], feats["gallery"])
        r = evaluate_distances(
            dist, [q.pid for q in ds.query], [g.pid for g in ds.gallery], [q.camid for q in ds.query], [g.camid for g in ds.gallery]
        )
        return f"rank-1 {100 * r.cmc[1]:6.2f}  mAP {100 * r.mAP:6.2f}"

    print(f"{cfg.name}: model {model.name} ({model.description}); {len(ds.train)} training images, {len(ds.query)} queries")
    print(f"{'euclidean':<28} {score(build_metric('euclidean'))}")
    for cross in (False, True):
        start = time.perf_counter()
        fit = fit_learned("xqda", feats["train"][keep], pids[keep], cams[keep], cross_camera=cross)
        seconds = time.perf_counter() - start
        pairs = f"{fit.info['num_similar_pairs']} similar / {fit.info['num_dissimilar_pairs']} dissimilar pairs"
        print(
            f"{'xqda cross_camera=' + str(cross):<28} {score(fit.metric)}  ({pairs}, subspace {fit.info['subspace_dim']}, fit {seconds:.2f} s)"
        )


if __name__ == "__main__":
    main()
