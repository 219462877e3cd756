"""Models from elsewhere through the CLI (``--model python:MODULE:FUNCTION``, ``--weights``), and
``MetricAttack`` giving the CLI's adversarial images, image for image."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import metricattack as ma
from metricattack.cli import build_parser, main
from metricattack.data.loading import read_image
from metricattack.errors import MetricAttackError
from metricattack.io import sha256_file
from metricattack.model_options import model_sources

USER_MODULE = '''
"""A user's own re-ID network: plain nn.Module, no input_size, any image size."""
import torch
from torch import nn


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 1)), nn.Flatten(),
        )

    def forward(self, images):
        return nn.functional.normalize(self.body(images), dim=1)


def build():
    torch.manual_seed(0)
    return UserNet().eval()
'''
SPEC = "python:user_cli_net:build"


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory):
    """``user_cli_net.py`` in a folder on ``sys.path`` (as PYTHONPATH would put it)."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "user_cli_net.py").write_text(USER_MODULE, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("user_cli_net", None)


@pytest.fixture(scope="module")
def cli_attack(user_module, tiny_dataset_root: Path, tiny_model_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """``metricattack attack --model python:... --eval-checkpoint <trained ResNet-18>``: I-FGSM, ε = 4, 3 steps."""
    out = tmp_path_factory.mktemp("cli_attack") / "adv"
    argv = ["attack", "--model", SPEC, "--eval-checkpoint", str(tiny_model_checkpoint), "--data-root", str(tiny_dataset_root)]
    argv += ["--dataset", "folder", "--out", str(out), "--eps", "4", "--method-option", "steps=3", "--batch-size", "16", "--no-progress"]
    assert main(argv) == 0
    return out, json.loads((out / "attack_results.json").read_text(encoding="utf-8"))


def test_user_model_is_attacked_and_evaluated_through_the_cli(cli_attack, tiny_model_checkpoint: Path) -> None:
    out, results = cli_attack
    white, black = results["evaluations"]
    assert white["white_box"] and white["model"]["label"] == SPEC and white["model"]["module_file"].endswith("user_cli_net.py")
    assert not black["white_box"] and black["model"]["checkpoint"] == str(tiny_model_checkpoint)
    assert results["linf_255"]["max_disk"] <= 4 and results["num_attacked"] > 0
    assert white["adversarial_disk"]["mean_true_positive_distance"] > white["clean"]["mean_true_positive_distance"]


def test_metric_attack_equals_the_cli_image_for_image(cli_attack, tiny_dataset_root: Path) -> None:
    out, results = cli_attack
    model = ma.load_model(SPEC)
    data = ma.load_dataset("folder", tiny_dataset_root)
    probes = ma.extract_features(model, data.query, batch_size=16, progress=False)
    query_pids = torch.tensor([r.pid for r in data.query])
    atk = ma.MetricAttack(model, eps=4, steps=3)
    compared = changed = 0
    for start in range(0, len(data.gallery), 16):  # the CLI's batches (all images have one size)
        records = data.gallery[start : start + 16]
        images = torch.stack([read_image(r.path) for r in records])
        refs = [probes[query_pids == r.pid] if r.pid > 0 else probes[:0] for r in records]
        pixels = ma.quantize(atk(images, refs), images, 4)
        for record, mine, clean in zip(records, pixels, images, strict=True):
            saved = np.array(Image.open(out / record.path.relative_to(data.root)).convert("RGB"))
            assert torch.equal(mine.permute(1, 2, 0), torch.from_numpy(saved)), record.path.name
            compared += 1
            changed += not torch.equal(mine, clean.mul(255).round().to(torch.uint8))
    assert compared == len(data.gallery) == results["num_images"]
    assert changed == results["num_attacked"]


def test_ensemble_of_a_checkpoint_and_a_user_model_with_weights(
    user_module, tiny_dataset_root: Path, tiny_model_checkpoint: Path, tmp_path: Path
) -> None:
    """``attack --checkpoint C --model python:... --weights W --eval-model python:...``: the weights
    reach the attacked model (its clean ranking is not the untrained module's), both models are
    attacked together, the module without weights is the black-box evaluation."""
    trained = ma.load_model(SPEC)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    weights = tmp_path / "user_trained.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    out = tmp_path / "ens"
    argv = ["attack", "--checkpoint", str(tiny_model_checkpoint), "--model", SPEC, "--weights", str(weights), "--eval-model", SPEC]
    argv += ["--data-root", str(tiny_dataset_root), "--dataset", "folder", "--out", str(out), "--method", "fgsm", "--eps", "4"]
    assert main([*argv, "--batch-size", "32", "--no-progress"]) == 0
    results = json.loads((out / "attack_results.json").read_text(encoding="utf-8"))
    ckpt, user = results["models"]
    assert ckpt["checkpoint"] == str(tiny_model_checkpoint)
    assert user["label"] == f"{SPEC} (user_trained.safetensors)" and user["weights"] == str(weights)
    assert user["sha256"] == sha256_file(weights)
    white = [e for e in results["evaluations"] if e["white_box"]]
    (black,) = [e for e in results["evaluations"] if not e["white_box"]]
    assert [e["model"]["label"] for e in white] == [ckpt["label"], user["label"]]
    assert black["model"]["label"] == SPEC and "weights" not in black["model"]
    assert white[1]["clean"]["mAP"] != black["clean"]["mAP"]  # the same module, with and without the weights
    assert all(e["adversarial_disk"]["mAP"] < e["clean"]["mAP"] for e in white)
    assert results["linf_255"]["max_disk"] <= 4


def test_user_model_fit_metric_and_evaluate(user_module, tiny_dataset_root: Path, tmp_path: Path, capsys) -> None:
    data = ["--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    assert main(["fit-metric", "--model", SPEC, *data, "--kind", "xqda"]) == 2
    assert "give --out" in capsys.readouterr().err  # a Python model without weights has no file to put the metric beside
    metric = tmp_path / "user.xqda.safetensors"
    assert main(["fit-metric", "-q", "--model", SPEC, *data, "--kind", "xqda", "--dim", "8", "--out", str(metric)]) == 0
    assert "loaded" not in capsys.readouterr().err  # -q: warnings only
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", SPEC, *data, "--metric", str(metric), "--out", str(out), "--no-progress"]) == 0
    assert f"metricattack: model {SPEC} loaded" in capsys.readouterr().err.splitlines()
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["model"]["label"] == SPEC and record["metric"]["file"] == str(metric)
    assert 0 < record["results"]["mAP"] <= 1


def test_weights_pair_with_the_model_before_them(tmp_path: Path) -> None:
    for name in ("model.safetensors", "r50.pth", "bot.pth"):
        (tmp_path / name).touch()  # model_sources checks that the files exist (it does not read them)
    ckpt, r50, bot = (str(tmp_path / n) for n in ("model.safetensors", "r50.pth", "bot.pth"))
    args = build_parser().parse_args(
        ["attack", "--checkpoint", ckpt, "--model", "torchreid:resnet50", "--weights", r50, "--model", SPEC]
        + ["--eval-model", "fastreid:bot_r50", "--weights", bot, "--data-root", "d", "--dataset", "folder", "--out", "o"]
    )
    attack = model_sources(args.checkpoint, args.model)
    assert [(s.label, s.weights) for s in attack] == [
        (f"{tmp_path.name}/model.safetensors", None),
        ("torchreid:resnet50 (r50.pth)", Path(r50)),
        (SPEC, None),
    ]
    assert [s.weights for s in model_sources(args.eval_checkpoint, args.eval_model)] == [Path(bot)]
    with pytest.raises(MetricAttackError, match=r"--weights .*missing.pth \(for --model torchreid:resnet50\) does not exist"):
        model_sources([], [["torchreid:resnet50", tmp_path / "missing.pth"]])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights", "w.pth", "--model", SPEC], "put it right after the --model it belongs to"),
        (["--model", SPEC, "--weights", "a.pth", "--weights", "b.pth"], "got two --weights files"),
    ],
)
def test_misplaced_weights_are_a_usage_error(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["evaluate", *argv, "--data-root", "d", "--dataset", "folder"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_format_without_weights_is_one_clear_error(tiny_dataset_root: Path, capsys) -> None:
    assert main(["evaluate", "--model", "torchreid:resnet50", "--data-root", str(tiny_dataset_root), "--dataset", "folder"]) == 2
    assert "--model torchreid:resnet50 needs --weights FILE" in capsys.readouterr().err
