"""A backbone registered from the user's own module survives a checkpoint save / load in a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metricattack
from metricattack.errors import CheckpointError, MetricAttackWarning
from metricattack.models.checkpoint import load_model, meta_path, save_checkpoint
from metricattack.models.plugins import defining_modules
from metricattack.models.reid import ReIDModel

USER_BACKBONE = '''
"""The user's own trunk, registered through metricattack's public backbone registry."""
from torch import nn

from metricattack.models.backbones import register_backbone


@register_backbone("user_tiny_trunk")
def build(pretrained, last_stride):
    return nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU()), 12
'''

LOAD_IN_NEW_PROCESS = """
import sys, torch
from metricattack.models.checkpoint import load_model
model = load_model(sys.argv[1])
torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
"""


@pytest.fixture(scope="module")
def user_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Package ``user_nets`` with module ``user_nets.trunks`` (registers ``user_tiny_trunk``), on ``sys.path``."""
    root = tmp_path_factory.mktemp("user_code")
    (root / "user_nets").mkdir()
    (root / "user_nets" / "__init__.py").write_text("", encoding="utf-8")
    (root / "user_nets" / "trunks.py").write_text(USER_BACKBONE, encoding="utf-8")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


def test_user_backbone_round_trips_through_a_checkpoint(user_package: Path, tmp_path: Path) -> None:
    import user_nets.trunks  # noqa: F401 - registers the backbone, as the user's script would

    torch.manual_seed(0)
    model = ReIDModel("user_tiny_trunk", num_classes=3, input_size=(32, 16)).eval()
    path = save_checkpoint(model, tmp_path / "model.safetensors", {})
    assert json.loads(meta_path(path).read_text(encoding="utf-8"))["modules"] == ["user_nets.trunks"]
    images = torch.rand(2, 3, 40, 20)
    torch.save(images, tmp_path / "images.pt")
    src = Path(metricattack.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_package), str(src)]), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", LOAD_IN_NEW_PROCESS, str(path), str(tmp_path / "images.pt"), str(tmp_path / "out.pt")],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt"), model(images))
        assert torch.equal(load_model(path)(images), model(images))


def test_missing_user_module_is_one_clear_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = save_checkpoint(ReIDModel("resnet18", num_classes=3, input_size=(32, 16)), tmp_path / "model.safetensors", {})
    record = json.loads(meta_path(path).read_text(encoding="utf-8"))
    assert record["modules"] == []  # metricattack's own backbones need no import
    for modules, match in (
        (["gone_user_module_xyz"], r"needs module 'gone_user_module_xyz'.*PYTHONPATH"),
        (["os; rm -rf /"], "not a Python module name"),
    ):
        meta_path(path).write_text(json.dumps({**record, "modules": modules}), encoding="utf-8")
        with pytest.raises(CheckpointError, match=match):
            load_model(path)


def test_backbone_defined_in_main_is_not_recorded() -> None:
    model = ReIDModel("resnet18", num_classes=2, input_size=(32, 16))
    from metricattack.models.backbones import BACKBONES

    build = BACKBONES.get("resnet18")
    original = build.__module__
    build.__module__ = "__main__"
    try:
        with pytest.warns(MetricAttackWarning, match="defined in __main__"):
            assert defining_modules(model) == []
    finally:
        build.__module__ = original


def test_help_lists_what_is_registered_including_user_code(user_package: Path, capsys) -> None:
    import user_nets.trunks  # noqa: F401 - the user's registration

    from metricattack import ARCHITECTURES, BACKBONES, DATASETS, FORMATS, METHODS, METRICS
    from metricattack.cli import main

    assert "user_tiny_trunk" in BACKBONES
    for command in ("evaluate", "attack", "fit-metric", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        lines = text[text.index("registered:") :].replace("\n  ", " ").splitlines()  # undo the wrapping of long lines
        for kind, registry in (
            ("architectures", ARCHITECTURES),
            ("backbones", BACKBONES),
            ("datasets", DATASETS),
            ("metrics", METRICS),
            ("attack methods", METHODS),
            ("model formats (--model)", FORMATS),
        ):
            assert f"{kind}: {', '.join(registry.names())}" in lines
