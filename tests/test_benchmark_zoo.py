"""The benchmark's model zoo: a torchreid model, a timm ViT trained here and a user's network,
each clean and under white-box query- and gallery-side attacks (a small config, seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

torchreid = pytest.importorskip("torchreid")
pytest.importorskip("timm")

import metricattack as ma  # noqa: E402
from metricattack.benchmark.config import load_benchmark_config  # noqa: E402
from metricattack.cli import main  # noqa: E402
from metricattack.errors import ConfigError  # noqa: E402

USER_MODULE = """
import torch
from torch import nn


def build(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 1)), nn.Flatten()).eval()


def build_base():
    return build(seed=1)
"""


@pytest.fixture()
def zoo_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user network as the one base model (another one than the zoo's: one model under two names is refused); the zoo: torchreid's OSNet-x0.25 (a file written by
    torchreid), a timm ViT trained one epoch, and the user network again (python:)."""
    (tmp_path / "zoo_user_net.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    osnet = torchreid.models.build_model("osnet_x0_25", num_classes=11, pretrained=False, use_gpu=False)
    torchreid.utils.save_checkpoint({"state_dict": osnet.state_dict(), "epoch": 1, "rank1": np.float32(0.1)}, str(tmp_path / "log"))
    vit = {"model": {"backbone": "timm:test_vit", "input_size": [32, 16]}, "loss": {"cross_entropy": {}}}
    vit |= {"optimizer": {"lr": 0.0003}, "schedule": {"epochs": 1}, "batch": {"batch_size": 16}}
    config = {
        "name": "zoo",
        "dataset": {
            "name": "synthetic",
            "synthetic": {"seed": 0, "num_train_ids": 4, "num_test_ids": 6, "num_cameras": 2, "images_per_camera": 2}
            | {"height": 32, "width": 16, "num_distractors": 4, "num_junk": 2},
        },
        "models": [{"name": "U", "description": "user network", "model": "python:zoo_user_net:build_base"}],
        "attack": {"eps": 2, "batch_size": 32},
        "experiments": {
            "only": ["zoo"],
            "zoo": {
                "methods": ["ifgsm"],
                "epsilons": [2],
                "robustness": {"version": "smoke", "queries": 2},  # the protocol's plumbing, cheap (default: fast, every query)
                "models": [
                    {"name": "OSNet", "model": "torchreid:osnet_x0_25", "weights": "log/model.pth.tar-1"},
                    {"name": "ViT", "description": "timm test ViT", "paper": "Dosovitskiy et al., ICLR 2021", "train": vit},
                    {"name": "Mine", "description": "my network", "model": "python:zoo_user_net:build"},
                ],
            },
        },
        "progress": False,
    }
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    yield tmp_path / "zoo.yaml"
    sys.modules.pop("zoo_user_net", None)


def test_the_zoo_evaluates_each_model_clean_and_attacked(zoo_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["benchmark", "--config", str(zoo_config), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    zoo = results["zoo"]
    assert [r["model"] for r in zoo["rows"]] == ["OSNet", "ViT", "Mine"] and zoo["sides"] == ["query", "gallery"]
    osnet, vit, mine = zoo["rows"]
    assert osnet["paper"].startswith("Zhou et al., Omni-Scale Feature Learning") and osnet["source"] == "torchreid:osnet_x0_25"
    assert vit["paper"] == "Dosovitskiy et al., ICLR 2021" and vit["source"] == "trained: timm:test_vit"
    assert mine["paper"] == "my network"
    assert results["table1"] is None and "Model zoo" in (out / "report.html").read_text(encoding="utf-8")
    table = (out / "tables" / "zoo.md").read_text(encoding="utf-8")
    assert "| OSNet | torchreid:osnet_x0_25 |" in table and "Robust mAP (smoke, ε=8)" in table
    # the robustness protocol's robust mAP of each model: its robustness.json (the robustness leaderboard's stage)
    assert zoo["robustness_version"] == "smoke" and zoo["robustness_eps"] == 8 and zoo["robustness_queries"] == 2
    for row in zoo["rows"]:
        robust, detail = row["robust_mAP"], json.loads(Path(row["robust_file"]).read_text(encoding="utf-8"))
        assert robust["low"] <= robust["value"] <= robust["high"] and robust["value"] <= detail["clean"]["value"] + 1e-9
        assert detail["protocol"]["version"] == "smoke" and detail["robust"][0]["mAP"] == robust
        assert detail["dataset"]["num_queries"] == 2 and detail["model"]["name"] == row["model"]  # the zoo model itself, two queries

    model = ma.load_model("torchreid:osnet_x0_25", weights=zoo_config.parent / "log" / "model.pth.tar-1")
    data = ma.load_dataset("folder", results["dataset"]["root"])
    clean = ma.evaluate_model(model, data, ma.build_metric("euclidean"), progress=False)
    assert osnet["clean"]["mAP"] == pytest.approx(100 * clean.mAP, abs=1e-4)  # the library's evaluation of the same model
    settings = {a["id"]: a for a in results["attacks"]}
    for row in zoo["rows"]:
        assert [(a["side"], a["method"], a["epsilon"]) for a in row["attacks"]] == [("query", "ifgsm", 2), ("gallery", "ifgsm", 2)]
        for attack in row["attacks"]:
            assert attack["linf"] <= 2 and attack["attack_id"] not in settings  # made by the zoo, listed in its section
    # each side's adversarial dataset, read back as a whole, scores what the zoo reports (queries attacked: the probes differ)
    for attack in osnet["attacks"]:
        adversarial_set = ma.load_dataset("folder", attack["dataset_dir"])
        adversarial = ma.evaluate_model(model, adversarial_set, ma.build_metric("euclidean"), progress=False)
        assert attack["ranking"]["mAP"] == pytest.approx(100 * adversarial.mAP, abs=1e-4)
        assert attack["ranking"]["mAP"] < osnet["clean"]["mAP"]


def test_zoo_names_and_options_are_checked_at_load(zoo_config: Path) -> None:
    with pytest.raises(ConfigError, match=r"experiments.zoo.models: names must be unique and differ from the base models"):
        load_benchmark_config(zoo_config, ["experiments.zoo.models.2.name=U"])
    with pytest.raises(ConfigError, match=r"test_only does not apply"):
        load_benchmark_config(zoo_config, ["experiments.zoo.models.2.test_only=true"])
    with pytest.raises(ConfigError, match=r"experiments.zoo.sides lists query more than once"):
        load_benchmark_config(zoo_config, ["experiments.zoo.sides=[query,query]"])
