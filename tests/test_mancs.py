"""Mancs: fully attentional blocks, curriculum-sampled triplets, the three losses learning together."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from metricattack.errors import ConfigError, MetricAttackError
from metricattack.models.mancs import Mancs
from metricattack.training.config import TrainConfig, load_train_config
from metricattack.training.losses import batch_hard_triplet_loss, curriculum_hardness, curriculum_triplet_loss
from metricattack.training.trainer import LossTerms


def _small(num_classes: int = 4) -> Mancs:
    torch.manual_seed(0)
    return Mancs(num_classes=num_classes, backbone="resnet18", input_size=(32, 16))


def _config(**loss: object) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "data": {"dataset": "folder", "root": "unused"},
            "model": {"architecture": "mancs", "backbone": "resnet18", "input_size": [32, 16]},
            "loss": loss,
            "schedule": {"epochs": 4},
            "batch": {"batch_size": 8, "sampler": "pk", "images_per_id": 2},
        }
    )


def test_paper_network_is_resnet50_with_three_fabs() -> None:
    model = Mancs(num_classes=751)
    assert model.backbone_name == "resnet50" and model.input_size == (256, 128) and model.feature_dim == 2048
    assert [fab.expand.out_channels for fab in model.fabs] == [256, 512, 1024]  # after res_conv2, 3, 4
    assert [fab.reduce.out_channels for fab in model.fabs] == [16, 32, 64]  # reduction 16


def test_fab_masks_cover_channels_and_positions() -> None:
    model = _small().eval()
    with torch.no_grad():
        masks = model.attention_masks(torch.rand(2, 3, 32, 16))
    assert [tuple(m.shape) for m in masks] == [(2, 64, 8, 4), (2, 128, 4, 2), (2, 256, 2, 1)]
    assert all(0 < m.min() and m.max() < 1 for m in masks)
    assert all(m.std(dim=(2, 3)).max() > 0 for m in masks[:2])  # a mask per position, not one per channel


def test_retrieval_features_are_the_normalised_ranking_features() -> None:
    """Mancs retrieves (and is attacked) in the space its ranking loss trains: the pooled res_conv5 features."""
    model = _small().eval()
    x = torch.rand(3, 3, 40, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.nn.functional.normalize(model.forward_train(x).embedding, dim=1))
    assert model.spec()["feature_space"] == "ranking"


def test_non_resnet_backbone_is_refused() -> None:
    with pytest.raises(MetricAttackError, match="Mancs needs a ResNet trunk"):
        Mancs(num_classes=3, backbone="densenet121")


# --------------------------------------------------------------------------- curriculum sampling


def test_curriculum_at_full_hardness_is_batch_hard() -> None:
    torch.manual_seed(1)
    features, labels = torch.randn(12, 5), torch.arange(12) // 3
    torch.testing.assert_close(curriculum_triplet_loss(features, labels, 0.3, 1.0), batch_hard_triplet_loss(features, labels, 0.3))


def test_curriculum_draws_uniformly_at_zero_hardness_and_hard_ones_later() -> None:
    """Anchor 0 has 4 negatives at distances 1..4: at hardness 0 each is drawn about equally often,
    at hardness 0.75 the closest (hardest) dominates."""
    features = torch.tensor([[0.0], [0.1], [1.0], [2.0], [3.0], [4.0]])
    labels = torch.tensor([0, 0, 1, 2, 3, 4])

    uniform = _negative_draws(features, labels, 0.0)
    hard = _negative_draws(features, labels, 0.75)
    assert set(uniform) == {2, 3, 4, 5} and min(uniform.values()) > 60  # ~100 each of 400
    assert hard[2] > 250 and hard[2] > 5 * hard[5]


def _negative_draws(features: torch.Tensor, labels: torch.Tensor, hardness: float) -> Counter:
    """How often each negative is drawn for anchor 0 in 400 draws."""
    from metricattack.training.losses import _draw_by_hardness, pairwise_euclidean

    dist = pairwise_euclidean(features)
    negatives = labels[:, None] != labels[None, :]
    torch.manual_seed(0)
    return Counter(int(_draw_by_hardness(-dist, negatives, hardness)[0]) for _ in range(400))


def test_hardness_schedule() -> None:
    assert [curriculum_hardness(e, 5) for e in (1, 2, 3, 5, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert curriculum_hardness(1, 1) == 1.0


# --------------------------------------------------------------------------- training


def test_three_losses_learn_together_on_a_fixed_batch() -> None:
    """CE + curriculum triplet + attention loss go down in 3 Adam steps; every FAB and head gets a gradient."""
    cfg = _config(cross_entropy={}, triplet={"margin": 0.3, "sampling": "curriculum", "curriculum_epochs": 3}, attention={"weight": 1.0})
    model = _small().train()
    images, labels = torch.rand(8, 3, 32, 16), torch.arange(8) // 2
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    losses, history = LossTerms(cfg), []
    for epoch in (3, 3, 3):  # hardness 1: deterministic triplets, comparable losses
        loss, parts = losses(model.forward_train(images), labels, epoch)
        assert set(parts) == {"cross_entropy", "triplet", "attention"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0]
    for module in [*model.fabs, *model.attention_classifiers, model.classifier]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_attention_loss_needs_a_model_with_attention_heads(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(
        "data: {dataset: folder, root: x}\nmodel: {backbone: resnet18}\nloss: {cross_entropy: {}, attention: {}}\nschedule: {epochs: 1}\n"
    )
    with pytest.raises(ConfigError, match=r"loss.attention needs a model with attention heads \(model.architecture: mancs\), not reid"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="curriculum_epochs is set exactly when sampling is curriculum"):
        load_train_config(path, ["model.architecture=mancs", "loss.triplet.sampling=curriculum", "batch.sampler=pk"])
