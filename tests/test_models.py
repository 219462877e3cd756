"""ReIDModel and backbone registry: shapes, unit norm, batch independence, gradients, errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from metricattack.errors import MetricAttackError
from metricattack.models import backbones
from metricattack.models.backbones import BACKBONES, build_backbone
from metricattack.models.base import ARCHITECTURES, build_from_spec
from metricattack.models.reid import ReIDModel


def _model(**kwargs) -> ReIDModel:
    torch.manual_seed(0)
    return ReIDModel("resnet18", num_classes=4, input_size=(32, 16), **kwargs)


@pytest.mark.parametrize("size", [(32, 16), (17, 9), (64, 40)])
def test_any_input_size_gives_unit_norm_features(size: tuple[int, int]) -> None:
    model = _model().eval()
    feats = model(torch.rand(3, 3, *size))
    assert feats.shape == (3, model.feature_dim)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))


def test_train_outputs_and_classify_shapes() -> None:
    model = _model(reduce_dim=64).train()
    out = model.forward_train(torch.rand(4, 3, 32, 16))
    assert out.embedding.shape == (4, 64) and [lg.shape for lg in out.logits] == [(4, 4)] and out.attention_logits == ()
    assert model.classify(torch.rand(2, 3, 20, 10)).shape == (2, 4)


def test_feature_space_selects_the_retrieval_activations() -> None:
    """'pooled' returns the normalised pooled features (what a triplet loss trains), 'neck' the BN-neck output."""
    neck = _model().train()
    with torch.no_grad():
        neck(torch.rand(8, 3, 32, 16))  # running statistics away from (0, 1), so the two spaces differ
    pooled = ReIDModel.from_spec({**neck.spec(), "feature_space": "pooled"})
    pooled.load_state_dict(neck.state_dict())
    neck.eval(), pooled.eval()
    x = torch.rand(3, 3, 32, 16)
    with torch.no_grad():
        raw = neck._pooled(x)
        torch.testing.assert_close(pooled(x), torch.nn.functional.normalize(raw, dim=1))
        torch.testing.assert_close(neck(x), torch.nn.functional.normalize(neck.neck(raw), dim=1))
        assert (pooled(x) - neck(x)).abs().max() > 1e-2
    assert pooled.spec()["feature_space"] == "pooled" and neck.spec()["feature_space"] == "neck"


def test_eval_mode_has_no_batch_coupling() -> None:
    model = _model().eval()
    # Non-trivial running statistics so the BN layers matter.
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 16))
    model.eval()
    batch = torch.rand(5, 3, 32, 16)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(batch[i : i + 1]) for i in range(5)])
        shuffled = model(batch.flip(0)).flip(0)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together, shuffled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_gradients_reach_input_pixels(name: str) -> None:
    model = ReIDModel(name, num_classes=3, input_size=(32, 16)).eval()
    images = torch.rand(2, 3, 40, 20, requires_grad=True)
    model(images)[:, 0].sum().backward()
    assert images.grad is not None
    assert images.grad.abs().sum(dim=(1, 2, 3)).min() > 0


def test_spec_rebuilds_same_architecture() -> None:
    model = _model(last_stride=2, neck="none")
    assert model.spec()["architecture"] == "reid"
    clone = build_from_spec(model.spec())
    assert type(clone) is ReIDModel
    clone.load_state_dict(model.state_dict())
    clone.eval(), model.eval()
    x = torch.rand(2, 3, 32, 16)
    torch.testing.assert_close(clone(x), model(x))
    assert clone.spec() == model.spec()


def test_last_stride_doubles_resnet_resolution() -> None:
    one, _ = build_backbone("resnet18", last_stride=1)
    two, _ = build_backbone("resnet18", last_stride=2)
    x = torch.rand(1, 3, 64, 32)
    assert one(x).shape[-2:] == (4, 2) and two(x).shape[-2:] == (2, 1)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_batchnorm_momentum_is_pytorch_default(name: str) -> None:
    trunk, _ = build_backbone(name)
    momenta = {m.momentum for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}


def test_registry_lists_paper_and_cpu_backbones() -> None:
    names = BACKBONES.names()
    for name in ("resnet50", "resnext50_32x4d", "densenet121", "resnet18", "mobilenet_v3_small"):
        assert name in names


def test_unknown_architecture_names_the_choices() -> None:
    with pytest.raises(MetricAttackError, match=r"unknown architecture 'resnet'; available: .*reid"):
        build_from_spec({"architecture": "resnet", "num_classes": 3})
    assert "reid" in ARCHITECTURES


def test_unknown_backbone_names_the_choices() -> None:
    with pytest.raises(MetricAttackError, match=r"unknown backbone 'resnet5'.*resnet50"):
        ReIDModel("resnet5", num_classes=3)


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        backbones.register_backbone("resnet18")(lambda pretrained, last_stride: (torch.nn.Identity(), 1))


def test_pretrained_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable (simulated)")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path))
    with pytest.raises(MetricAttackError, match=r"pretrained: false.*local weights file"):
        ReIDModel("resnet18", num_classes=3, pretrained=True)


def test_pretrained_from_local_file(tmp_path) -> None:
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    model = ReIDModel("resnet18", num_classes=3, pretrained=str(weights))
    torch.testing.assert_close(model.trunk[0].weight, reference.conv1.weight)

    with pytest.raises(MetricAttackError, match="does not exist"):
        ReIDModel("resnet18", num_classes=3, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(MetricAttackError, match="do not fit backbone 'mobilenet_v3_small'"):
        ReIDModel("mobilenet_v3_small", num_classes=3, pretrained=str(weights))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "input_size": (0, 16)}, "input_size"),
        ({"num_classes": 3, "neck": "fancy"}, "neck"),
        ({"num_classes": 3, "last_stride": 3}, "last_stride"),
        ({"num_classes": 3, "feature_space": "bn"}, "feature_space"),
    ],
)
def test_invalid_model_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(MetricAttackError, match=match):
        ReIDModel("resnet18", **kwargs)
