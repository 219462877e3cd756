"""Shared test setup: deterministic seeds, a bounded thread count."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


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
