"""HACNN: the paper's network shape, training signal on both branches, torchreid-format weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from metricattack.errors import CheckpointError
from metricattack.models.foreign import FORMATS, load_foreign
from metricattack.models.hacnn import HACNN, region_sizes
from metricattack.training.config import TrainConfig
from metricattack.training.trainer import LossTerms

FIXTURE = Path(__file__).parent / "data" / "torchreid_hacnn_small.safetensors"


def _small(num_classes: int = 5) -> HACNN:
    torch.manual_seed(0)
    return HACNN(num_classes=num_classes, channels=(16, 32, 48), branch_dim=16)


def test_paper_network_shapes() -> None:
    """160x64 input; levels of 128/256/384 channels; 24x28, 12x14, 6x7 regions; 512 + 512 features."""
    model = HACNN(num_classes=751).eval()
    assert model.input_size == (160, 64) and model.feature_dim == 1024 and model.regions == 4
    assert model.region_sizes == [(24, 28), (12, 14), (6, 7)] == region_sizes((24, 28))
    x = model.stem(model.prepare(torch.rand(1, 3, 160, 64)))
    assert x.shape == (1, 32, 80, 32)
    for level, local, channels, size in zip(model.levels, model.local_levels, (128, 256, 384), model.region_sizes, strict=True):
        features = level.inception(x)
        soft, translations = level.attention(features)
        assert soft.shape == features.shape and 0.5 <= soft.min() and soft.max() <= 1.0
        assert features.shape[1] == channels and translations.shape == (1, 4, 2)
        stripes = model._crop_regions(x, translations, size)
        assert stripes.shape == (4, x.shape[1], *size)
        assert local(stripes).shape[-2:] == ((size[0] + 1) // 2, (size[1] + 1) // 2)
        x = features * soft
    assert x.shape == (1, 384, 10, 4)


def test_hard_attention_starts_from_evenly_spaced_stripes() -> None:
    translations = _small().levels[0].attention.hard(torch.rand(2, 16, 5, 3))
    torch.testing.assert_close(translations[0], torch.tensor([[0.0, -0.75], [0.0, -0.25], [0.0, 0.25], [0.0, 0.75]]))


def test_both_branches_learn_on_a_fixed_batch() -> None:
    """The training losses (cross-entropy on the global and on the local branch) go down in 3 Adam steps."""
    cfg = TrainConfig.model_validate(
        {
            "data": {"dataset": "folder", "root": "unused"},
            "model": {"architecture": "hacnn", "input_size": [80, 32], "channels": [16, 32, 48], "branch_dim": 16},
            "loss": {"cross_entropy": {}},
            "schedule": {"epochs": 1},
            "batch": {"batch_size": 8},
        }
    )
    model = _small(num_classes=4).train()
    images, labels = torch.rand(8, 3, 80, 32), torch.arange(8) % 4
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = LossTerms(cfg)
    history = []
    for _ in range(3):
        outputs = model.forward_train(images)
        assert len(outputs.logits) == 2 and outputs.embedding.shape == (8, 32)
        loss, parts = losses(outputs, labels, 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0]
    assert model.global_classifier.weight.grad.abs().sum() > 0 and model.local_classifier.weight.grad.abs().sum() > 0
    # the hard attention learns where to look: the region translations get a gradient through the sampling
    assert all(level.attention.hard.fc.weight.grad.abs().sum() > 0 for level in model.levels)


def test_retrieval_features_are_global_and_local_before_their_classifiers() -> None:
    """The HACNN paper retrieves with global ⊕ local: the activations each branch's classifier reads
    (the paper's "before the loss layer"), each L2-normalised, together scaled to unit norm."""
    model = _small().eval()
    x = torch.rand(3, 3, 80, 32)
    with torch.no_grad():
        features, outputs = model(x), model.forward_train(x)
    global_feat, local_feat = outputs.embedding.split(model.branch_dim, dim=1)
    torch.testing.assert_close(model.global_classifier(global_feat), outputs.logits[0])
    torch.testing.assert_close(model.local_classifier(local_feat), outputs.logits[1])
    expected = torch.cat([torch.nn.functional.normalize(global_feat, dim=1), torch.nn.functional.normalize(local_feat, dim=1)], dim=1)
    torch.testing.assert_close(features, expected / math.sqrt(2.0))
    assert features.shape == (3, model.feature_dim) == (3, 2 * model.branch_dim) and model.spec()["feature_space"] == "global+local"


# --------------------------------------------------------------------------- torchreid format


def test_torchreid_weights_give_torchreid_features(tmp_path: Path) -> None:
    """A state dict written by torchreid's own HACNN (small widths, random weights) and that model's
    output on two images (``tests/data``, made once with torchreid): our HACNN with those weights
    gives the same features (torchreid concatenates the two unit-norm parts; we scale by 1/sqrt(2))."""
    data = load_file(str(FIXTURE))
    state = {k.removeprefix("weights/"): v for k, v in data.items() if k.startswith("weights/")}
    torch.save({"state_dict": state, "epoch": 150}, tmp_path / "hacnn_small_xent.pth.tar")
    model = load_foreign("torchreid:hacnn", tmp_path / "hacnn_small_xent.pth.tar")
    assert isinstance(model, HACNN) and not model.training
    assert model.channels == (16, 32, 48) and model.branch_dim == 16 and model.num_classes == 5
    with torch.no_grad():
        features = model(data["input/pixels"].float() / 255)
    torch.testing.assert_close(features * math.sqrt(2.0), data["expected/features"], rtol=1e-4, atol=1e-5)


def _as_torchreid(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our HACNN keys written with torchreid's names (an independent spelling of the mapping)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "stem":
            name = "conv." + ".".join(parts[1:])
        elif parts[0] == "levels" and parts[2] == "inception":
            name = f"inception{int(parts[1]) + 1}.{parts[3]}.stream{int(parts[5]) + 1}." + ".".join(parts[6:])
        elif parts[0] == "levels":
            sub = {
                "soft.spatial.conv": "soft_attn.spatial_attn.conv1",
                "soft.spatial.scale": "soft_attn.spatial_attn.conv2",
                "soft.channel.reduce": "soft_attn.channel_attn.conv1",
                "soft.channel.expand": "soft_attn.channel_attn.conv2",
                "soft.fuse": "soft_attn.conv",
                "hard.fc": "hard_attn.fc",
            }
            inner = ".".join(parts[3:])
            prefix = next(p for p in sub if inner.startswith(p + "."))
            name = f"ha{int(parts[1]) + 1}.{sub[prefix]}{inner[len(prefix) :]}"
        elif parts[0] == "local_levels":
            name = f"local_conv{int(parts[1]) + 1}.stream{int(parts[3]) + 1}." + ".".join(parts[4:])
        elif parts[0] in ("global_head", "local_head"):
            name = f"fc_{parts[0].split('_')[0]}.{'0' if parts[1] == 'fc' else '1'}." + ".".join(parts[2:])
        else:
            name = f"classifier_{parts[0].split('_')[0]}." + ".".join(parts[1:])
        out[name] = value
    return out


def test_our_weights_renamed_to_torchreid_load_back_identically(tmp_path: Path) -> None:
    source = _small()
    source.train()
    with torch.no_grad():
        source(torch.rand(4, 3, 160, 64))
    source.eval()
    torchreid_state = {"module." + k: v for k, v in _as_torchreid(source.state_dict()).items()}  # a DataParallel save
    torch.save({"state_dict": torchreid_state, "epoch": 60}, tmp_path / "hacnn.pth.tar")
    loaded = load_foreign("torchreid:hacnn", tmp_path / "hacnn.pth.tar")
    x = torch.rand(3, 3, 160, 64)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))
    assert FORMATS.get("torchreid:hacnn").preprocessing.input_size == (160, 64)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.pop("classifier_local.bias"), r"1 missing \['local_classifier.bias'\]"),
        (
            lambda s: s.update({"inception1.0.stream5.0.conv.weight": torch.zeros(1)}),
            r"1 unexpected \['inception1.0.stream5.0.conv.weight'\]",
        ),
        (
            lambda s: s.update({"fc_local.0.weight": torch.zeros(16, 100)}),
            r"shape mismatches \['local_head.fc.weight \(16, 100\) vs \(16, 192\)'\]",
        ),
        (
            lambda s: s.pop("classifier_global.weight"),
            r"are not a torchreid HACNN state dict \(torchreid:hacnn\): .?it has no 'classifier_global.weight'",
        ),
        (lambda s: s.update({"ha1.soft_attn.conv.conv.weight": torch.zeros(20, 20, 1, 1)}), r"its shapes fit no HACNN"),
    ],
)
def test_state_dict_that_does_not_fit_gives_one_clear_error(change, match: str, tmp_path: Path) -> None:
    state = _as_torchreid(_small().state_dict())
    change(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "hacnn.safetensors"))
    with pytest.raises(CheckpointError, match=match):
        load_foreign("torchreid:hacnn", tmp_path / "hacnn.safetensors")


def test_resnet_state_dict_is_not_taken_for_hacnn(tmp_path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match=r"resnet18.pth are not a torchreid HACNN state dict"):
        load_foreign("torchreid:hacnn", tmp_path / "resnet18.pth")
