"""Feature extraction, chunked feature evaluation and the ``metricattack evaluate`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metricattack.cli import main
from metricattack.data.types import ImageRecord
from metricattack.errors import MetricAttackError
from metricattack.evaluation.features import evaluate_features, extract_features
from metricattack.evaluation.ranking import evaluate_distances
from metricattack.metrics.distance import CosineMetric, EuclideanMetric, MahalanobisMetric, save_metric
from metricattack.models.checkpoint import save_checkpoint
from metricattack.stages import read_stage_log

# tiny Market-layout dataset: identity = colour, camera = brightness; 3 test ids, 2 cameras
COLOURS = {1: (200, 40, 40), 2: (40, 200, 40), 3: (40, 40, 200), 4: (200, 200, 40)}


def _write_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    layout = {
        "bounding_box_train": [(4, 1, 0), (4, 2, 1)],
        "query": [(1, 1, 0), (2, 1, 0), (3, 2, 0)],
        "bounding_box_test": [(1, 2, 0), (1, 1, 1), (2, 2, 0), (3, 1, 0), (3, 1, 1), (0, 1, 0), (-1, 2, 0)],
    }
    for folder, items in layout.items():
        (root / folder).mkdir(parents=True)
        for pid, cam, k in items:
            colour = np.array(COLOURS.get(pid, (120, 120, 120)), dtype=float) * (0.8 if cam == 2 else 1.0)
            pixels = np.clip(colour + rng.normal(0, 10, (32, 16, 3)), 0, 255).astype(np.uint8)
            name = f"{pid:04d}_c{cam}s1_{k:06d}_00.png" if pid >= 0 else f"-1_c{cam}s1_{k:06d}_00.png"
            Image.fromarray(pixels).save(root / folder / name)
    return root


class MeanColour(nn.Module):
    """A deterministic 'model': L2-normalised mean colour plus a constant (features [B, 4])."""

    input_size = (32, 16)
    feature_dim = 4

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([images.mean((2, 3)), torch.full((images.shape[0], 1), 0.5)], dim=1)
        return torch.nn.functional.normalize(feats, dim=1)


def test_extract_features_keeps_record_order(tmp_path):
    root = _write_dataset(tmp_path / "data")
    paths = sorted((root / "bounding_box_test").iterdir())
    records = [ImageRecord(p, 1, 0) for p in paths]
    feats = extract_features(MeanColour(), records, batch_size=3, progress=False)
    from metricattack.data.loading import read_image

    expected = MeanColour()(torch.stack([read_image(p) for p in paths]))
    assert feats.shape == (len(paths), 4)
    torch.testing.assert_close(feats, expected)
    with pytest.raises(MetricAttackError, match="no images"):
        extract_features(MeanColour(), [], progress=False)


@pytest.mark.parametrize(
    "metric", [EuclideanMetric(), CosineMetric(), MahalanobisMetric(torch.randn(16, 5, generator=torch.Generator().manual_seed(0)))]
)
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_chunked_feature_evaluation_equals_one_shot(metric, chunk_size):
    gen = torch.Generator().manual_seed(1)
    q, g = torch.randn(23, 16, generator=gen), torch.randn(61, 16, generator=gen)
    q_pids, g_pids = torch.randint(0, 6, (23,), generator=gen), torch.randint(-1, 6, (61,), generator=gen)
    q_cams, g_cams = torch.randint(0, 3, (23,), generator=gen), torch.randint(0, 3, (61,), generator=gen)
    one_shot = evaluate_distances(metric.pairwise(q, g), q_pids, g_pids, q_cams, g_cams, ap="noninterp")
    chunked = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric, ap="noninterp", chunk_size=chunk_size)
    assert chunked.cmc == one_shot.cmc and chunked.num_valid_queries == one_shot.num_valid_queries
    np.testing.assert_allclose(chunked.per_query_ap, one_shot.per_query_ap, atol=1e-12, equal_nan=True)
    assert chunked.mINP == pytest.approx(one_shot.mINP, abs=1e-12)


def test_feature_evaluation_errors():
    m = MahalanobisMetric(torch.ones(8, 2), name="xqda")
    with pytest.raises(MetricAttackError, match="dimension 8, got dimension 4"):
        evaluate_features(torch.ones(2, 4), torch.ones(3, 4), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], m)
    with pytest.raises(MetricAttackError, match="chunk_size"):
        evaluate_features(torch.ones(2, 4), torch.ones(3, 4), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], EuclideanMetric(), chunk_size=0)


# ----------------------------------------------------------------------------- the command


def test_evaluate_bad_inputs_are_one_clear_error(tmp_path, capsys):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not read before the metric is checked")
    code = main(["evaluate", "--checkpoint", str(tmp_path / "none.safetensors"), "--data-root", str(tmp_path), "--dataset", "folder"])
    err = capsys.readouterr().err
    assert code == 2 and "none.safetensors does not exist" in err
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(tmp_path), "--dataset", "folder", "--metric", "manhattan"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown --metric 'manhattan'" in err and "euclidean, cosine, xqda, kissme" in err
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(tmp_path), "--dataset", "folder", "--metric", "xqda"])
    err = capsys.readouterr().err
    assert code == 2 and "model.xqda.safetensors" in err and "fit-metric" in err
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--data-root",
            str(tmp_path),
            "--dataset",
            "folder",
            "--metric",
            str(tmp_path / "m.safetensors"),
        ]
    )
    assert code == 2 and "m.safetensors does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from metricattack.models.reid import ReIDModel

    torch.manual_seed(0)
    model = ReIDModel("mobilenet_v3_small", num_classes=2, input_size=(32, 16), pretrained=False).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(model, path, {"note": "test"})
    return path


def test_evaluate_command_end_to_end(tmp_path, tiny_checkpoint, capsys):
    root = _write_dataset(tmp_path / "data")
    out = tmp_path / "res" / "results.json"
    cache = tmp_path / "cache"
    argv = [
        "evaluate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data-root",
        str(root),
        "--dataset",
        "folder",
        "--metric",
        "cosine",
        "--ap",
        "noninterp",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--features-cache",
        str(cache),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "AP convention: noninterp" in printed and "rank-1" in printed and "mINP" in printed
    record = json.loads(out.read_text())
    assert record["results"]["ap_convention"] == "noninterp" and record["results"]["num_queries"] == 3
    assert record["metric"] == {"name": "cosine"} and len(record["checkpoint"]["sha256"]) == 64
    assert record["dataset"]["num_gallery"] == 7 and "torch" in record["versions"]
    assert 0 < record["chance"]["mAP"] < 1 and record["chance"]["ap_convention"] == "noninterp"
    assert f"chance level (a random ranking of this gallery): rank-1 {100 * record['chance']['cmc']['1']:.2f}" in printed

    # the same numbers as evaluating the model's features directly
    from metricattack.data.layouts import load_dataset
    from metricattack.models.checkpoint import load_model

    ds = load_dataset("folder", root)
    model = load_model(tiny_checkpoint)
    q = extract_features(model, ds.query, progress=False)
    g = extract_features(model, ds.gallery, progress=False)
    direct = evaluate_features(
        q,
        g,
        [r.pid for r in ds.query],
        [r.pid for r in ds.gallery],
        [r.camid for r in ds.query],
        [r.camid for r in ds.gallery],
        CosineMetric(),
        ap="noninterp",
    )
    assert record["results"]["mAP"] == pytest.approx(direct.mAP) and record["results"]["cmc"]["1"] == pytest.approx(direct.cmc[1])
    cached = sorted(cache.glob("cache/features/*/features.safetensors"))
    assert len(cached) == 2  # query and gallery features, one stage each
    assert [e["status"] for e in read_stage_log(cache)] == ["ran", "ran"]
    cached[0].write_bytes(b"damaged")  # a damaged entry is recomputed, the other one reused
    assert main(argv) == 0 and json.loads(out.read_text())["results"] == record["results"]
    assert sorted(e["status"] for e in read_stage_log(cache)[2:]) == ["cached", "ran"]

    # a metric file of the wrong dimension is refused, naming both dimensions
    bad = save_metric(MahalanobisMetric(torch.ones(7, 2)), tmp_path / "bad.safetensors")
    assert main(argv[:7] + ["--metric", str(bad)]) == 2
    assert f"expects 7-d features but the model in {tiny_checkpoint} gives {model.feature_dim}-d" in capsys.readouterr().err


def test_evaluate_model_on_colour_identities(tmp_path):
    # identities differ by colour, cameras by brightness: mean colour retrieves every true match
    # first, so CMC and both APs are exactly 1; the junk and same-camera images are ignored.
    from metricattack.data.layouts import load_dataset
    from metricattack.evaluation.features import evaluate_model

    ds = load_dataset("folder", _write_dataset(tmp_path / "data"))
    for ap in ("market", "noninterp"):
        res = evaluate_model(MeanColour(), ds, EuclideanMetric(), ap=ap, batch_size=4, progress=False)
        assert res.num_valid_queries == 3 and res.cmc[1] == 1.0 and res.mAP == 1.0 and res.mINP == 1.0


def test_colour_histogram_baseline_command(tiny_dataset_root, tmp_path, capsys):
    """`evaluate --baseline` scores the colour-histogram features exactly like a direct computation."""
    from metricattack.data.layouts import load_dataset
    from metricattack.data.loading import read_image
    from metricattack.evaluation.baselines import color_histogram_features

    out = tmp_path / "hist.json"
    argv = ["evaluate", "--baseline", "color-histogram-hsv", "--data-root", str(tiny_dataset_root), "--dataset", "folder", "--no-progress"]
    assert main(argv + ["--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["baseline"] == "color-histogram-hsv" and record["checkpoint"] is None

    ds = load_dataset("folder", tiny_dataset_root)
    feats = {s: color_histogram_features(torch.stack([read_image(r.path) for r in ds.split(s)])) for s in ("query", "gallery")}
    direct = evaluate_distances(
        torch.cdist(feats["query"], feats["gallery"]).pow(2).numpy(),
        np.array([r.pid for r in ds.query]),
        np.array([r.pid for r in ds.gallery]),
        np.array([r.camid for r in ds.query]),
        np.array([r.camid for r in ds.gallery]),
    )
    assert record["results"]["mAP"] == pytest.approx(direct.mAP, abs=1e-5)

    assert main(argv + ["--metric", "xqda"]) == 2
    assert "--baseline works with --metric" in capsys.readouterr().err


def test_cli_prints_dataset_warnings_on_one_line(tiny_dataset_root):
    """A non-official Market-1501 copy is evaluated with one readable warning line, no source code."""
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricattack",
            "evaluate",
            "--baseline",
            "color-histogram-hsv",
            "--data-root",
            str(tiny_dataset_root),
            "--dataset",
            "market1501",
            "--quiet",  # warnings only, never a progress line however slow the machine
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    warning_lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("metricattack: warning: Market-1501 at "), done.stderr
    assert "the 'folder' layout skips this check" in warning_lines[0]


def test_cli_shows_each_project_warning_once():
    """Stages of one command re-load the same dataset: its warning is printed once."""
    import io

    from metricattack.cli import _show_warning
    from metricattack.data.layouts import DatasetCountWarning

    out = io.StringIO()
    for line in (10, 20):
        _show_warning(DatasetCountWarning("counts differ (test)"), DatasetCountWarning, "layouts.py", line, out)
    assert out.getvalue().splitlines() == ["metricattack: warning: counts differ (test)"]
