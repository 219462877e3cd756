"""The model contract, checked on every registered architecture (small widths, tiny inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from metricattack.models.base import ARCHITECTURES, ReIDNet, build_from_spec
from metricattack.models.checkpoint import checkpoint_meta, load_model, save_checkpoint

# Small but complete versions of each architecture (the contract does not depend on widths).
SMALL: dict[str, dict[str, Any]] = {
    "reid": {"backbone": "resnet18", "input_size": (32, 16)},
    "hacnn": {"input_size": (80, 32), "channels": (16, 32, 48), "branch_dim": 16, "region_size": (12, 14)},
    "mancs": {"backbone": "resnet18", "input_size": (32, 16)},
    "python": {"source": "python:own_reid_net:build", "input_size": (32, 16)},  # tests/own_reid_net.py
}


def small(name: str, num_classes: int = 4) -> ReIDNet:
    torch.manual_seed(0)
    return ARCHITECTURES.get(name)(num_classes=num_classes, **SMALL[name])


def with_running_statistics(model: ReIDNet) -> ReIDNet:
    """``model`` after two training-mode passes (BatchNorm statistics away from their init), in eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 3, *model.input_size))
    return model.eval()


def test_every_architecture_is_covered() -> None:
    assert set(ARCHITECTURES.names()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_contract_shapes_at_input_size_and_other_sizes(name: str) -> None:
    model = with_running_statistics(small(name))
    assert model.spec()["architecture"] == name and model.feature_space == model.spec()["feature_space"]
    for size in (model.input_size, (37, 23), (128, 64)):
        with torch.no_grad():
            features = model(torch.rand(3, 3, *size))
            logits = model.classify(torch.rand(2, 3, *size))
        assert features.shape == (3, model.feature_dim) and logits.shape == (2, model.num_classes)
        torch.testing.assert_close(features.norm(dim=1), torch.ones(3))
    assert model.mean.shape == model.std.shape == (1, 3, 1, 1)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_eval_mode_features_do_not_depend_on_the_batch(name: str) -> None:
    model = with_running_statistics(small(name))
    batch = torch.rand(4, 3, *model.input_size)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(batch[i : i + 1]) for i in range(4)])
        reversed_ = model(batch.flip(0)).flip(0)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together, reversed_, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_input_pixel_image(name: str) -> None:
    model = with_running_statistics(small(name))
    images = torch.rand(2, 3, 50, 21, requires_grad=True)
    model(images)[:, :3].sum().backward()
    assert images.grad is not None and images.grad.abs().sum(dim=(1, 2, 3)).min() > 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = with_running_statistics(small(name, num_classes=5))
    path = save_checkpoint(model, tmp_path / "model.safetensors", {"seed": 0})
    assert checkpoint_meta(path)["spec"]["architecture"] == name
    loaded = load_model(path)
    assert type(loaded) is type(model) and not loaded.training and loaded.spec() == model.spec()
    x = torch.rand(2, 3, 45, 20)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert type(build_from_spec(model.spec())) is type(model)


CLI_RECIPES: dict[str, dict[str, Any]] = {
    "hacnn": {
        "model": {"architecture": "hacnn", "input_size": [64, 32], "channels": [16, 32, 48], "branch_dim": 16, "region_size": [12, 14]},
        "loss": {"cross_entropy": {}},
        "batch": {"batch_size": 16},
    },
    "mancs": {
        "model": {"architecture": "mancs", "backbone": "resnet18", "input_size": [32, 16]},
        "loss": {"focal": {}, "triplet": {"sampling": "curriculum", "curriculum": {"t0": 1, "t1": 1}}, "attention": {}},
        "batch": {"batch_size": 16, "sampler": "pk", "images_per_id": 4},
    },
}


@pytest.mark.parametrize("name", sorted(CLI_RECIPES))
def test_trained_evaluated_and_attacked_with_the_usual_commands(name: str, tiny_dataset_root: Path, tmp_path: Path, capsys) -> None:
    """`metricattack train` builds the architecture the config names; `evaluate` and `attack` take its checkpoint as any other."""
    from metricattack.cli import main

    recipe = {
        "data": {"dataset": "folder", "root": str(tiny_dataset_root), "cache": True},
        **CLI_RECIPES[name],
        "schedule": {"epochs": 1},
        "device": "cpu",
        "progress": False,
    }
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    checkpoint = tmp_path / "run" / "model.safetensors"
    assert f"trained {name}" in capsys.readouterr().out and checkpoint_meta(checkpoint)["spec"]["architecture"] == name
    data = ["--checkpoint", str(checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    assert main(["evaluate", *data]) == 0
    assert "rank-1" in capsys.readouterr().out
    for setting in ("gallery", "classification"):
        out = tmp_path / f"adv-{setting}"
        assert main(["attack", *data, "--out", str(out), "--method", "fgsm", "--eps", "2", "--setting", setting, "--no-progress"]) == 0
        assert (out / "attack_results.json").is_file()
    assert "mAP clean" in capsys.readouterr().out
