"""Benchmark configs take models from elsewhere (``model:`` / ``weights:``, as ``--model`` / ``--weights``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import metricattack as ma
from metricattack.benchmark.config import load_benchmark_config
from metricattack.cli import main
from metricattack.errors import ConfigError
from metricattack.io import sha256_file
from metricattack.stages import read_stage_log

HACNN_FILE = Path(__file__).parent / "data" / "torchreid_hacnn_small.safetensors"  # written by torchreid's own HACNN
USER_MODULE = '''
"""A user's network: a plain nn.Module without classify()."""
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 1)), nn.Flatten()
    ).eval()
'''
SPEC = "python:user_bench_net:build"


@pytest.fixture()
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``user_bench_net.py`` on ``sys.path``, its trained weights and a torchreid HACNN checkpoint, in ``tmp_path``."""
    (tmp_path / "user_bench_net.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_bench_net

    trained = user_bench_net.build()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "user.safetensors"))
    state = {k.removeprefix("weights/"): v for k, v in load_file(str(HACNN_FILE)).items() if k.startswith("weights/")}
    torch.save({"state_dict": state, "epoch": 150}, tmp_path / "hacnn_small.pth.tar")
    yield tmp_path
    sys.modules.pop("user_bench_net", None)


def write_config(folder: Path, **changes: object) -> Path:
    """A two-model benchmark: the user's network (attacked) and torchreid's HACNN (test only); Tables 1-2."""
    config = {
        "name": "elsewhere",
        "dataset": {
            "name": "synthetic",
            "synthetic": {"seed": 0, "num_train_ids": 4, "num_test_ids": 6, "num_cameras": 2, "images_per_camera": 2}
            | {"height": 32, "width": 16, "num_distractors": 4, "num_junk": 2},
        },
        "models": [
            {"name": "U", "description": "user network", "model": SPEC, "weights": "user.safetensors"},
            {"name": "H", "description": "torchreid HACNN", "model": "torchreid:hacnn", "weights": "hacnn_small.pth.tar"}
            | {"test_only": True},
        ],
        "attack": {"eps": 2, "methods": ["ifgsm"]},
        "experiments": {"only": ["table1", "table2"]},
        "progress": False,
    } | changes
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_config_takes_models_from_elsewhere_and_checks_them_at_load(files: Path) -> None:
    cfg = load_benchmark_config(write_config(files))
    assert [(m.model, m.weights) for m in cfg.models] == [
        (SPEC, files / "user.safetensors"),
        ("torchreid:hacnn", files / "hacnn_small.pth.tar"),
    ]
    for override, message in [
        ("models.H.weights=missing.pth", r"model 'H': --weights missing.pth \(for --model torchreid:hacnn\) does not exist"),
        ("models.H.model=torchreid:osnet", r"model 'H': unknown model format 'torchreid:osnet'; available: torchreid:resnet50"),
        ("models.H.weights=null", r"model 'H': --model torchreid:hacnn needs --weights FILE"),
        ("models.U.model=python:user-bench:build", r"model 'U': --model 'python:user-bench:build': expected python:MODULE:FUNCTION"),
        ("models.U.model=python:no_such_user_module:build", r"model 'U': --model .*: cannot find module 'no_such_user_module'.*PYTHONPATH"),
        ("models.U.checkpoint=user.safetensors", r"model 'U' needs exactly one of train / train_config / checkpoint / model"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_benchmark_config(write_config(files), [override])
    with pytest.raises(
        ConfigError, match="Table 5 retrains its models with their recipe, but \\['U'\\] are given as checkpoints or models"
    ):
        load_benchmark_config(write_config(files, experiments={"only": ["table5"]}))


def test_benchmark_evaluates_and_attacks_models_from_elsewhere(files: Path) -> None:
    out = files / "run"
    assert main(["benchmark", "--config", str(write_config(files)), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    user, hacnn = results["models"]
    assert user["checkpoint"] is None and user["source"]["model"] == SPEC and user["spec"] == {}
    assert user["checkpoint_sha256"] == sha256_file(files / "user.safetensors")
    assert hacnn["source"]["preprocessing"]["input_size"] == [160, 64] and hacnn["spec"]["architecture"] == "hacnn"
    # the benchmark's models are those the library loads: Table 1 is their clean evaluation
    data = ma.load_dataset("folder", next((out / "cache" / "dataset").glob("*/data")))
    for row, (spec, weights) in zip(
        results["table1"], [(SPEC, "user.safetensors"), ("torchreid:hacnn", "hacnn_small.pth.tar")], strict=True
    ):
        model = ma.load_model(spec, weights=files / weights)
        expected = ma.evaluate_model(model, data, ma.build_metric("euclidean"), progress=False)
        assert row["clean"]["mAP"] == pytest.approx(100 * expected.mAP, abs=1e-9), row["model"]
    (attack_row,) = results["table2"]["rows"]
    assert attack_row["attacked"] == "U" and [c["tested"] for c in attack_row["cells"]] == ["U", "H"]
    assert attack_row["cells"][0]["ranking"]["mAP"] < results["table2"]["clean_mAP"]["U"]  # white-box cut
    attack = json.loads((Path(results["attacks"][0]["dataset_dir"]) / "attack_results.json").read_text(encoding="utf-8"))
    assert attack["models"][0]["name"] == "U" and attack["models"][0]["weights"] == str(files / "user.safetensors")
    # resumable: a re-run does no work; new weights redo what depends on them
    logged = len(read_stage_log(out))
    assert main(["benchmark", "--config", str(write_config(files)), "--out", str(out)]) == 0
    assert [e for e in read_stage_log(out)[logged:] if e["status"] == "ran"] == []
    save_file({k: v + 0.01 for k, v in load_file(str(files / "user.safetensors")).items()}, str(files / "user.safetensors"))
    logged = len(read_stage_log(out))
    assert main(["benchmark", "--config", str(write_config(files)), "--out", str(out)]) == 0
    redone = {(e["kind"], e["label"]) for e in read_stage_log(out)[logged:] if e["status"] == "ran"}
    assert {("model", "U"), ("features", "U")} <= redone and not {("model", "H"), ("features", "H")} & redone
    assert any(kind == "adv_features" and label.endswith("@H") for kind, label in redone)  # H tested on the new attack


def test_classification_attack_needs_a_classifier(files: Path) -> None:
    path = write_config(files, experiments={"only": ["classification"]})
    with pytest.raises(
        ConfigError,
        match=r"attack classification-.* \(models U\): the classification threat model attacks a classifier, and model 0 \(.*\) has none",
    ):
        from metricattack.benchmark.runner import run_benchmark

        run_benchmark(load_benchmark_config(path), files / "run")
