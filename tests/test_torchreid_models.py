"""torchreid's own models through ``torchreid:<name>`` and ``ma.wrap``, against torchreid itself.

torchreid (0.2.5 from PyPI) is a test-only dependency: the networks are built by torchreid with
random weights, written by torchreid's ``save_checkpoint`` (as its engine does: a ``state_dict``
with the epoch, a NumPy rank-1 and the optimizer's state), and the reference features come from
torchreid's ``FeatureExtractor`` (its test transform on the image files, its forward in eval mode).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torchreid = pytest.importorskip("torchreid")

import metricattack as ma  # noqa: E402
from metricattack.cli import main  # noqa: E402
from metricattack.errors import CheckpointError  # noqa: E402
from metricattack.models.foreign import FORMATS  # noqa: E402
from metricattack.models.torchreid_zoo import TORCHREID_MODELS, paper  # noqa: E402
from metricattack.models.wrap import MEAN, STD  # noqa: E402
from metricattack.robustness.result import RobustnessResult  # noqa: E402


def build(name: str, classes: int = 5, seed: int = 0) -> torch.nn.Module:
    """torchreid's network ``name`` with random weights (and random BatchNorm statistics, so eval mode is not trivial)."""
    torch.manual_seed(seed)
    net = torchreid.models.build_model(name, num_classes=classes, loss="softmax", pretrained=False, use_gpu=False)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def engine_checkpoint(net: torch.nn.Module, folder: Path) -> Path:
    """What torchreid's engine writes after an epoch (``Engine.save_model``): ``folder/model.pth.tar-1``."""
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)
    state = {"state_dict": net.state_dict(), "epoch": 1, "rank1": np.float32(0.25), "optimizer": optimizer.state_dict()}
    torchreid.utils.save_checkpoint(state, str(folder))
    return folder / "model.pth.tar-1"


def image_files(folder: Path, size: tuple[int, int], count: int = 2) -> tuple[list[str], torch.Tensor]:
    """``count`` random images of ``size`` (a model's native size, so torchreid's Resize leaves them as they are):
    their files and the images ``[count,3,H,W]`` in [0,1]."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, size=(count, *size, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths, torch.stack([ma.read_image(p) for p in paths])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], torch.Tensor]:
    """Two random 256x128 images (torchreid's test size)."""
    return image_files(tmp_path_factory.mktemp("torchreid_images"), (256, 128))


def torchreid_features(name: str, net: torch.nn.Module, paths: list[str], size: tuple[int, int], folder: Path) -> torch.Tensor:
    """torchreid's ``FeatureExtractor`` on the image files, with ``net``'s weights (a plain state dict: its
    ``torch.load`` refuses the engine's NumPy rank-1)."""
    plain = folder / "state.pth"
    torch.save(net.state_dict(), plain)
    extractor = torchreid.utils.FeatureExtractor(name, model_path=str(plain), image_size=size, device="cpu", verbose=False)
    with torch.no_grad():
        return extractor(paths)


def test_every_name_of_torchreids_builder_is_a_format() -> None:
    assert TORCHREID_MODELS == tuple(vars(torchreid.models)["__model_factory"])
    for name in TORCHREID_MODELS:
        fmt = FORMATS.get(f"torchreid:{name}")
        assert fmt.project == "torchreid" and fmt.paper == paper(name)
        assert fmt.preprocessing.input_size == ((160, 64) if name == "hacnn" else (256, 128))


@pytest.mark.parametrize("name", ["osnet_x1_0", "mobilenetv2_x1_0", "mlfn"])
def test_torchreid_models_give_torchreids_features(name: str, images, tmp_path: Path) -> None:
    paths, pixels = images
    net = build(name)
    expected = torchreid_features(name, net, paths, (256, 128), tmp_path)
    with torch.no_grad():
        ours = ma.load_model(f"torchreid:{name}", weights=engine_checkpoint(net, tmp_path / "log"))(pixels)
    assert ours.shape == expected.shape and expected.abs().max() > 0
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()), (ours - expected).abs().max()


@pytest.mark.filterwarnings("ignore:.*(upsample|align_corners).*:UserWarning")  # torchreid's HACNN calls deprecated functions
@pytest.mark.parametrize(("name", "size", "scale"), [("resnet50", (256, 128), 1.0), ("hacnn", (160, 64), 2**-0.5)])
def test_the_mappings_onto_our_models_give_torchreids_features(name: str, size: tuple[int, int], scale: float, tmp_path: Path) -> None:
    """``torchreid:resnet50`` and ``torchreid:hacnn`` load into ReIDModel / HACNN (no torchreid needed) and
    compute what torchreid's networks do (HACNN: scaled by 1/sqrt(2) to unit norm, the same ranking)."""
    paths, pixels = image_files(tmp_path / "images", size)
    net = build(name, classes=6)
    expected = torchreid_features(name, net, paths, size, tmp_path)
    model = ma.load_model(f"torchreid:{name}", weights=engine_checkpoint(net, tmp_path / "log"))
    assert isinstance(model, ma.ReIDModel) or type(model).__name__ == "HACNN"
    with torch.no_grad():
        ours = model(pixels)
    assert torch.allclose(ours, scale * expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()), (ours - scale * expected).abs().max()


def test_module_prefix_and_wrong_files(images, tmp_path: Path) -> None:
    net = build("osnet_x0_25", classes=7)
    prefixed = tmp_path / "dp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, prefixed)  # saved from DataParallel
    with torch.no_grad():
        expected = net((images[1] - torch.tensor(ma.IMAGENET_MEAN)[:, None, None]) / torch.tensor(ma.IMAGENET_STD)[:, None, None])
        assert torch.allclose(ma.load_model("torchreid:osnet_x0_25", weights=prefixed)(images[1]), expected, atol=1e-6)
    with pytest.raises(CheckpointError, match=r"dp\.pth do not fit the model \(expected a torchreid osnet_x1_0 state dict"):
        ma.load_model("torchreid:osnet_x1_0", weights=prefixed)  # another width
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match=r"bare\.pth are not a torchreid mlfn state dict .*classifier weights .* are missing"):
        ma.load_model("torchreid:mlfn", weights=tmp_path / "bare.pth")


def test_wrap_keeps_the_networks_keys_and_round_trips_its_checkpoint(images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, pixels = images
    net = build("osnet_x0_25", classes=7, seed=1)
    keys = list(net.state_dict())
    wrapped = ma.wrap(net, mean=ma.IMAGENET_MEAN, std=ma.IMAGENET_STD, input_size=(256, 128))
    assert wrapped is net and list(wrapped.state_dict()) == keys  # no key added, renamed or removed
    assert {MEAN, STD} <= {name for name, _ in wrapped.named_buffers()}  # moved by .to(device), never saved
    checkpoint = engine_checkpoint(wrapped, tmp_path / "log")

    bare = build("osnet_x0_25", classes=7, seed=2)
    bare.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"])  # torchreid reads the wrapped network's file
    module = tmp_path / "osnet_wrapped.py"
    module.write_text(
        "import metricattack as ma\nimport torchreid\n\n\ndef build():\n"
        "    net = torchreid.models.build_model('osnet_x0_25', num_classes=7, pretrained=False)\n"
        "    return ma.wrap(net, mean=ma.IMAGENET_MEAN, std=ma.IMAGENET_STD, input_size=(256, 128))\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = ma.ModelSource.parse("python:osnet_wrapped:build", weights=checkpoint).load()
    assert loaded.record["preprocessing"] == {"input_size": [256, 128], "mean": list(ma.IMAGENET_MEAN), "std": list(ma.IMAGENET_STD)}
    small = pixels[:, :, ::2, ::2]  # any size: resized to 256x128 inside
    with torch.no_grad():
        normalised = (ma.models.preprocessing.resize_to_input(small, (256, 128)) - wrapped.metricattack_mean) / wrapped.metricattack_std
        assert torch.allclose(loaded.model(small), bare(normalised), atol=1e-6)
    sys.modules.pop("osnet_wrapped", None)


def test_wrap_options_and_refusals() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    wrapped = ma.wrap(net, input_size=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), normalize=True)
    x = torch.rand(2, 3, 20, 10, requires_grad=True)
    out = wrapped(x)
    assert torch.allclose(out.norm(dim=1), torch.ones(2)) and len(net) == 3  # nothing added to the Sequential
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # differentiable with respect to the pixels
    pair = ma.wrap(torch.nn.Sequential(torch.nn.Flatten()), input_size=(2, 1), output=lambda o: o[:, :3])
    assert pair(torch.ones(1, 3, 4, 4)).shape == (1, 3)
    with pytest.raises(ma.MetricAttackError, match="already wrapped"):
        ma.wrap(net, input_size=(8, 4))
    with pytest.raises(ValueError, match=r"images of shape \[B,3,H,W\] in \[0,1\], got \(3, 20, 10\)"):
        wrapped(torch.rand(3, 20, 10))


OSNET_MODULE = """
# osnet_reid.py, as docs/how-to/model-zoos.md ("Any network that expects normalised tensors: ma.wrap") tells a user to write it
import metricattack as ma
import torchreid


def build():
    net = torchreid.models.build_model("osnet_x0_25", num_classes=12, pretrained=False)  # 12: the classes of the checkpoint
    return ma.wrap(net, mean=ma.IMAGENET_MEAN, std=ma.IMAGENET_STD, input_size=(64, 32))  # 64x32 (the docs: 256x128) keeps the test fast
"""


def test_robustness_command_on_a_torchreid_model_wrapped_as_a_user_would(
    tiny_dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: ``metricattack robustness`` on any model ``--model python:`` accepts, here torchreid's OSNet
    in a user's module with its torchreid checkpoint (``--weights``), the smoke protocol on two queries."""
    data = tmp_path / "two-queries"
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        (data / split).mkdir(parents=True)
    for image in (tiny_dataset_root / "bounding_box_test").iterdir():
        shutil.copy(image, data / "bounding_box_test")
    for image in sorted((tiny_dataset_root / "query").iterdir())[4::22]:  # two identities' queries, above chance AP here
        shutil.copy(image, data / "query")
    (tmp_path / "osnet_reid.py").write_text(OSNET_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = engine_checkpoint(build("osnet_x0_25", classes=12), tmp_path / "log")  # as torchreid's training writes it
    out = tmp_path / "robustness"
    argv = ["robustness", "--model", "python:osnet_reid:build", "--weights", str(checkpoint), "--data-root", str(data)]
    assert main([*argv, "--dataset", "folder", "--version", "smoke", "--out", str(out), "--no-progress"]) == 0
    assert "robust mAP" in capsys.readouterr().out
    result = RobustnessResult.model_validate(json.loads((out / "robustness.json").read_text(encoding="utf-8")))
    assert result.dataset.num_valid_queries == 2 and result.model["preprocessing"]["input_size"] == [64, 32]
    assert result.headline.attacks[0].attacked == 2  # both above chance: the cascade attacks them
    assert [r.eps for r in result.robust] == [8, 5] and 0 <= result.chance_mAP <= 100
    for row in result.robust:
        assert 0 <= row.mAP.value <= result.clean.value <= 100 and row.mAP.low <= row.mAP.value <= row.mAP.high
    assert {f.name for f in result.flags} == {
        "never-weaker",
        "eps-sweep",
        "convergence",
        "black-box",
        "zero-gradient",
        "randomness",
        "gallery-never-weaker",
    }
    assert {f.status for f in result.flags} <= {"ok", "flagged", "not measured"}
    sys.modules.pop("osnet_reid", None)
