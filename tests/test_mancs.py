"""Mancs as its paper describes it: residual attention blocks, the ranking branch's test feature,
the sigmoid focal loss, the attention head on the pooled masks, curriculum sampling, old checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from metricattack.errors import CheckpointError, ConfigError, MetricAttackError
from metricattack.models.checkpoint import load_model, meta_path, save_checkpoint
from metricattack.models.mancs import FullyAttentionalBlock, Mancs
from metricattack.training.config import TrainConfig, load_train_config
from metricattack.training.losses import (
    CurriculumState,
    curriculum_state,
    curriculum_triplet_loss,
    multilabel_sigmoid_loss,
    negative_rank_probabilities,
    sigmoid_focal_loss,
)
from metricattack.training.trainer import LossTerms


def _small(num_classes: int = 4, **kwargs: object) -> Mancs:
    torch.manual_seed(0)
    return Mancs(num_classes=num_classes, backbone="resnet18", input_size=(32, 16), **kwargs)


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


CURRICULUM = {"margin": 0.3, "sampling": "curriculum", "curriculum": {"t0": 2, "t1": 3}}


def test_paper_network_is_resnet50_with_three_fabs_and_a_2048_d_test_feature() -> None:
    model = Mancs(num_classes=751)
    assert model.backbone_name == "resnet50" and model.input_size == (256, 128) and model.feature_dim == 2048
    assert [fab.expand.out_channels for fab in model.fabs] == [256, 512, 1024]  # after res_conv2, 3, 4
    assert [fab.reduce.out_channels for fab in model.fabs] == [16, 32, 64]  # reduction 16
    assert (model.ranking.in_features, model.ranking.out_features) == (2048, 2048)
    assert (model.classifier.in_features, model.attention_classifier.in_features) == (2048, 256 + 512 + 1024)


# --------------------------------------------------------------------------- the fully attentional block


def test_fab_adds_its_input_back() -> None:
    """F_o = M * F + F: with the mask's logits forced to 0 (M = 1/2) the block returns 1.5 F, and
    its output is never below the input for a non-negative input (the attention amplifies, never erases)."""
    torch.manual_seed(0)
    fab = FullyAttentionalBlock(8, 4)
    x = torch.rand(2, 8, 5, 3)
    out, mask = fab(x)
    torch.testing.assert_close(out, mask * x + x)
    assert (out >= x).all() and (out <= 2 * x).all()
    torch.nn.init.zeros_(fab.expand.weight)
    torch.nn.init.zeros_(fab.expand.bias)
    out, mask = fab(x)
    torch.testing.assert_close(mask, torch.full_like(x, 0.5))
    torch.testing.assert_close(out, 1.5 * x)


def test_fab_masks_cover_channels_and_positions() -> None:
    model = _small().eval()
    with torch.no_grad():
        masks = model.attention_masks(torch.rand(2, 3, 32, 16))
    assert [tuple(m.shape) for m in masks] == [(2, 64, 8, 4), (2, 128, 4, 2), (2, 256, 2, 1)]
    assert all(0 < m.min() and m.max() < 1 for m in masks)
    assert all(m.std(dim=(2, 3)).max() > 0 for m in masks[:2])  # a mask per position, not one per channel


# --------------------------------------------------------------------------- the test feature


def test_test_feature_is_the_ranking_branch_fc_output_normalised() -> None:
    """Mancs retrieves (and is attacked) with its ranking branch's FC output, not the pooled trunk features."""
    model = _small(ranking_dim=24).eval()
    x = torch.rand(3, 3, 40, 20)
    with torch.no_grad():
        features, outputs = model(x), model.forward_train(x)
        pooled = model._shared(x).pooled
    assert features.shape == (3, 24) and model.feature_dim == 24 and outputs.embedding.shape == (3, 24)
    torch.testing.assert_close(features, torch.nn.functional.normalize(model.ranking(pooled), dim=1))
    torch.testing.assert_close(features, torch.nn.functional.normalize(outputs.embedding, dim=1))
    assert model.spec()["feature_space"] == "ranking" and model.spec()["ranking_dim"] == 24
    assert _small().feature_dim == 512  # default: the trunk's width (ResNet-18)


def test_classification_branch_starts_at_the_prior() -> None:
    """Both sigmoid heads start at probability 1/C for every identity (bias -log(C-1)), and classify() is the classification branch."""
    model = _small(num_classes=5).eval()
    x = torch.rand(2, 3, 32, 16)
    with torch.no_grad():
        outputs = model.forward_train(x)
        torch.testing.assert_close(model.classify(x), outputs.logits[0])
    for logits in (outputs.logits[0], outputs.attention_logits[0]):
        torch.testing.assert_close(torch.sigmoid(logits), torch.full((2, 5), 0.2), atol=0.02, rtol=0)


# --------------------------------------------------------------------------- the losses


def test_sigmoid_focal_loss_matches_a_hand_computation() -> None:
    """Two images, three identities; logits chosen so each p = sigmoid(z) is simple."""
    logits = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)], [math.log(4.0), 0.0, 0.0]])  # p = 1/2, 3/4, 1/4 | 4/5, 1/2, 1/2
    labels = torch.tensor([1, 0])
    # image 0, identity 1 (p_t = 3/4): (1/4)^2 * -log(3/4); others: p_t = 1/2 and 3/4
    image0 = (1 / 4) ** 2 * -math.log(3 / 4) + (1 / 2) ** 2 * -math.log(1 / 2) + (1 / 4) ** 2 * -math.log(3 / 4)
    # image 1, identity 0 (p_t = 4/5); others p_t = 1/2
    image1 = (1 / 5) ** 2 * -math.log(4 / 5) + 2 * (1 / 2) ** 2 * -math.log(1 / 2)
    assert sigmoid_focal_loss(logits, labels, gamma=2.0).item() == pytest.approx((image0 + image1) / 2, rel=1e-6)
    # alpha = 0.25 weighs the identity's own output by 0.25 and the others by 0.75
    image0_a = 0.25 * (1 / 4) ** 2 * -math.log(3 / 4) + 0.75 * ((1 / 2) ** 2 * -math.log(1 / 2) + (1 / 4) ** 2 * -math.log(3 / 4))
    image1_a = 0.25 * (1 / 5) ** 2 * -math.log(4 / 5) + 0.75 * 2 * (1 / 2) ** 2 * -math.log(1 / 2)
    assert sigmoid_focal_loss(logits, labels, gamma=2.0, alpha=0.25).item() == pytest.approx((image0_a + image1_a) / 2, rel=1e-6)
    # gamma 0: the binary cross-entropy summed over identities, the attention head's loss
    bce = (-math.log(3 / 4) - math.log(1 / 2) - math.log(3 / 4) - math.log(4 / 5) - 2 * math.log(1 / 2)) / 2
    assert sigmoid_focal_loss(logits, labels, gamma=0.0).item() == pytest.approx(bce, rel=1e-6)
    assert multilabel_sigmoid_loss(logits, labels).item() == pytest.approx(bce, rel=1e-6)


def test_attention_loss_uses_one_head_on_the_concatenated_pooled_masks() -> None:
    model = _small(num_classes=6).eval()
    x = torch.rand(2, 3, 32, 16)
    with torch.no_grad():
        outputs = model.forward_train(x)
        masks = model.attention_masks(x)
    assert len(outputs.attention_logits) == 1 and outputs.attention_logits[0].shape == (2, 6)
    assert model.attention_classifier.in_features == 64 + 128 + 256
    pooled = torch.cat([m.mean(dim=(2, 3)) for m in masks], dim=1)  # [2, 448]
    torch.testing.assert_close(outputs.attention_logits[0], model.attention_classifier(pooled))
    cfg = _config(focal={}, attention={})
    _, parts = LossTerms(cfg)(outputs, torch.tensor([3, 5]), epoch=1)
    assert parts["attention"].item() == pytest.approx(multilabel_sigmoid_loss(outputs.attention_logits[0], torch.tensor([3, 5])).item())


# --------------------------------------------------------------------------- curriculum sampling


def test_curriculum_schedule_moves_the_mean_by_t0_and_narrows_by_t1() -> None:
    states = [curriculum_state(e, 5, 9, 0.5, 0.02) for e in (1, 3, 5, 7, 9, 12)]
    assert [s.mean for s in states] == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    assert [s.width for s in states] == pytest.approx([0.5, 0.38, 0.26, 0.14, 0.02, 0.02])


def _one_anchor_probabilities(state: CurriculumState, negatives: int = 5) -> torch.Tensor:
    """The drawing probability of anchor 0's negatives, at distances 1..N (rank 0 = closest)."""
    features = torch.cat([torch.zeros(2, 1), torch.arange(1, negatives + 1, dtype=torch.float32)[:, None]])
    labels = torch.cat([torch.zeros(2, dtype=torch.long), torch.arange(1, negatives + 1)])
    from metricattack.training.losses import pairwise_euclidean

    probabilities = negative_rank_probabilities(pairwise_euclidean(features), labels[:, None] != labels[None, :], state)
    assert probabilities[0, :2].eq(0).all()  # anchor and positive are never drawn as negatives
    return probabilities[0, 2:]


def _gaussian(mean: float, width: float, negatives: int = 5) -> torch.Tensor:
    positions = torch.arange(negatives, dtype=torch.float64) / (negatives - 1)
    weights = torch.exp(-((positions - mean) ** 2) / (2 * width**2))
    return (weights / weights.sum()).float()


def test_curriculum_sampling_distribution_at_the_start_at_t0_and_after_t1() -> None:
    t0, t1 = 4, 7
    start, at_t0, after_t1 = (curriculum_state(e, t0, t1, 0.5, 0.02) for e in (1, t0, t1 + 2))
    # start: centred on the easiest (farthest) negative, wide: every negative possible, easier more likely
    p = _one_anchor_probabilities(start)
    torch.testing.assert_close(p, _gaussian(1.0, 0.5))
    assert p.argmax() == 4 and (p.diff() > 0).all() and p.min() > 0.04
    # at t0: centred on the hardest negative, narrower than at the start
    p = _one_anchor_probabilities(at_t0)
    torch.testing.assert_close(p, _gaussian(0.0, 0.5 - 0.48 * 3 / 6))
    assert p.argmax() == 0 and (p.diff() < 0).all() and p[0] > 0.4
    # after t1: the hardest negative (almost) always
    p = _one_anchor_probabilities(after_t1)
    torch.testing.assert_close(p, _gaussian(0.0, 0.02))
    assert p[0] > 0.999


def test_curriculum_triplets_take_every_positive_and_draw_one_negative_each() -> None:
    """K = 3 images per identity: the loss averages over all 18 (anchor, positive) pairs, each with a
    negative drawn from its anchor's row of negative_rank_probabilities (replayed with the same seed)."""
    torch.manual_seed(0)
    features, labels = torch.randn(9, 4), torch.arange(9) // 3
    state = CurriculumState(mean=0.5, width=0.3)
    from metricattack.training.losses import pairwise_euclidean

    dist = pairwise_euclidean(features)
    probabilities = negative_rank_probabilities(dist, labels[:, None] != labels[None, :], state)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(9))
    anchor, positive = (labels[:, None] == labels[None, :]).logical_and(~torch.eye(9, dtype=torch.bool)).nonzero(as_tuple=True)
    assert len(anchor) == 18
    torch.manual_seed(2)
    loss = curriculum_triplet_loss(features, labels, 100.0, state)  # a margin so large that every triplet counts
    torch.manual_seed(2)
    negative = torch.multinomial(probabilities[anchor], 1).squeeze(1)
    assert (labels[negative] != labels[anchor]).all()
    torch.testing.assert_close(loss, (dist[anchor, positive] - dist[anchor, negative] + 100.0).mean())


def test_curriculum_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"t1 \(2\) must not come before t0 \(3\)"):
        _config(focal={}, triplet={**CURRICULUM, "curriculum": {"t0": 3, "t1": 2}})
    with pytest.raises(ValueError, match="loss.triplet.curriculum is set exactly when sampling is curriculum"):
        _config(focal={}, triplet={"sampling": "curriculum"})


# --------------------------------------------------------------------------- training


def test_three_losses_learn_together_on_a_fixed_batch() -> None:
    """Focal + curriculum triplet + attention loss go down in 3 Adam steps; every FAB and head gets a gradient."""
    cfg = _config(focal={}, triplet=CURRICULUM, attention={"weight": 1.0})
    model = _small().train()
    images, labels = torch.rand(8, 3, 32, 16), torch.arange(8) // 2
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    losses, history = LossTerms(cfg), []
    for epoch in (3, 3, 3):  # after t1: near-deterministic triplets, comparable losses
        torch.manual_seed(0)
        loss, parts = losses(model.forward_train(images), labels, epoch)
        assert set(parts) == {"focal", "triplet", "attention"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0]
    for module in [*model.fabs, model.attention_classifier, model.classifier, model.ranking]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert not losses.leaves_parameters_unused()
    assert LossTerms(_config(focal={}, attention={})).leaves_parameters_unused()  # no triplet: the ranking FC is idle


def test_attention_loss_needs_a_model_with_attention_heads(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(
        "data: {dataset: folder, root: x}\nmodel: {backbone: resnet18}\nloss: {cross_entropy: {}, attention: {}}\nschedule: {epochs: 1}\n"
    )
    with pytest.raises(ConfigError, match=r"loss.attention needs a model with attention heads \(model.architecture: mancs\), not reid"):
        load_train_config(path)


def test_non_resnet_backbone_is_refused() -> None:
    with pytest.raises(MetricAttackError, match="Mancs needs a ResNet trunk"):
        Mancs(num_classes=3, backbone="densenet121")


# --------------------------------------------------------------------------- old checkpoints


def test_checkpoint_of_the_old_layout_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A Mancs checkpoint written before layout 2 (no residual FAB, pooled test feature) is never loaded as the new network."""
    path = save_checkpoint(_small().eval(), tmp_path / "model.safetensors", {})
    assert load_model(path).spec()["layout"] == 2
    record = json.loads(meta_path(path).read_text())
    for key in ("layout", "ranking_dim"):  # the spec as the old code wrote it
        del record["spec"][key]
    meta_path(path).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"Mancs checkpoint has the old layout 1 .*retrain it"):
        load_model(path)
