"""Shared test setup: deterministic seeds, a bounded thread count, tiny datasets and trained models."""

from __future__ import annotations

import fcntl
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from metricattack.data.synthetic import SynthConfig, generate
from metricattack.training import train
from metricattack.training.config import TrainConfig, load_train_config

# One intra-op thread: the tests' tiny convolutions gain nothing from more, and OpenMP threads
# that spin while another process holds the other core made a ResNet-18 step ~60x slower here.
torch.set_num_threads(1)

FIXTURE_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "tiny-fixture.yaml"


def tiny_synth_config(num_distractors: int) -> SynthConfig:
    """16 train / 12 test identities, 3 cameras, 2 images per camera, 128x64, 4 junk images."""
    return SynthConfig(
        seed=0, num_train_ids=16, num_test_ids=12, num_cameras=3, images_per_camera=2, num_distractors=num_distractors, num_junk=4
    )


def fixture_train_config(root: Path, backbone: str, *overrides: str) -> TrainConfig:
    """The fixtures' training recipe (``configs/synthetic/tiny-fixture.yaml``) on ``root``, with ``overrides``."""
    return load_train_config(FIXTURE_RECIPE, [f"data.root={root}", f"model.backbone={backbone}", *overrides])


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Path]) -> Path:
    """``make(folder)`` (returns the path it made) once per test run, also when pytest-xdist
    (``-n 2``) runs the tests in several worker processes: the first worker to need it makes
    it under a lock in the run's shared temporary folder, the others wait and reuse it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / name  # pytest-N/, shared by the run's workers
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "made.json"
        if done.is_file():
            return Path(json.loads(done.read_text(encoding="utf-8"))["path"])
        made = make(root / "work")
        done.write_text(json.dumps({"path": str(made)}), encoding="utf-8")
        return made


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset in the Market-1501 layout (6 distractors), generated once per session."""
    return once_per_run(tmp_path_factory, "tiny_dataset", lambda folder: generate(folder / "tiny", tiny_synth_config(num_distractors=6)))


@pytest.fixture(scope="session")
def tiny_model_checkpoint(tiny_dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint path of a ResNet-18 (64x32 input) trained briefly on ``tiny_dataset_root``.

    Trained once per session with cross-entropy + batch-hard triplet (~12 s on one thread); its
    rank-1 on the tiny test split is checked in ``tests/test_training.py``.
    """
    return once_per_run(tmp_path_factory, "tiny_model", lambda folder: train(fixture_train_config(tiny_dataset_root, "resnet18"), folder))


@pytest.fixture(scope="session")
def market_like_dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny identities of ``tiny_dataset_root`` with a gallery as crowded as Market-1501's.

    Market-1501 has ~26 gallery images per test identity (19,732 / 750); 240 distractors give
    the 12 test identities 316 gallery images, so a random ranking scores mAP 0.021 instead of
    0.077 (:mod:`metricattack.evaluation.chance`) and a 90 % cut is no longer below chance level.
    """
    return once_per_run(
        tmp_path_factory, "market_like_dataset", lambda folder: generate(folder / "market_like", tiny_synth_config(num_distractors=240))
    )


@pytest.fixture(scope="session")
def resnet50_checkpoint(market_like_dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint path of the paper's B1 backbone, ResNet-50 (64x32 input, from scratch), trained
    8 epochs with cross-entropy + triplet on ``market_like_dataset_root`` in batches of 32 (half the
    Adam steps of the recipe's 16: 17 s of CPU instead of 24 s, the same attack cut; measurements
    in ``benchmarks/RESULTS.md``, "ResNet-50 test fixture")."""
    recipe = fixture_train_config(market_like_dataset_root, "resnet50", "batch.batch_size=32")
    return once_per_run(tmp_path_factory, "resnet50", lambda folder: train(recipe, folder))
