"""Issue #19 item 3: caches are keyed by content. A same-size change of an image's pixels is never
served stale features, and a learned metric fitted for other weights is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metricattack.cli import main
from metricattack.data.layouts import dataset_fingerprint, load_dataset
from metricattack.metrics.learned import fit_for_checkpoint, metric_path
from metricattack.models.checkpoint import load_model, save_checkpoint


def _swap_same_size(data: Path) -> tuple[Path, Path]:
    """Rewrite two gallery images of different identities as uncompressed PNGs (so both files have
    the same size), then swap their pixels: names and sizes stay, the content changes."""
    gallery = sorted((data / "bounding_box_test").iterdir())
    first = gallery[0]
    second = next(p for p in gallery if p.name[:4] not in (first.name[:4], "0000", "-1_c"))
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in (first, second)]
    assert pixels[0].shape == pixels[1].shape
    for path, array in ((first, pixels[0]), (second, pixels[1])):
        Image.fromarray(array).save(path, format="PNG", compress_level=0)
    assert first.stat().st_size == second.stat().st_size
    return first, second


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))["results"]


def test_features_cache_never_serves_a_same_size_change(tiny_model_checkpoint, tiny_dataset_root, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset_root, data)
    first, second = _swap_same_size(data)
    argv = ["evaluate", "--checkpoint", str(tiny_model_checkpoint), "--data-root", str(data), "--dataset", "folder", "--no-progress"]
    cache = ["--features-cache", str(tmp_path / "cache")]
    before = dataset_fingerprint(load_dataset("folder", data))
    assert main([*argv, *cache, "--out", str(tmp_path / "before.json")]) == 0
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    assert dataset_fingerprint(load_dataset("folder", data)) != before
    assert main([*argv, *cache, "--out", str(tmp_path / "cached.json")]) == 0
    assert main([*argv, "--out", str(tmp_path / "fresh.json")]) == 0
    capsys.readouterr()
    fresh = _json(tmp_path / "fresh.json")
    assert _json(tmp_path / "cached.json") == fresh
    assert fresh["mAP"] != _json(tmp_path / "before.json")["mAP"]  # the swap changes the numbers: stale features would show


def test_a_learned_metric_fitted_for_other_weights_is_refused(tiny_model_checkpoint, tiny_dataset_root, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "run" / "model.safetensors"
    ckpt.parent.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(Path(tiny_model_checkpoint).with_suffix(suffix), ckpt.with_suffix(suffix))
    fit_for_checkpoint(ckpt, tiny_dataset_root, "folder", "xqda")
    argv = ["evaluate", "--checkpoint", str(ckpt), "--data-root", str(tiny_dataset_root), "--dataset", "folder", "--no-progress"]
    assert main([*argv, "--metric", "xqda"]) == 0
    capsys.readouterr()
    model = load_model(ckpt)
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)  # "retrained in place": other weights, same file names
    meta = json.loads(ckpt.with_suffix(".json").read_text(encoding="utf-8"))["meta"]
    save_checkpoint(model, ckpt, meta)
    for command in (argv, ["attack", *argv[1:], "--out", str(tmp_path / "adv")]):
        assert main([*command, "--metric", "xqda"]) == 2
        err = capsys.readouterr().err
        assert f"xqda metric {metric_path(ckpt, 'xqda')} was fitted for the model with SHA-256" in err
        assert "retrained or replaced since" in err and f"metricattack fit-metric --checkpoint {ckpt} --kind xqda" in err
    assert not (tmp_path / "adv").exists()
    fit_for_checkpoint(ckpt, tiny_dataset_root, "folder", "xqda")  # the fix the message gives
    assert main([*argv, "--metric", "xqda"]) == 0


def test_benchmark_dataset_key_follows_the_content(tiny_dataset_root, tmp_path: Path) -> None:
    from metricattack.benchmark.config import load_benchmark_config
    from metricattack.benchmark.resources import open_run

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset_root, data)
    first, second = _swap_same_size(data)
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = load_benchmark_config(config, [f"dataset={{name: folder, root: {data}}}"])
    key = open_run(cfg, tmp_path / "run").keys["dataset"]
    assert open_run(cfg, tmp_path / "run").keys["dataset"] == key
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    assert open_run(cfg, tmp_path / "run").keys["dataset"] != key
