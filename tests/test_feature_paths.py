"""One preprocessing path: every command computes the same features of an image that needs resizing.

The tiny synthetic images are 128x64; the model here takes 32x16, so every feature below goes
through the model's resize. Reference: ``model(image)`` one image at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from metricattack.attacks.engine import clean_features
from metricattack.benchmark.resources import model_features
from metricattack.cli import main
from metricattack.data.layouts import load_dataset
from metricattack.data.loading import read_image
from metricattack.data.types import ImageRecord
from metricattack.defense import evaluation as defense_evaluation
from metricattack.metrics import learned
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models import preprocessing
from metricattack.models.checkpoint import load_model, save_checkpoint
from metricattack.models.reid import ReIDModel
from metricattack.training.config import AugmentSection
from metricattack.training.data import TrainImages, relabel

INPUT_SIZE = (32, 16)
EXACT = {"rtol": 0.0, "atol": 1e-6}  # batch composition may change the last bits of a convolution


@pytest.fixture(scope="module")
def setup(tiny_dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    torch.manual_seed(0)
    model = ReIDModel("resnet18", num_classes=16, input_size=INPUT_SIZE, last_stride=2).eval()
    checkpoint = save_checkpoint(model, tmp_path_factory.mktemp("paths") / "model.safetensors", {"note": "feature paths"})
    return checkpoint, load_dataset("folder", tiny_dataset_root)


@torch.no_grad()
def one_by_one(model: torch.nn.Module, records: tuple[ImageRecord, ...] | list[ImageRecord]) -> torch.Tensor:
    return torch.cat([model(read_image(r.path).unsqueeze(0)) for r in records])


def test_the_test_images_need_resizing_and_the_resize_is_antialiased(setup) -> None:
    """Guards the test's premise: the images are larger than the input, and antialiasing matters for them."""
    checkpoint, dataset = setup
    model = load_model(checkpoint)
    image = read_image(dataset.query[0].path).unsqueeze(0)
    assert image.shape[-2:] != INPUT_SIZE and preprocessing.ANTIALIAS
    aliased = F.interpolate(image, size=INPUT_SIZE, mode="bilinear", align_corners=False, antialias=False)
    with torch.no_grad():
        assert (model(image) - model(aliased)).abs().max() > 1e-3


def test_every_command_computes_the_same_features(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint, dataset = setup
    model = load_model(checkpoint)
    expected = {split: one_by_one(model, dataset.split(split)) for split in ("query", "gallery")}

    # evaluate (the CLI, whose features cache exposes what it computed)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(dataset.root), "--dataset", "folder",
                 "--features-cache", str(tmp_path / "cache"), "--no-progress"]) == 0  # fmt: skip
    cached = [load_file(str(p), device="cpu") for p in sorted((tmp_path / "cache").rglob("*.safetensors"))]
    by_rows = {f["features"].shape[0]: f["features"] for f in cached}
    assert len(cached) == 2 and set(by_rows) == {len(dataset.query), len(dataset.gallery)}
    torch.testing.assert_close(by_rows[len(dataset.query)], expected["query"], **EXACT)
    torch.testing.assert_close(by_rows[len(dataset.gallery)], expected["gallery"], **EXACT)

    # attack (and the defense's training-set and transfer attacks, which run the same export)
    attack = clean_features([model], dataset, batch_size=32)[0]
    torch.testing.assert_close(attack.query, expected["query"], **EXACT)
    torch.testing.assert_close(attack.gallery, expected["gallery"], **EXACT)

    # benchmark's features stage
    torch.testing.assert_close(model_features(model, dataset.gallery, batch_size=16), expected["gallery"], **EXACT)

    # defense: the features its Table 5 cells and adaptive rows are computed from
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = defense_evaluation.evaluate_split_features
    monkeypatch.setattr(defense_evaluation, "evaluate_split_features", lambda q, g, *a, **k: seen.append((q, g)) or real(q, g, *a, **k))
    defense_evaluation.gallery_mAP(model, dataset, dataset.gallery, EuclideanMetric(), batch_size=8)
    defense_evaluation.adaptive_attack_rows({"F": model}, dataset, EuclideanMetric(), [], batch_size=8)
    assert len(seen) == 2
    for q, g in seen:
        torch.testing.assert_close(q, expected["query"], **EXACT)
        torch.testing.assert_close(g, expected["gallery"], **EXACT)

    # fit-metric: the training features the metric is fitted on
    train_records = [r for r in dataset.train if r.pid > 0]
    fitted: list[torch.Tensor] = []
    real_fit = learned.fit_learned
    monkeypatch.setattr(learned, "fit_learned", lambda kind, feats, *a, **k: fitted.append(feats) or real_fit(kind, feats, *a, **k))
    learned.fit_for_checkpoint(checkpoint, dataset.root, "folder", "xqda", out=tmp_path / "m.xqda.safetensors", dim=8)
    torch.testing.assert_close(fitted[0], one_by_one(model, train_records), **EXACT)


def test_training_batches_are_resized_by_the_models_own_function(setup) -> None:
    """Training resizes at load (one size per batch) with resize_to_input: the model then sees the same bits."""
    _, dataset = setup
    model = load_model(setup[0])
    records, labels, _ = relabel(dataset.train)
    for cache in (False, True):
        images = TrainImages(records[:6], labels[:6], INPUT_SIZE, AugmentSection(flip=False, pad=0), cache=cache)
        batch = torch.stack([images[i][0] for i in range(6)])
        assert batch.shape[-2:] == INPUT_SIZE
        with torch.no_grad():
            torch.testing.assert_close(model(batch), one_by_one(model, records[:6]), **EXACT)
