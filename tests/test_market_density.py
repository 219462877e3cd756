"""configs/synthetic/market-density.yaml: Market-1501's counts, light B1-B4, the experiments behind findings 1, 2, 3, 5, 6."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from metricattack.benchmark.config import load_benchmark_config
from metricattack.data.layouts import DATASETS
from metricattack.data.synthetic import SPLIT_DIRS, plan

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "market-density.yaml"


def test_its_synthetic_dataset_has_market1501_counts() -> None:
    """The planned dataset (file names and identities, no image drawn) has the release's counts:
    751 / 750 identities, 6 cameras, 12,936 / 3,368 / 19,732 images; the gallery holds 2,798
    distractors and 3,819 junk images as Market-1501's does (15,913 without the junk)."""
    synth = load_benchmark_config(CONFIG).dataset.synthetic
    assert synth is not None
    split_of = {folder: split for split, folder in SPLIT_DIRS.items()}
    images: Counter[str] = Counter()
    ids: dict[str, set[int]] = {split: set() for split in SPLIT_DIRS}
    cameras: dict[str, set[int]] = {split: set() for split in SPLIT_DIRS}
    gallery_pids: Counter[int] = Counter()
    for job in plan(synth):
        split = split_of[job.relpath.split("/", 1)[0]]
        images[split] += 1
        cameras[split].add(job.cam)
        if job.pid > 0:
            ids[split].add(job.pid)
        if split == "gallery":
            gallery_pids[min(job.pid, 1)] += 1  # -1 junk, 0 distractor, 1 any identity
    official = DATASETS.get("market1501").official[""]
    got = (len(ids["train"]), images["train"], len(ids["query"]), images["query"], images["gallery"])
    assert got == (official.train_ids, official.train_images, official.query_ids, official.query_images, official.gallery_images)
    assert got == (751, 12936, 750, 3368, 19732)
    assert (gallery_pids[1], gallery_pids[0], gallery_pids[-1]) == (13115, 2798, 3819)
    assert images["gallery"] - gallery_pids[-1] == 15913
    assert ids["gallery"] == ids["query"] and not ids["train"] & ids["query"]
    assert all(cams == set(range(6)) for cams in cameras.values())


def test_config_trains_light_b1_to_b4_and_runs_the_findings_experiments() -> None:
    cfg = load_benchmark_config(CONFIG)
    assert cfg.attacked_models() == ["B1", "B2", "B3", "B4"] and cfg.test_only_models() == []
    backbones = {m.name: m.train.model.backbone for m in cfg.models if m.train is not None}
    assert backbones == {"B1": "resnet18", "B2": "resnet34", "B3": "densenet121", "B4": "resnet18"}
    # findings 1-3 read Table 2 (all three methods), finding 5 the classification attack on B1, 6 the targeted one
    assert set(cfg.selected()) == {"table1", "table2", "classification", "targeted"}
    assert cfg.attack.methods == ["fgsm", "ifgsm", "mifgsm"]
    assert (cfg.experiments.classification.model, cfg.experiments.targeted.model) == ("B1", "B1")
    # the paper's attacks: eps 5, alpha 1, mu 1, n = min(eps + 4, 1.25 eps) = 6
    assert cfg.attack.eps == 5 and cfg.attack.spec("mifgsm").resolved()["options"] == {"alpha": 1.0, "steps": 6, "mu": 1.0}
