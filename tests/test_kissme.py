"""KISSME: M = Σ_S⁻¹ − Σ_D⁻¹, projected onto the PSD cone, optionally after PCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metricattack.errors import MetricAttackError
from metricattack.metrics.distance import NonPSDMatrixWarning
from metricattack.metrics.kissme import fit_kissme, pca_basis
from metricattack.metrics.learned import load_learned_metric, save_learned_metric
from metricattack.metrics.pairs import pair_covariances
from test_xqda import gaussian_reid, held_out_scores


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return gaussian_reid(0, num_ids=60, per_id=6)


def test_kissme_beats_euclidean_on_unseen_identities(train):
    with pytest.warns(NonPSDMatrixWarning):
        fit = fit_kissme(*train)
    euclid_r1, euclid_map = held_out_scores(None)
    kissme_r1, kissme_map = held_out_scores(fit.metric.projection)
    assert kissme_r1 > euclid_r1 + 0.2 and kissme_map > euclid_map + 0.2, (euclid_r1, euclid_map, kissme_r1, kissme_map)


def test_kernel_is_the_difference_of_inverse_pair_covariances(train):
    x, pids, _ = train
    with pytest.warns(NonPSDMatrixWarning):
        fit = fit_kissme(x, pids)
    cov = pair_covariances(x, pids)
    np.testing.assert_allclose(fit.kernel, np.linalg.inv(cov.similar) - np.linalg.inv(cov.dissimilar), rtol=1e-8, atol=1e-12)


def test_non_psd_kernel_is_projected_onto_the_psd_cone(train):
    with pytest.warns(NonPSDMatrixWarning, match="not positive semidefinite"):
        fit = fit_kissme(*train)
    assert fit.info["kernel_num_negative_eigenvalues"] > 0
    m = torch.from_numpy(fit.kernel)
    eigvals, eigvecs = torch.linalg.eigh(m)
    m_plus = (eigvecs * eigvals.clamp_min(0)) @ eigvecs.T  # Frobenius-nearest PSD matrix
    learned = fit.metric.projection.double() @ fit.metric.projection.double().T
    assert torch.linalg.eigvalsh(learned).min() > -1e-6 * float(eigvals.abs().max())
    torch.testing.assert_close(learned, m_plus, rtol=0, atol=1e-5 * float(eigvals.abs().max()))
    probes, gallery = torch.randn(5, 24, dtype=torch.float64), torch.randn(7, 24, dtype=torch.float64)
    diff = probes[:, None, :] - gallery[None, :, :]
    direct = torch.einsum("pgd,de,pge->pg", diff, m_plus, diff)
    torch.testing.assert_close(
        fit.metric.pairwise(probes.float(), gallery.float()).double(), direct, rtol=1e-4, atol=1e-4 * float(direct.max())
    )


def test_non_psd_kernel_is_refused_on_request(train):
    with pytest.raises(MetricAttackError, match="not positive semidefinite"):
        fit_kissme(*train, on_non_psd="error")


def test_pca_basis_is_orthonormal_and_spans_the_top_variance():
    x = np.random.default_rng(0).standard_normal((200, 6)) * np.array([5.0, 0.1, 4.0, 0.2, 3.0, 0.3])
    basis = pca_basis(x, 3)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
    assert set(np.abs(basis).argmax(axis=0)) == {0, 2, 4}


def test_pca_metric_lives_in_the_pca_subspace(train):
    x, pids, camids = train
    with pytest.warns(NonPSDMatrixWarning, match="kissme kernel M"):
        fit = fit_kissme(x, pids, camids, dim=6)
    assert fit.basis.shape == (24, 6) and fit.metric.feature_dim == 24 and fit.metric.projection.shape[1] <= 6
    orthogonal = torch.from_numpy(np.eye(24) - fit.basis @ fit.basis.T).float()
    a = torch.randn(3, 24)
    moved = a + torch.randn(3, 24) @ orthogonal  # differs from `a` only outside the PCA subspace
    assert fit.metric.paired(a, moved).abs().max() < 1e-3 * fit.metric.paired(a, torch.randn(3, 24)).min()


def test_singular_covariance_without_pca_is_a_clear_error_and_pca_or_ridge_fixes_it():
    x, pids, camids = gaussian_reid(0, num_ids=5, per_id=3, dim=40)  # 10 similar pairs < 40 dims
    with pytest.raises(MetricAttackError, match="similar-pair .* covariance is singular"):
        fit_kissme(x, pids, camids)
    with pytest.warns(NonPSDMatrixWarning):
        assert fit_kissme(x, pids, camids, dim=5).metric.feature_dim == 40
        assert fit_kissme(x, pids, camids, reg=1.0).metric.feature_dim == 40


def test_kissme_save_load_round_trip(train, tmp_path):
    with pytest.warns(NonPSDMatrixWarning):
        fit = fit_kissme(*train)
    path = save_learned_metric(fit, tmp_path / "model.kissme.safetensors")
    loaded = load_learned_metric(path, feature_dim=24)
    a, b = torch.randn(4, 24), torch.randn(6, 24)
    torch.testing.assert_close(loaded.pairwise(a, b), fit.metric.pairwise(a, b))
    assert loaded.name == "kissme"
