"""Distance metrics: exact values against direct formulas, gradients, Mahalanobis checks, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from metricattack.errors import MetricAttackError
from metricattack.metrics.distance import (
    CosineMetric,
    EuclideanMetric,
    MahalanobisMetric,
    NonPSDMatrixWarning,
    build_metric,
    load_metric,
    save_metric,
    sidecar_path,
)


def _feats(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_euclidean_is_squared_distance():
    a, b = _feats(4), _feats(5, seed=1)
    m = EuclideanMetric()
    direct = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(m.pairwise(a, b), direct)
    torch.testing.assert_close(m.paired(a, b[:4]), ((a - b[:4]) ** 2).sum(1))
    # a hand-checked value: (1-4)^2 + (2-6)^2 = 25
    assert m.pairwise(torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, 6.0]])).item() == 25.0


def test_cosine_is_one_minus_cosine():
    a, b = _feats(4), _feats(5, seed=1)
    m = build_metric("cosine")
    direct = 1 - torch.nn.functional.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1)
    torch.testing.assert_close(m.pairwise(a, b), direct)
    torch.testing.assert_close(m.paired(a, b[:4]), 1 - torch.nn.functional.cosine_similarity(a, b[:4]))
    # orthogonal -> 1, opposite -> 2, same direction (any length) -> 0
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0], [5.0, 0.0]])
    torch.testing.assert_close(m.paired(x[[0, 0, 0]], x[[1, 2, 3]]), torch.tensor([1.0, 2.0, 0.0]))


def test_mahalanobis_matches_direct_quadratic_form():
    a, b = _feats(4), _feats(5, seed=1)
    proj = _feats(6, seed=2)[:, :3]
    m = MahalanobisMetric(proj)
    mat = proj.float() @ proj.float().t()
    diff = a.float()[:, None, :] - b.float()[None, :, :]
    direct = torch.einsum("nmd,de,nme->nm", diff, mat, diff)
    torch.testing.assert_close(m.pairwise(a.float(), b.float()), direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.paired(a.float(), b[:4].float()), direct.diagonal(), rtol=1e-5, atol=1e-5)


def test_mahalanobis_from_matrix_reproduces_matrix_and_rank():
    proj = _feats(6, seed=3)[:, :2]
    mat = proj @ proj.t()  # rank 2 PSD
    m = MahalanobisMetric.from_matrix(mat)
    assert m.projection.shape == (6, 2)
    torch.testing.assert_close(m.matrix.double(), mat, rtol=1e-5, atol=1e-5)


def test_non_psd_matrix_error_names_most_negative_eigenvalue():
    mat = torch.diag(torch.tensor([2.0, 1.0, -0.5, -3.0]))
    with pytest.raises(MetricAttackError, match=r"most negative is -3\b"):
        MahalanobisMetric.from_matrix(mat, on_non_psd="error")
    with pytest.warns(NonPSDMatrixWarning, match="2 of 4 eigenvalues"):
        m = MahalanobisMetric.from_matrix(mat, on_non_psd="project")
    torch.testing.assert_close(m.matrix, torch.diag(torch.tensor([2.0, 1.0, 0.0, 0.0])), atol=1e-6, rtol=0)


def test_non_symmetric_and_malformed_matrices_are_rejected():
    with pytest.raises(MetricAttackError, match="not symmetric"):
        MahalanobisMetric.from_matrix(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(MetricAttackError, match=r"square \[D, D\]"):
        MahalanobisMetric.from_matrix(torch.ones(2, 3))
    with pytest.raises(MetricAttackError, match="no positive eigenvalue"):
        MahalanobisMetric.from_matrix(torch.zeros(3, 3))


def test_feature_dimension_mismatch_names_both_dimensions():
    m = MahalanobisMetric(torch.ones(8, 2), name="xqda")
    with pytest.raises(MetricAttackError, match=r"'xqda' expects features of dimension 8, got dimension 5"):
        m.pairwise(torch.ones(3, 5), torch.ones(3, 5))
    with pytest.raises(MetricAttackError, match="equal shape"):
        EuclideanMetric().paired(torch.ones(3, 5), torch.ones(2, 5))


def test_build_metric_errors():
    with pytest.raises(MetricAttackError, match="unknown metric 'manhattan'; available: euclidean, cosine, mahalanobis"):
        build_metric("manhattan")
    with pytest.raises(MetricAttackError, match="exactly one of projection"):
        build_metric("mahalanobis")
    with pytest.raises(MetricAttackError, match="takes no options"):
        build_metric("euclidean", projection=torch.ones(2, 2))
    assert isinstance(build_metric("Mahalanobis", matrix=torch.eye(3)), MahalanobisMetric)


@pytest.mark.parametrize("metric", [EuclideanMetric(), CosineMetric(), MahalanobisMetric(_feats(6, seed=4)[:, :3].float())])
def test_gradients_flow_and_match_finite_differences(metric):
    a = _feats(3).float().requires_grad_()
    b = _feats(4, seed=1).float()
    metric.pairwise(a, b).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    # pairwise and paired agree on matching rows, also under autograd
    torch.testing.assert_close(metric.pairwise(a, b[:3]).diagonal(), metric.paired(a, b[:3]), rtol=1e-4, atol=1e-5)
    ad = _feats(2).requires_grad_()
    metric_d = metric.double() if isinstance(metric, MahalanobisMetric) else metric
    assert torch.autograd.gradcheck(lambda x: metric_d.paired(x, _feats(2, seed=5)), (ad,))


def test_save_and_load_roundtrip(tmp_path):
    m = MahalanobisMetric(_feats(6, seed=6)[:, :4].float(), name="kissme")
    path = save_metric(m, tmp_path / "model.kissme.safetensors", {"fitted_on": "tiny"})
    assert sidecar_path(path).name == "model.kissme.json"
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["meta"] == {"fitted_on": "tiny"} and meta["state"]["rank"] == 4 and "torch" in meta["versions"]
    loaded = load_metric(path)
    assert isinstance(loaded, MahalanobisMetric) and loaded.name == "kissme"
    torch.testing.assert_close(loaded.projection, m.projection)
    cos = load_metric(save_metric(CosineMetric(), tmp_path / "c.safetensors"))
    assert isinstance(cos, CosineMetric)
    m.save(tmp_path / "again.safetensors")
    assert isinstance(load_metric(tmp_path / "again.safetensors"), MahalanobisMetric)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(MetricAttackError, match="missing.safetensors does not exist"):
        load_metric(tmp_path / "missing.safetensors")
    path = save_metric(MahalanobisMetric(torch.ones(3, 1)), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-4])  # truncate the tensor file
    with pytest.raises(MetricAttackError, match="does not match the checksum"):
        load_metric(path)
    sidecar_path(path).unlink()
    with pytest.raises(MetricAttackError, match="no JSON sidecar"):
        load_metric(path)
    with pytest.raises(MetricAttackError, match="must end with .safetensors"):
        save_metric(EuclideanMetric(), tmp_path / "m.pt")
    # nothing half-written: no stray temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_state_roundtrip_without_files():
    m = MahalanobisMetric(torch.eye(3)[:, :2], name="xqda")
    tensors, meta = m.to_state()
    json.dumps(meta)  # JSON-able
    back = MahalanobisMetric.from_state(tensors, meta)
    assert back.name == "xqda" and torch.equal(back.projection, m.projection)
    with pytest.raises(MetricAttackError, match="expected MahalanobisMetric"):
        MahalanobisMetric.from_state(*EuclideanMetric().to_state())
