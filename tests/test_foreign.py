"""torchreid / fast-reid checkpoints: key mapping onto metricattack models gives the other project's features.

The reference networks below are written here from torchvision parts with the other
projects' module names, so their ``state_dict()`` has those projects' keys, and their
``forward`` computes the test feature the way those projects do (read from
torchreid/models/resnet.py and fastreid/modeling/{backbones/resnet.py,heads/embedding_head.py,
meta_arch/baseline.py}). No download: the weights are random, with random BN statistics.
``tests/test_torchreid_models.py`` compares with torchreid's own networks and FeatureExtractor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from metricattack.errors import CheckpointError, MetricAttackError
from metricattack.models.foreign import FORMATS, load_foreign
from metricattack.models.reid import IMAGENET_MEAN, IMAGENET_STD, ReIDModel
from metricattack.models.sources import load_model

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def randomise(module: nn.Module) -> nn.Module:
    """Random BN affine parameters and running statistics, so every BN layer changes the output."""
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=gen)
            m.bias.data = 0.1 * torch.randn(m.num_features, generator=gen)
            m.running_mean = 0.1 * torch.randn(m.num_features, generator=gen)
            m.running_var = 0.5 + torch.rand(m.num_features, generator=gen)
    return module.eval()


class TorchreidResNet50(nn.Module):
    """torchreid's ``resnet50``: last stride 2, average pooling, unnormalised pooled feature at test time."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        tv = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = tv.conv1, tv.bn1, tv.relu, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: normalised 256x128 images
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.global_avgpool(x).flatten(1)


class FastreidBackbone(nn.Module):
    """fast-reid's ResNet-50, last stride 1: max-pool 3x3/2 without padding in ceil mode (v1) or
    with padding 1 as torchvision's (v0.1, the release of the model zoo's files)."""

    def __init__(self, v01: bool = False) -> None:
        super().__init__()
        tv = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu = tv.conv1, tv.bn1, tv.relu
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if v01 else nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4
        self.layer4[0].conv2.stride = (1, 1)
        self.layer4[0].downsample[0].stride = (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class FastreidHead(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(nn.BatchNorm2d(2048))
        self.weight = nn.Parameter(0.01 * torch.randn(classes, 2048))


class FastreidBoT(nn.Module):
    """fast-reid's ``Baseline`` meta-architecture with the BoT head; pixels in 0..255, cosine test features."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone, self.heads = FastreidBackbone(), FastreidHead(classes)
        self.register_buffer("pixel_mean", MEAN * 255, False)
        self.register_buffer("pixel_std", STD * 255, False)

    def forward(self, pixels_255: torch.Tensor) -> torch.Tensor:
        maps = self.backbone((pixels_255 - self.pixel_mean) / self.pixel_std)
        pooled = F.adaptive_avg_pool2d(maps, 1)
        return F.normalize(self.heads.bottleneck(pooled)[..., 0, 0], dim=1)


class FastreidBNneckHead(nn.Module):
    """fast-reid v0.1's ``BNneckHead``: ``bnneck`` BatchNorm and a bias-free ``classifier``."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.bnneck = nn.BatchNorm2d(2048)
        self.classifier = nn.Linear(2048, classes, bias=False)


class FastreidBoTv01(nn.Module):
    """fast-reid v0.1.1's ``Baseline`` (persistent pixel statistics) with the BNneck head."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", MEAN * 255)
        self.register_buffer("pixel_std", STD * 255)
        self.backbone, self.heads = FastreidBackbone(v01=True), FastreidBNneckHead(classes)

    def forward(self, pixels_255: torch.Tensor) -> torch.Tensor:
        maps = self.backbone((pixels_255 - self.pixel_mean) / self.pixel_std)
        return F.normalize(self.heads.bnneck(F.adaptive_avg_pool2d(maps, 1))[..., 0, 0], dim=1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two images in [0,1] at the projects' test size 256x128 (so no resizing is involved)."""
    return torch.rand(2, 3, 256, 128, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def torchreid_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A torchreid training checkpoint ``{"state_dict", "epoch", "rank1"}`` of a DataParallel model."""
    torch.manual_seed(0)
    reference = randomise(TorchreidResNet50(classes=7))
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path_factory.mktemp("torchreid") / "model.pth.tar-60"
    torch.save({"state_dict": state, "epoch": 60, "rank1": 0.87}, path)
    return path, reference


@pytest.fixture(scope="module")
def fastreid_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A fast-reid checkpointer file ``{"model", "iteration"}``."""
    torch.manual_seed(0)
    reference = randomise(FastreidBoT(classes=5))
    path = tmp_path_factory.mktemp("fastreid") / "model_final.pth"
    torch.save({"model": reference.state_dict(), "iteration": 18000}, path)
    return path, reference


def test_torchreid_resnet50_gives_torchreids_features(torchreid_file, images: torch.Tensor) -> None:
    path, reference = torchreid_file
    model = load_foreign("torchreid:resnet50", path)
    with torch.no_grad():
        expected = reference((images - MEAN) / STD)
        got = model(images)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got.norm(dim=1), torch.ones(2))  # torchreid's test features are not normalised
        logits = model.classify(images)
    torch.testing.assert_close(logits, reference.classifier(expected), rtol=1e-5, atol=1e-5)
    assert not model.training and model.input_size == (256, 128) and model.num_classes == 7


def test_fastreid_bot_r50_gives_fastreids_features(fastreid_file, images: torch.Tensor) -> None:
    path, reference = fastreid_file
    model = load_foreign("fastreid:bot_r50", path)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images * 255), rtol=1e-5, atol=1e-5)
    assert model.spec()["backbone"] == "fastreid_resnet50" and model.num_classes == 5


def test_fastreid_model_zoo_layout_v01(tmp_path: Path, images: torch.Tensor) -> None:
    """The model zoo's files (market_bot_R50.pth, release v0.1.1): BNneck head keys, torchvision's stem."""
    torch.manual_seed(0)
    reference = randomise(FastreidBoTv01(classes=6))
    path = tmp_path / "market_bot_R50.pth"
    torch.save({"model": reference.state_dict(), "iteration": 17999}, path)
    model = load_foreign("fastreid:bot_r50", path)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images * 255), rtol=1e-5, atol=1e-5)
        logits = model.classify(images)
    assert model.spec()["backbone"] == "resnet50" and logits.shape == (2, 6)


def test_fastreid_stem_is_not_torchvisions(fastreid_file, images: torch.Tensor) -> None:
    """The mapping needs fast-reid's own max-pool: the same weights in a torchvision stem give other features."""
    path, reference = fastreid_file
    model = load_foreign("fastreid:bot_r50", path)
    model.trunk[3] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    with torch.no_grad():
        assert (model(images) - reference(images * 255)).abs().max() > 1e-3


def test_older_fastreid_keys_and_stored_pixel_statistics(fastreid_file, tmp_path: Path, images: torch.Tensor) -> None:
    path, reference = fastreid_file
    state = dict(reference.state_dict())
    state["heads.classifier.weight"] = state.pop("heads.weight")
    state["pixel_mean"], state["pixel_std"] = reference.pixel_mean, reference.pixel_std
    old = tmp_path / "old.pth"
    torch.save(state, old)
    model = load_foreign("fastreid:bot_r50", old)
    torch.testing.assert_close(model.mean, MEAN)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images * 255), rtol=1e-5, atol=1e-5)


def test_safetensors_weights(torchreid_file, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    _, reference = torchreid_file
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = load_foreign("torchreid:resnet50", path)
    torch.testing.assert_close(model.classifier.bias, reference.classifier.bias)


def test_a_file_of_the_other_project_is_one_clear_error(torchreid_file, fastreid_file) -> None:
    with pytest.raises(CheckpointError, match=r"model_final.pth are not a torchreid ResNet-50 state dict.*'classifier.weight'"):
        load_foreign("torchreid:resnet50", fastreid_file[0])
    with pytest.raises(CheckpointError, match=r"not a fast-reid BoT ResNet-50 state dict.*'heads.weight'"):
        load_foreign("fastreid:bot_r50", torchreid_file[0])


def test_extra_layers_are_named(torchreid_file, tmp_path: Path) -> None:
    """torchreid's resnet50_fc512 (an fc layer and last stride 1) is another architecture."""
    _, reference = torchreid_file
    state = {**reference.state_dict(), "fc.0.weight": torch.zeros(512, 2048), "fc.0.bias": torch.zeros(512)}
    torch.save(state, tmp_path / "fc512.pth")
    with pytest.raises(
        CheckpointError, match=r"fc512.pth do not fit the model \(expected a torchreid ResNet-50.*2 unexpected \['fc.0.bias'"
    ):
        load_foreign("torchreid:resnet50", tmp_path / "fc512.pth")


def test_unsafe_or_broken_files_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "optimizer": object()}, pickled)
    with pytest.raises(CheckpointError, match="weights_only=True; arbitrary pickled objects are refused"):
        load_foreign("torchreid:resnet50", pickled)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read torchreid:resnet50 weights file .*junk.pth"):
        load_foreign("torchreid:resnet50", tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_foreign("torchreid:resnet50", tmp_path / "missing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_foreign("torchreid:resnet50", tmp_path / "list.pth")


def test_unknown_format_lists_the_registered_ones() -> None:
    assert {"torchreid:resnet50", "fastreid:bot_r50"} <= set(FORMATS.names())
    with pytest.raises(MetricAttackError, match=r"unknown model format 'torchreid:resnet19'; available: .*fastreid:bot_r50"):
        load_foreign("torchreid:resnet19", "x.pth")


def test_torchreid_models_without_torchreid(torchreid_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torchreid, ``torchreid:resnet50`` (mapped onto ReIDModel) loads and the models torchreid builds say how to install it."""
    monkeypatch.setitem(sys.modules, "torchreid", None)  # import torchreid fails, as where it is not installed
    path, _ = torchreid_file
    assert isinstance(load_model("torchreid:resnet50", weights=path), ReIDModel)
    with pytest.raises(MetricAttackError, match=r"built by torchreid, which cannot be imported .*pip install 'metricattack\[torchreid\]'"):
        load_model("torchreid:osnet_x1_0", weights=path)
