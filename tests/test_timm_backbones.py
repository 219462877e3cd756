"""``timm:<name>`` backbones: resolved through the backbone registry, trained, evaluated and attacked.

The model is timm's ``test_vit`` (a 6-block, 64-wide ViT with 16x16 patches, 0.3 M parameters),
so a whole train → evaluate → attack round takes seconds on the tiny synthetic data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

import metricattack as ma  # noqa: E402
from conftest import fixture_train_config  # noqa: E402
from metricattack.cli import main  # noqa: E402
from metricattack.errors import ConfigError, MetricAttackError  # noqa: E402
from metricattack.models.backbones import BACKBONES, build_backbone  # noqa: E402
from metricattack.models.reid import ReIDModel  # noqa: E402
from metricattack.training import train  # noqa: E402

VIT = "timm:test_vit"


def test_timm_names_resolve_through_the_backbone_registry() -> None:
    assert VIT in BACKBONES and "timm:no_such_model" not in BACKBONES
    assert any(entry.startswith("timm:<") for entry in BACKBONES.listing())
    trunk, dim = build_backbone(VIT)
    assert dim == 64 and trunk(torch.rand(2, 3, 64, 32)).shape == (2, 64, 1, 1)  # the class token, as a 1x1 map
    with pytest.raises(MetricAttackError, match=r"timm:vit_tiny_patch16: timm [\d.]+ has no model .*close names: .*vit_tiny_patch16_224"):
        BACKBONES.get("timm:vit_tiny_patch16")


def test_an_unknown_timm_name_fails_when_the_config_loads(tiny_dataset_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.reid\.backbone.*has no model 'vit_nope'"):
        fixture_train_config(tiny_dataset_root, "timm:vit_nope")


def test_a_vision_transformer_takes_any_input_size_of_its_patch_grid() -> None:
    model = ReIDModel(VIT, num_classes=3, input_size=(256, 128)).eval()  # timm built it for 160x160
    features = model(torch.rand(2, 3, 100, 40))
    assert features.shape == (2, 64) and torch.allclose(features.norm(dim=1), torch.ones(2))
    assert model.spec()["backbone"] == VIT


def test_pretrained_weights_offline_fail_clearly_and_a_local_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    import timm

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # this machine is offline: fail at once
    with pytest.raises(
        MetricAttackError, match=r"pretrained weights of timm model 'test_vit' are not in the Hugging Face cache.*pretrained: false"
    ):
        build_backbone(VIT, pretrained=True)

    torch.manual_seed(3)
    classifier = timm.create_model("test_vit", pretrained=False)  # with its 1000-class head, as timm saves it
    path = tmp_path / "test_vit.pth"
    torch.save(classifier.state_dict(), path)
    trunk, _ = build_backbone(VIT, pretrained=str(path))
    assert torch.equal(trunk.state_dict()["model.blocks.0.attn.qkv.weight"], classifier.state_dict()["blocks.0.attn.qkv.weight"])
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(MetricAttackError, match=r"pretrained weights .*other\.pth do not fit backbone timm:test_vit"):
        build_backbone(VIT, pretrained=str(tmp_path / "other.pth"))


def test_a_timm_vit_trains_evaluates_and_is_attacked(tiny_dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = fixture_train_config(tiny_dataset_root, VIT, "optimizer.lr=0.0003")  # a ViT wants a smaller step than a ResNet
    checkpoint = Path(train(recipe, tmp_path / "vit"))
    history = json.loads(checkpoint.with_suffix(".json").read_text(encoding="utf-8"))["meta"]["history"]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], [h["loss"] for h in history]

    model = ma.load_model(checkpoint)  # rebuilt from the spec: backbone timm:test_vit
    assert model.spec()["backbone"] == VIT
    data = ma.load_dataset("folder", tiny_dataset_root)
    clean = ma.evaluate_model(model, data, ma.build_metric("euclidean"), progress=False)
    assert (
        main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder", "--no-progress"])
        == 0
    )
    assert f"{100 * clean.mAP:.2f}" in capsys.readouterr().out  # the command evaluates what the library does

    out = tmp_path / "adv"
    argv = ["attack", "--checkpoint", str(checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder", "--out", str(out)]
    assert main([*argv, "--method", "ifgsm", "--eps", "8", "--batch-size", "32", "--no-progress"]) == 0
    results = json.loads((out / "attack_results.json").read_text(encoding="utf-8"))
    (white,) = results["evaluations"]
    assert results["linf_255"]["max_disk"] <= 8 and results["num_attacked"] > 0
    assert white["clean"]["mAP"] == pytest.approx(clean.mAP, abs=1e-9)
    assert white["adversarial_disk"]["mAP"] < 0.7 * white["clean"]["mAP"], (white["clean"]["mAP"], white["adversarial_disk"]["mAP"])
