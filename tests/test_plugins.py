"""A backbone registered from the user's own module survives a checkpoint save / load in a new process,
and a checkpoint never runs code: a module it names is imported only when the model needs it and
the user allowed it (issue #19)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metricattack
from metricattack.errors import CheckpointError, ConfigError, MetricAttackWarning
from metricattack.models.checkpoint import load_model, meta_path, save_checkpoint
from metricattack.models.plugins import ALLOW_ENV, allowing, defining_modules
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
model = load_model(sys.argv[1], allow_modules=sys.argv[4:])
torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
"""


def marker_module(marker: Path | None = None) -> str:
    """Source of a module that writes ``marker`` (default: ``MARKER`` beside it) when imported."""
    target = repr(str(marker)) if marker is not None else 'Path(__file__).with_name("MARKER")'
    return f"from pathlib import Path\nPath({target}).write_text('this module ran')\n"


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
    assert json.loads(meta_path(path).read_text(encoding="utf-8"))["modules"] == {"backbone": "user_nets.trunks"}
    images = torch.rand(2, 3, 40, 20)
    torch.save(images, tmp_path / "images.pt")
    src = Path(metricattack.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_package), str(src)]), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", LOAD_IN_NEW_PROCESS, str(path), str(tmp_path / "images.pt"), str(tmp_path / "out.pt")]
    subprocess.run([*argv, "user_nets"], check=True, env=env, cwd=tmp_path)  # allowing the package allows its modules
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt"), model(images))
        assert torch.equal(load_model(path)(images), model(images))  # registered here: nothing to import


def _ghost_checkpoint(user_package: Path, folder: Path, module: str, backbone: str, registers: bool = True) -> tuple[Path, torch.nn.Module]:
    """A checkpoint whose backbone ``backbone`` is registered by ``module`` (not imported yet), which
    writes ``folder/MARKER`` when imported; returns it with the model it holds."""
    import user_nets.trunks  # noqa: F401

    torch.manual_seed(0)
    model = ReIDModel("user_tiny_trunk", num_classes=3, input_size=(32, 16)).eval()
    path = save_checkpoint(model, folder / "model.safetensors", {})
    record = json.loads(meta_path(path).read_text(encoding="utf-8"))
    record["spec"]["backbone"] = backbone
    record["modules"] = {"backbone": module}
    meta_path(path).write_text(json.dumps(record), encoding="utf-8")
    body = marker_module(folder / "MARKER")
    if registers:
        body += f"from user_nets.trunks import build\nfrom metricattack import register_backbone\nregister_backbone({backbone!r})(build)\n"
    target = user_package / Path(*module.split("."))
    target.parent.mkdir(parents=True, exist_ok=True)
    for package in list(target.parents)[: len(module.split(".")) - 1]:
        (package / "__init__.py").touch()
    target.with_suffix(".py").write_text(body, encoding="utf-8")
    return path, model


def test_a_needed_module_is_imported_only_when_allowed(user_package: Path, tmp_path: Path, monkeypatch) -> None:
    name = f"ghost_{tmp_path.name.replace('-', '_')}"
    path, model = _ghost_checkpoint(user_package, tmp_path, f"{name}.trunk", f"{name}_trunk")
    monkeypatch.setenv(ALLOW_ENV, "some_other_module")
    for refused in ((), ["elsewhere"], [f"{name}.trunk_not"]):
        with pytest.raises(CheckpointError) as caught:
            load_model(path, allow_modules=refused)
        message = str(caught.value)
        assert f"needs the backbone '{name}_trunk', which is not registered" in message and f"module '{name}.trunk'" in message
        assert f"--allow-module {name}.trunk" in message and ALLOW_ENV in message
    assert not (tmp_path / "MARKER").exists() and f"{name}.trunk" not in sys.modules
    monkeypatch.setenv(ALLOW_ENV, f"x,{name}.trunk")
    images = torch.rand(2, 3, 40, 20)
    with torch.no_grad():
        assert torch.equal(load_model(path)(images), model(images))
    assert (tmp_path / "MARKER").read_text() == "this module ran"


def test_consent_inside_the_cli_and_a_module_that_does_not_register(
    user_package: Path, tiny_dataset_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from metricattack.cli import main

    name = f"half_{tmp_path.name.replace('-', '_')}"
    path, _ = _ghost_checkpoint(user_package, tmp_path, name, f"{name}_trunk", registers=False)
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    argv = ["evaluate", "--checkpoint", str(path), "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"asks to import module '{name}'" in err and f"--allow-module {name}" in err and "Traceback" not in err
    assert not (tmp_path / "MARKER").exists()
    assert main([*argv, "--allow-module", name]) == 2
    assert f"module {name} did not register it" in capsys.readouterr().err and (tmp_path / "MARKER").exists()
    with pytest.raises(ConfigError, match="not a Python module name"), allowing(["a;b"]):
        pass


def test_a_checkpoint_never_imports_what_the_model_does_not_need(user_package: Path, tmp_path: Path, capfd) -> None:
    torch.manual_seed(0)
    path = save_checkpoint(ReIDModel("resnet18", num_classes=3, input_size=(32, 16)), tmp_path / "model.safetensors", {})
    record = json.loads(meta_path(path).read_text(encoding="utf-8"))
    assert record["modules"] == {}  # metricattack's own backbones need no import
    name = f"unneeded_{tmp_path.name.replace('-', '_')}"
    (user_package / f"{name}.py").write_text(marker_module(tmp_path / "MARKER"), encoding="utf-8")
    for modules in (["this", name], {"backbone": "this", "architecture": name}):
        meta_path(path).write_text(json.dumps({**record, "modules": modules}), encoding="utf-8")
        load_model(path, allow_modules=["this", name])  # allowed, but the model needs neither
    assert capfd.readouterr() == ("", "") and not (tmp_path / "MARKER").exists() and name not in sys.modules
    for modules, match in (
        (["os; rm -rf /"], "not a Python module name"),
        ("mynets", "expected a mapping"),
    ):
        meta_path(path).write_text(json.dumps({**record, "modules": modules}), encoding="utf-8")
        with pytest.raises(CheckpointError, match=match):
            load_model(path)
    meta_path(path).write_text(json.dumps({**record, "spec": {**record["spec"], "backbone": "gone_trunk"}}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="names no module for; import the module that registers it"):
        load_model(path)
    meta_path(path).write_text(
        json.dumps({**record, "spec": {**record["spec"], "backbone": "gone_trunk"}, "modules": ["gone_user_module_xyz"]}), encoding="utf-8"
    )
    with pytest.raises(CheckpointError, match=r"needs module 'gone_user_module_xyz'.*PYTHONPATH"):
        load_model(path, allow_modules=["gone_user_module_xyz"])


def test_a_module_beside_a_checkpoint_never_runs_under_python_m(tiny_model_checkpoint, tiny_dataset_root, tmp_path: Path) -> None:
    """The audit's case: a downloaded checkpoint names a module shipped beside it; ``python -m
    metricattack`` run from that folder puts it on sys.path. The model needs no module: nothing runs."""
    folder = tmp_path / "download"
    folder.mkdir()
    source = Path(tiny_model_checkpoint)
    shutil.copy(source, folder / "model.safetensors")
    record = json.loads(meta_path(source).read_text(encoding="utf-8"))
    meta_path(folder / "model.safetensors").write_text(json.dumps({**record, "modules": ["marker_beside", "this"]}), encoding="utf-8")
    (folder / "marker_beside.py").write_text(marker_module(), encoding="utf-8")
    src = Path(metricattack.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "metricattack", "evaluate", "--checkpoint", "model.safetensors", "--data-root", str(tiny_dataset_root)]
        + ["--dataset", "folder", "--no-progress", "--allow-module", "marker_beside"],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "rank-1" in done.stdout and "Beautiful is better than ugly" not in done.stdout + done.stderr
    assert not (folder / "MARKER").exists()


def test_backbone_defined_in_main_is_not_recorded() -> None:
    model = ReIDModel("resnet18", num_classes=2, input_size=(32, 16))
    from metricattack.models.backbones import BACKBONES

    build = BACKBONES.get("resnet18")
    original = build.__module__
    build.__module__ = "__main__"
    try:
        with pytest.warns(MetricAttackWarning, match="defined in __main__"):
            assert defining_modules(model) == {}
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
            assert f"{kind}: {', '.join(registry.listing())}" in lines
