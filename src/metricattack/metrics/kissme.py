"""KISSME: "keep it simple and straightforward" metric learning (Köstinger et al., CVPR 2012).

The log-likelihood ratio of two zero-mean Gaussians on pair differences gives the kernel
``M = Σ_S⁻¹ − Σ_D⁻¹`` (similar / dissimilar pair covariances, see
:mod:`metricattack.metrics.pairs`), which is then projected onto the PSD cone so the distance
``(p − x)ᵀ M (p − x)`` is a metric. On 2048-d deep features ``Σ_S`` is badly conditioned, so
the method is usually run after PCA to ``dim`` dimensions (the basis of the learned metric);
an optional ridge ``reg·I`` is added to both covariances.

Example::

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((60, 8))
    >>> fit = fit_kissme(x, np.repeat(np.arange(12), 5), dim=4, on_non_psd="project")
    >>> fit.basis.shape, fit.metric.feature_dim
    ((8, 4), 8)
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import MetricAttackError
from .pairs import (
    LearnedFit,
    OnNonPSD,
    check_dim,
    check_fit_inputs,
    check_on_non_psd,
    checked_inverse,
    fit_info,
    kernel_to_metric,
    pair_covariances,
)


def pca_basis(x: np.ndarray, dim: int) -> np.ndarray:
    """Top-``dim`` principal directions ``[D, dim]`` (orthonormal) of ``x [N, D]``."""
    centred = x - x.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return vectors[:, ::-1][:, :dim].copy()


def fit_kissme(
    features: torch.Tensor | np.ndarray,
    pids: torch.Tensor | np.ndarray | list[int],
    camids: torch.Tensor | np.ndarray | list[int] | None = None,
    *,
    dim: int | None = None,
    reg: float = 0.0,
    cross_camera: bool = False,
    on_non_psd: OnNonPSD = "project",
) -> LearnedFit:
    """Fit KISSME on ``features [N, D]`` with identities ``pids [N]`` (cameras ``camids [N]``).

    Args:
        dim: PCA dimension before learning (default: no PCA, ``basis`` is the identity).
        reg: ridge added to both covariances; with ``reg=0`` a singular one is an error.
        cross_camera: count only pairs taken by different cameras.
        on_non_psd: ``"project"`` (warn, clip negative eigenvalues) or ``"error"``.

    Returns:
        :class:`LearnedFit` with ``basis [D, dim]`` and ``kernel = Σ_S⁻¹ − Σ_D⁻¹ [dim, dim]``.
    """
    start = time.perf_counter()
    x, labels, cams = check_fit_inputs(features, pids, camids)
    check_dim(dim, x.shape[1])
    check_on_non_psd(on_non_psd)
    if not reg >= 0:
        raise MetricAttackError(f"KISSME ridge reg must be >= 0, got {reg}")
    basis = np.eye(x.shape[1]) if dim is None else pca_basis(x, dim)
    cov = pair_covariances(x @ basis, labels, cams, cross_camera=cross_camera)
    ridge = reg * np.eye(basis.shape[1])
    kernel = checked_inverse(cov.similar + ridge, "similar-pair (same identity)") - checked_inverse(
        cov.dissimilar + ridge, "dissimilar-pair (different identities)"
    )
    metric, psd_info = kernel_to_metric(basis, kernel, on_non_psd, "kissme")
    options = {"dim": dim, "reg": reg, "cross_camera": cross_camera, "on_non_psd": on_non_psd}
    info = fit_info("KISSME (Köstinger et al., CVPR 2012)", options, labels, cov, start, subspace_dim=int(basis.shape[1]), **psd_info)
    return LearnedFit("kissme", metric, basis, kernel, info)
