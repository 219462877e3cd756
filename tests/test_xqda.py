"""XQDA and the shared learned-metric machinery (pair covariances, save/load, fitting for a checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metricattack.errors import MetricAttackError
from metricattack.metrics.distance import MahalanobisMetric
from metricattack.metrics.learned import (
    fit_learned,
    fit_learned_metric,
    load_for_checkpoint,
    load_learned_metric,
    metric_path,
    save_learned_metric,
)
from metricattack.metrics.pairs import pair_covariances, pair_scatter
from metricattack.metrics.xqda import fit_xqda


def gaussian_reid(seed: int, num_ids: int, per_id: int, dim: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian identities with correlated noise that swamps the identity signal for Euclidean distance.

    In a rotated basis ``Q`` (shared by every call), identity means vary along the first 4 axes
    (std 1) where the noise is small (std 0.3); the other axes carry only noise (std 3). The
    noise covariance is the same for all identities, so a metric learned on some identities
    transfers to unseen ones. Returns ``(x [N, dim], pids [N], camids [N])``.
    """
    rotation = np.linalg.qr(np.random.default_rng(1234).standard_normal((dim, dim)))[0]
    noise_std = np.where(np.arange(dim) < 4, 0.3, 3.0)
    rng = np.random.default_rng(seed)
    means = np.zeros((num_ids, dim))
    means[:, :4] = rng.standard_normal((num_ids, 4))
    pids = np.repeat(np.arange(num_ids), per_id)
    x = (means[pids] + rng.standard_normal((num_ids * per_id, dim)) * noise_std) @ rotation.T
    return x, pids, np.tile(np.arange(per_id) % 3, num_ids)


def rank1_and_map(dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[float, float]:
    """Rank-1 accuracy and mean non-interpolated AP of a ``[Q, G]`` distance matrix."""
    order = np.argsort(dist, axis=1, kind="stable")
    matches = g_pids[order] == q_pids[:, None]
    hits = np.cumsum(matches, axis=1)
    precision_at_hits = np.where(matches, hits / np.arange(1, matches.shape[1] + 1), 0.0)
    ap = precision_at_hits.sum(1) / matches.sum(1)
    return float(matches[:, 0].mean()), float(ap.mean())


def held_out_scores(metric_projection: torch.Tensor | None, seed: int = 7) -> tuple[float, float]:
    """Rank-1 / mAP on unseen identities: first image of each identity is the query, the rest gallery."""
    x, pids, _ = gaussian_reid(seed, num_ids=40, per_id=4)
    feats = torch.from_numpy(x).float()
    metric = MahalanobisMetric(torch.eye(x.shape[1]) if metric_projection is None else metric_projection)
    is_query = np.arange(len(pids)) % 4 == 0
    dist = metric.pairwise(feats[is_query], feats[~is_query]).numpy()
    return rank1_and_map(dist, pids[is_query], pids[~is_query])


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return gaussian_reid(0, num_ids=60, per_id=6)


def brute_force_covariances(x, pids, camids, cross_camera):
    same, diff, n_same, n_diff = np.zeros((x.shape[1],) * 2), np.zeros((x.shape[1],) * 2), 0, 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if cross_camera and camids[i] == camids[j]:
                continue
            outer = np.outer(x[i] - x[j], x[i] - x[j])
            if pids[i] == pids[j]:
                same, n_same = same + outer, n_same + 1
            else:
                diff, n_diff = diff + outer, n_diff + 1
    return same / n_same, diff / n_diff, n_same, n_diff


@pytest.mark.parametrize("cross_camera", [False, True])
def test_pair_covariances_match_enumerating_every_pair(cross_camera):
    rng = np.random.default_rng(3)
    x, pids, camids = rng.standard_normal((40, 5)), rng.integers(0, 7, 40), rng.integers(0, 3, 40)
    cov = pair_covariances(x, pids, camids, cross_camera=cross_camera)
    same, diff, n_same, n_diff = brute_force_covariances(x, pids, camids, cross_camera)
    assert (cov.num_similar, cov.num_dissimilar) == (n_same, n_diff)
    np.testing.assert_allclose(cov.similar, same, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov.dissimilar, diff, rtol=1e-10, atol=1e-12)


def test_pair_scatter_of_one_group_is_n_times_the_centred_scatter():
    x = np.random.default_rng(4).standard_normal((9, 3))
    scatter, pairs = pair_scatter(x, np.zeros(9, dtype=np.int64))
    centred = x - x.mean(0)
    assert pairs == 36
    np.testing.assert_allclose(scatter, 9 * centred.T @ centred, rtol=1e-12)


def test_xqda_beats_euclidean_on_unseen_identities(train):
    fit = fit_xqda(*train)
    euclid_r1, euclid_map = held_out_scores(None)
    xqda_r1, xqda_map = held_out_scores(fit.metric.projection)
    assert xqda_r1 > euclid_r1 + 0.2 and xqda_map > euclid_map + 0.2, (euclid_r1, euclid_map, xqda_r1, xqda_map)


def test_xqda_kernel_is_psd_and_distances_match_the_direct_formula(train):
    fit = fit_xqda(*train)
    w, m = torch.from_numpy(fit.basis), torch.from_numpy(fit.kernel)
    assert torch.linalg.eigvalsh(m).min() > 0
    assert fit.info["kernel_num_negative_eigenvalues"] == 0
    assert all(g > 1 for g in fit.info["eigenvalues"])
    probes, gallery = torch.randn(5, 24, dtype=torch.float64), torch.randn(7, 24, dtype=torch.float64)
    diff = probes[:, None, :] - gallery[None, :, :]
    direct = torch.einsum("pgd,de,ef,hf,pgh->pg", diff, w, m, w, diff)
    learned = fit.metric.pairwise(probes.float(), gallery.float()).double()
    torch.testing.assert_close(learned, direct, rtol=1e-4, atol=1e-4 * float(direct.abs().max()))


def test_xqda_kernel_is_the_difference_of_projected_inverse_covariances(train):
    x, pids, camids = train
    fit = fit_xqda(x, pids, camids, reg=0.01)
    cov = pair_covariances(x, pids)
    w = fit.basis
    expected = np.linalg.inv(w.T @ (cov.similar + 0.01 * np.eye(24)) @ w) - np.linalg.inv(w.T @ cov.dissimilar @ w)
    np.testing.assert_allclose(fit.kernel, expected, rtol=1e-8, atol=1e-10)
    # W holds generalised eigenvectors of (Σ_E, Σ_I + λI): Σ_E w = γ (Σ_I + λI) w
    gammas = np.array(fit.info["eigenvalues"])
    np.testing.assert_allclose(cov.dissimilar @ w, (cov.similar + 0.01 * np.eye(24)) @ w * gammas, rtol=1e-6, atol=1e-9)


def test_dim_caps_the_subspace_to_the_leading_eigenvalues(train):
    full = fit_xqda(*train)
    capped = fit_xqda(*train, dim=2)
    assert full.info["subspace_dim"] > 2 and capped.metric.projection.shape == (24, 2)
    assert capped.info["eigenvalues"] == full.info["eigenvalues"][:2]


def test_cross_camera_option_uses_fewer_pairs(train):
    everything = fit_xqda(*train)
    cross = fit_xqda(*train, cross_camera=True)
    assert cross.info["num_similar_pairs"] < everything.info["num_similar_pairs"]
    assert cross.info["num_dissimilar_pairs"] < everything.info["num_dissimilar_pairs"]


def test_more_dimensions_than_images_works_with_the_ridge_and_fails_clearly_without():
    x, pids, camids = gaussian_reid(0, num_ids=5, per_id=3, dim=40)  # 15 images, 40 dims
    assert fit_xqda(x, pids, camids).metric.feature_dim == 40
    with pytest.raises(MetricAttackError, match="intra-personal.*singular"):
        fit_xqda(x, pids, camids, reg=0.0)


def test_gradients_flow_through_the_mahalanobis_objective(train):
    """Attack-style objective: features of an input through a tiny linear model, distance to a probe."""
    metric = fit_learned_metric("xqda", *train)
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 24)
    images = torch.rand(3, 10, requires_grad=True)
    probe = torch.randn(1, 24)
    metric.pairwise(probe, model(images)).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    reference = images.detach().clone().requires_grad_(True)
    m = metric.projection @ metric.projection.T
    diff = model(reference) - probe
    torch.einsum("nd,de,ne->n", diff, m, diff).sum().backward()
    torch.testing.assert_close(images.grad, reference.grad, rtol=1e-4, atol=1e-6)


def test_attack_objective_on_xqda_matches_the_direct_formula_and_ifgsm_increases_it(train):
    """The attack's metric loss with an XQDA metric: value and input gradient equal the direct
    mean_r (r − f(x))ᵀ W M Wᵀ (r − f(x)), and I-FGSM (ε = 8) increases it."""
    from metricattack.attacks.objectives import MetricLoss, ReferenceTargets
    from metricattack.attacks.perturb import perturb
    from metricattack.attacks.problem import AttackProblem
    from metricattack.attacks.spec import AttackSpec

    fit = fit_xqda(*train)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 2, 24)).eval()
    images, indices = torch.rand(3, 3, 4, 2), torch.arange(3)
    references = torch.randn(4, 24)
    ref_sets = [(0, 1), (2,), (1, 3)]
    loss = MetricLoss(model, fit.metric, ReferenceTargets.build(fit.metric, references, ref_sets))
    kernel = torch.from_numpy(fit.basis @ fit.kernel @ fit.basis.T).float()

    def direct(x: torch.Tensor) -> torch.Tensor:
        feats = model(x)
        return torch.stack(
            [
                torch.stack([(references[r] - f) @ kernel @ (references[r] - f) for r in refs]).mean()
                for f, refs in zip(feats, ref_sets, strict=True)
            ]
        )

    torch.testing.assert_close(loss(images, indices), direct(images), rtol=1e-4, atol=1e-5)
    x = images.clone().requires_grad_(True)
    (expected_grad,) = torch.autograd.grad(direct(x).sum(), x)
    grad = AttackProblem(images, loss, indices=indices, active=torch.ones(3, dtype=torch.bool), radius=8 / 255).gradient(images)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-5)
    adversarial = perturb(images, loss, AttackSpec(method="ifgsm", eps=8, alpha=1), indices=indices).images
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6
    assert bool((loss(adversarial, indices) > loss(images, indices)).all())


def test_every_identity_with_a_single_image_is_an_error():
    x = np.random.default_rng(0).standard_normal((6, 4))
    with pytest.raises(MetricAttackError, match="no pair of images of the same identity"):
        fit_xqda(x, np.arange(6))


def test_cross_camera_without_multi_camera_identities_is_an_error():
    x = np.random.default_rng(0).standard_normal((6, 4))
    with pytest.raises(MetricAttackError, match="two different cameras"):
        fit_xqda(x, np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2]), cross_camera=True)


def test_a_single_identity_is_an_error():
    x = np.random.default_rng(0).standard_normal((6, 4))
    with pytest.raises(MetricAttackError, match="no pair of images of different identities"):
        fit_xqda(x, np.zeros(6, dtype=int))


def test_features_where_same_identity_pairs_differ_most_are_an_error():
    x = np.array([[0.0], [10.0], [0.1], [10.1]])  # each identity spans the gap, identities overlap
    with pytest.raises(MetricAttackError, match="no direction where different identities differ more"):
        fit_xqda(x, [0, 0, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": np.zeros((0, 4)), "pids": []}, r"non-empty \[N, D\]"),
        ({"features": np.full((4, 2), np.nan), "pids": [0, 0, 1, 1]}, "NaN"),
        ({"features": np.zeros((4, 2)), "pids": [0, 0, 1]}, r"pids must have shape \[4\]"),
        ({"features": np.zeros((4, 2)), "pids": [0, 0, 1, 1], "camids": [0]}, r"camids must have shape \[4\]"),
        ({"features": np.zeros((4, 2)), "pids": [0, 0, 1, 1], "dim": 3}, "dim must be between 1 and"),
        ({"features": np.zeros((4, 2)), "pids": [0, 0, 1, 1], "on_non_psd": "ignore"}, "on_non_psd must be"),
        ({"features": np.zeros((4, 2)), "pids": [0, 0, 1, 1], "reg": -1.0}, "reg must be >= 0"),
        ({"features": np.zeros((4, 2)), "pids": [0, 0, 1, 1], "cross_camera": True}, "needs camera ids"),
    ],
)
def test_bad_inputs_name_the_culprit(kwargs, message):
    with pytest.raises(MetricAttackError, match=message):
        fit_xqda(**kwargs)


def test_fit_learned_rejects_unknown_kinds_and_options(train):
    with pytest.raises(MetricAttackError, match="unknown learned metric 'lmnn'"):
        fit_learned("lmnn", *train)
    with pytest.raises(MetricAttackError, match="does not take option.*rank"):
        fit_learned("xqda", *train, rank=3)


def test_save_load_round_trip_keeps_distances_and_checks_the_feature_dimension(train, tmp_path):
    fit = fit_learned("xqda", *train)
    path = save_learned_metric(fit, metric_path(tmp_path / "model.safetensors", "xqda"), {"checkpoint_sha256": "ab"})
    assert path == tmp_path / "model.xqda.safetensors"
    sidecar = json.loads((tmp_path / "model.xqda.json").read_text())
    assert sidecar["meta"]["learned_metric"]["input_dim"] == 24
    assert sidecar["meta"]["learned_metric"]["fit"]["options"]["reg"] == 0.001
    assert sidecar["meta"]["checkpoint_sha256"] == "ab" and sidecar["state"]["feature_dim"] == 24
    loaded = load_for_checkpoint(tmp_path / "model.safetensors", "xqda", feature_dim=24)
    a, b = torch.randn(4, 24), torch.randn(6, 24)
    torch.testing.assert_close(loaded.pairwise(a, b), fit.metric.pairwise(a, b))
    assert loaded.name == "xqda"
    with pytest.raises(MetricAttackError, match="fitted on 24-d features but the model gives 2048-d"):
        load_learned_metric(path, feature_dim=2048)
    with pytest.raises(MetricAttackError, match="expects features of dimension 24"):
        loaded.pairwise(torch.randn(2, 2048), torch.randn(2, 2048))
    with pytest.raises(MetricAttackError, match="no kissme metric beside checkpoint"):
        load_for_checkpoint(tmp_path / "model.safetensors", "kissme")


def write_tiny_market(root: Path, num_train_ids: int = 8) -> Path:
    """A Market-1501 tree of random 32x16 images: 3 cameras x 2 images per identity."""
    rng = np.random.default_rng(0)
    for split, pids in (("bounding_box_train", range(1, num_train_ids + 1)), ("query", (50, 51)), ("bounding_box_test", (50, 51))):
        (root / split).mkdir(parents=True)
        for pid in pids:
            for cam in (1, 2, 3):
                for k in range(2):
                    image = Image.fromarray((rng.random((32, 16, 3)) * 255).astype(np.uint8))
                    image.save(root / split / f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg")
    return root


@pytest.mark.filterwarnings("ignore::UserWarning")  # the tiny tree's image counts are not Market-1501's
def test_fit_metric_command_writes_the_metric_with_provenance_beside_the_checkpoint(tmp_path, capsys):
    """End to end: tiny model checkpoint + tiny dataset → ``fit-metric`` → metric file → loaded for the model."""
    from metricattack.cli import main
    from metricattack.io import sha256_file
    from metricattack.models.checkpoint import save_checkpoint
    from metricattack.models.reid import ReIDModel

    data_root = write_tiny_market(tmp_path / "market")
    model = ReIDModel("resnet18", num_classes=8, input_size=(32, 16)).eval()
    checkpoint = save_checkpoint(model, tmp_path / "tiny.safetensors", {"note": "test"})
    argv = [
        "fit-metric",
        "--checkpoint",
        str(checkpoint),
        "--data-root",
        str(data_root),
        "--dataset",
        "market1501",
        "--kind",
        "xqda",
        "--dim",
        "8",
    ]
    assert main(argv) == 0
    sidecar = json.loads((tmp_path / "tiny.xqda.json").read_text())
    meta = sidecar["meta"]
    assert meta["checkpoint_sha256"] == sha256_file(checkpoint)
    assert meta["dataset"]["num_images"] == 48 and len(meta["dataset"]["fingerprint"]) == 64
    assert meta["options"]["dim"] == 8 and meta["learned_metric"]["fit"]["num_identities"] == 8
    assert "torch" in sidecar["versions"]
    metric = load_for_checkpoint(checkpoint, "xqda", feature_dim=model.feature_dim)
    assert metric.feature_dim == model.feature_dim and 1 <= metric.projection.shape[1] <= 8
    with pytest.raises(MetricAttackError, match=f"fitted on {model.feature_dim}-d features"):
        load_for_checkpoint(checkpoint, "xqda", feature_dim=model.feature_dim + 1)
    bad = [
        "fit-metric",
        "--checkpoint",
        str(checkpoint),
        "--data-root",
        str(data_root),
        "--dataset",
        "market1501",
        "--kind",
        "kissme",
        "--on-non-psd",
        "error",
    ]
    assert main(bad) == 2  # 48 features of dimension 512: a singular covariance is a user error
    assert "covariance is singular" in capsys.readouterr().err
