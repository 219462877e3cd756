"""Shared test setup: deterministic seeds, a bounded thread count."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

# One intra-op thread: the tests' tiny convolutions gain nothing from more, and OpenMP threads
# that spin while another process holds the other core made a ResNet-18 step ~60x slower here.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory: pytest.TempPathFactory):
    """A tiny synthetic dataset in the Market-1501 layout, generated once per test session."""
    from metricattack.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate(
        out,
        SynthConfig(
            seed=0,
            num_train_ids=16,
            num_test_ids=12,
            num_cameras=3,
            images_per_camera=2,
            num_distractors=6,
            num_junk=4,
        ),
    )
    return out


@pytest.fixture(scope="session")
def tiny_model_checkpoint(tiny_dataset_root, tmp_path_factory: pytest.TempPathFactory):
    """Checkpoint path of a ResNet-18 (64x32 input) trained briefly on ``tiny_dataset_root``.

    Trained once per session with cross-entropy + batch-hard triplet; its rank-1 on the tiny
    test split is checked in ``tests/test_training.py``. Trains on one thread: on the shared
    2-core machine, 2 intra-op threads per process made this up to 10x slower under load.
    """
    from metricattack.training import TrainConfig, train

    cfg = TrainConfig.model_validate(
        {
            "data": {"dataset": "folder", "root": str(tiny_dataset_root), "cache": True},
            "model": {"backbone": "resnet18", "input_size": [64, 32]},
            "loss": {"cross_entropy": {"label_smoothing": 0.1}, "triplet": {"margin": 0.3}},
            "optimizer": {"lr": 0.002},
            "schedule": {"epochs": 8, "lr_steps": [7]},
            "batch": {"batch_size": 16, "sampler": "pk", "images_per_id": 4},
            "augmentation": {"pad": 3},
            "device": "cpu",
            "progress": False,
            "seed": 0,
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg, tmp_path_factory.mktemp("tiny_model"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def market_like_dataset_root(tmp_path_factory: pytest.TempPathFactory):
    """The tiny identities of ``tiny_dataset_root`` with a gallery as crowded as Market-1501's.

    Market-1501 has ~26 gallery images per test identity (19,732 / 750); 240 distractors give
    the 12 test identities 316 gallery images, so a random ranking scores mAP 0.021 instead of
    0.077 (:mod:`metricattack.evaluation.chance`) and a 90 % cut is no longer below chance level.
    """
    from metricattack.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "market_like"
    generate(out, SynthConfig(seed=0, num_train_ids=16, num_test_ids=12, num_cameras=3, images_per_camera=2,
                              num_distractors=240, num_junk=4))
    return out


@pytest.fixture(scope="session")
def resnet50_checkpoint(market_like_dataset_root, tmp_path_factory: pytest.TempPathFactory):
    """Checkpoint path of the paper's B1 backbone, ResNet-50 (64x32 input, from scratch), trained
    8 epochs with cross-entropy + triplet on ``market_like_dataset_root`` (~25 s on one thread)."""
    from metricattack.training import TrainConfig, train

    cfg = TrainConfig.model_validate(
        {
            "data": {"dataset": "folder", "root": str(market_like_dataset_root), "cache": True},
            "model": {"backbone": "resnet50", "input_size": [64, 32]},
            "loss": {"cross_entropy": {"label_smoothing": 0.1}, "triplet": {"margin": 0.3}},
            "optimizer": {"lr": 0.002},
            "schedule": {"epochs": 8, "lr_steps": [7]},
            "batch": {"batch_size": 16, "sampler": "pk", "images_per_id": 4},
            "augmentation": {"pad": 3},
            "device": "cpu",
            "progress": False,
            "seed": 0,
        }
    )
    return train(cfg, tmp_path_factory.mktemp("resnet50"))
