"""Checkpoints: safetensors + JSON round trip and every way a checkpoint can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metricattack.errors import CheckpointError
from metricattack.models.checkpoint import checkpoint_meta, load_model, load_train_state, save_checkpoint, save_train_state
from metricattack.models.reid import ReIDModel


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[ReIDModel, Path]:
    torch.manual_seed(0)
    model = ReIDModel("resnet18", num_classes=5, input_size=(32, 16))
    model.train()
    with torch.no_grad():
        model(torch.rand(6, 3, 32, 16))  # move BN running statistics away from their init
    path = save_checkpoint(model.eval(), tmp_path / "model.safetensors", {"epoch": 3, "seed": 7})
    return model, path


def test_round_trip_gives_identical_outputs(saved: tuple[ReIDModel, Path]) -> None:
    model, path = saved
    loaded = load_model(path)
    assert not loaded.training
    x = torch.rand(3, 3, 40, 20)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    meta = checkpoint_meta(path)
    assert meta["meta"] == {"epoch": 3, "seed": 7}
    assert meta["spec"]["backbone"] == "resnet18" and meta["spec"]["num_classes"] == 5
    assert "torch" in meta["environment"]
    assert len(list(path.parent.glob("*.tmp"))) == 0


def test_expect_matching_config_passes(saved: tuple[ReIDModel, Path]) -> None:
    _, path = saved
    load_model(path, expect={"backbone": "resnet18", "num_classes": 5, "input_size": (32, 16)})


@pytest.mark.parametrize(
    "expect, match", [({"backbone": "resnet50"}, "backbone='resnet18'.*backbone='resnet50'"), ({"num_classes": 751}, "num_classes=5.*751")]
)
def test_mismatching_config_is_named(saved: tuple[ReIDModel, Path], expect: dict, match: str) -> None:
    _, path = saved
    with pytest.raises(CheckpointError, match=match):
        load_model(path, expect=expect)


def test_missing_files(tmp_path: Path, saved: tuple[ReIDModel, Path]) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    _, path = saved
    with pytest.raises(CheckpointError, match="must be the .safetensors weights file"):
        load_model(path.with_suffix(".json"))
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="metadata .*model.json is missing"):
        load_model(path)


def test_corrupt_json(saved: tuple[ReIDModel, Path]) -> None:
    _, path = saved
    path.with_suffix(".json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)
    path.with_suffix(".json").write_text(json.dumps({"hello": 1}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a metricattack checkpoint"):
        load_model(path)


def test_weights_not_matching_spec(saved: tuple[ReIDModel, Path], tmp_path: Path) -> None:
    _, path = saved
    other = save_checkpoint(ReIDModel("resnet18", num_classes=9, input_size=(32, 16)), tmp_path / "other.safetensors", {})
    record = json.loads(path.with_suffix(".json").read_text())
    record["weights_sha256"] = json.loads(other.with_suffix(".json").read_text())["weights_sha256"]
    path.with_suffix(".json").write_text(json.dumps(record))
    path.write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match=r"shape mismatches \['classifier.weight \(9, 512\) vs \(5, 512\)'\]"):
        load_model(path)


def test_torn_pair_detected_by_checksum(saved: tuple[ReIDModel, Path], tmp_path: Path) -> None:
    _, path = saved
    other = save_checkpoint(ReIDModel("resnet18", num_classes=5, input_size=(32, 16)), tmp_path / "other.safetensors", {})
    path.write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(path)


def test_train_state_round_trip(saved: tuple[ReIDModel, Path]) -> None:
    model, path = saved
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    optimizer.zero_grad()
    model.classify(torch.rand(4, 3, 32, 16)).sum().backward()
    optimizer.step()
    save_train_state(path, {"epoch": 2, "optimizer": optimizer.state_dict()})
    state = load_train_state(path)
    assert state["epoch"] == 2
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(state["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_checkpoint_written_before_architectures_loads_as_reid_model(saved: tuple[ReIDModel, Path]) -> None:
    """A sidecar in the old form (spec without 'architecture' and 'feature_space') still loads, as the
    BN-neck ReIDModel it was."""
    model, path = saved
    sidecar = path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    record["spec"] = {
        "backbone": "resnet18",
        "num_classes": 5,
        "input_size": [32, 16],
        "mean": record["spec"]["mean"],
        "std": record["spec"]["std"],
        "last_stride": 1,
        "neck": "bnneck",
        "reduce_dim": None,
        "feature_dim": 512,
    }
    sidecar.write_text(json.dumps(record))
    loaded = load_model(path)
    assert type(loaded) is ReIDModel and loaded.feature_space == "neck"
    assert loaded.spec()["architecture"] == "reid"
    x = torch.rand(2, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_unknown_architecture_in_spec(saved: tuple[ReIDModel, Path]) -> None:
    _, path = saved
    sidecar = path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    record["spec"]["architecture"] = "transreid"
    sidecar.write_text(json.dumps(record))
    with pytest.raises(
        CheckpointError, match=r"needs the architecture 'transreid', which is not registered.*registered architectures: .*reid"
    ):
        load_model(path)
