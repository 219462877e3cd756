"""Model sources: ``python:MODULE:FUNCTION`` (+ ``--weights``), formats of other projects, checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import metricattack as ma
from metricattack.errors import CheckpointError, MetricAttackError
from metricattack.io import sha256_file
from metricattack.models.sources import ModelSource

USER_MODULE = '''
"""A user's own re-ID network: no metricattack base class, no input_size attribute, any image size."""
import torch
from torch import nn


class TinyReID(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, images):
        return nn.functional.normalize(self.body(images), dim=1)


def build():
    torch.manual_seed(0)
    return TinyReID().train()  # the loader puts it in eval mode


def not_a_model():
    return "hello"
'''


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Module ``user_reid_models`` in a folder put on ``sys.path`` (what PYTHONPATH does)."""
    (tmp_path / "user_reid_models.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_reid_models"
    sys.modules.pop("user_reid_models", None)


def test_python_model_loads_in_eval_mode_with_provenance(user_module: str, tmp_path: Path) -> None:
    loaded = ModelSource.parse(f"python:{user_module}:build").load()
    assert not loaded.model.training and loaded.anchor is None
    assert loaded.record["label"] == "python:user_reid_models:build"
    assert loaded.record["module_file"] == str(tmp_path / "user_reid_models.py")
    assert loaded.record["sha256"] == sha256_file(tmp_path / "user_reid_models.py")
    assert loaded.model(torch.rand(2, 3, 30, 14)).shape == (2, 16)


def test_python_model_with_weights(user_module: str, tmp_path: Path) -> None:
    trained = ma.load_model(f"python:{user_module}:build")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    weights = tmp_path / "trained.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    loaded = ModelSource.parse(f"python:{user_module}:build", weights=weights).load()
    assert loaded.anchor == weights and loaded.record["weights"] == str(weights)
    x = torch.rand(2, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), trained.eval()(x))
    torch.save({"body.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial.pth do not fit the model .*missing"):
        ModelSource.parse(f"python:{user_module}:build", weights=tmp_path / "partial.pth").load()


@pytest.mark.parametrize(
    "spec, match",
    [
        ("python:user_reid_models", "expected python:MODULE:FUNCTION"),
        ("python:user-reid:build", "expected python:MODULE:FUNCTION"),
        ("python:no_such_module_here:build", r"cannot import module 'no_such_module_here'.*PYTHONPATH"),
        ("python:user_reid_models:missing", "has no function 'missing'"),
        ("python:user_reid_models:not_a_model", r"not_a_model\(\) returned a str, expected a torch.nn.Module"),
    ],
)
def test_bad_python_specs_are_one_clear_error(user_module: str, spec: str, match: str) -> None:
    with pytest.raises(MetricAttackError, match=match):
        ModelSource.parse(spec).load()


def test_source_rules(tmp_path: Path) -> None:
    with pytest.raises(MetricAttackError, match="torchreid:resnet50 needs --weights FILE"):
        ModelSource(model="torchreid:resnet50")
    with pytest.raises(MetricAttackError, match="unknown model format 'torchreid:osnet'"):
        ModelSource(model="torchreid:osnet", weights=tmp_path / "w.pth")
    with pytest.raises(MetricAttackError, match=r"unknown model format 'torchreid:osnet'; available: torchreid:resnet50"):
        ma.load_model("torchreid:osnet", weights=tmp_path / "w.pth")  # not mistaken for a checkpoint path
    with pytest.raises(MetricAttackError, match="--weights goes with --model"):
        ModelSource.parse(tmp_path / "model.safetensors", weights=tmp_path / "w.pth")
    assert ModelSource.parse("runs/B1/model.safetensors").label == "B1/model.safetensors"
    assert ModelSource.parse("fastreid:bot_r50", "x/model_final.pth").label == "fastreid:bot_r50 (model_final.pth)"
