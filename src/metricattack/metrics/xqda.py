"""XQDA: Cross-view Quadratic Discriminant Analysis (Liao et al., CVPR 2015).

From the intra-personal covariance ``Σ_I`` and the extra-personal covariance ``Σ_E`` of pair
differences (see :mod:`metricattack.metrics.pairs` for the pair convention), XQDA

1. regularises ``Σ_I ← Σ_I + λ·I`` (``λ = 0.001`` as in the method),
2. solves the generalised eigenproblem ``Σ_E w = γ Σ_I w`` and keeps the eigenvectors ``W [D, r]``
   with ``γ > 1`` (the directions where different people differ more than one person does),
   the ``r`` largest, at most ``dim`` of them,
3. learns ``M = (Wᵀ Σ_I W)⁻¹ − (Wᵀ Σ_E W)⁻¹ [r, r]`` in that subspace,

and the distance is ``d(p, x) = (p − x)ᵀ W M Wᵀ (p − x)``. Since ``γ > 1`` for every kept
direction, ``M`` is positive definite up to rounding; the PSD check still runs.

Example::

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((60, 8))
    >>> fit = fit_xqda(x, np.repeat(np.arange(12), 5))      # 12 identities, 5 images each
    >>> fit.metric.feature_dim, fit.basis.shape[1] == fit.info["subspace_dim"]
    (8, True)
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg
import torch

from ..errors import MetricAttackError
from .pairs import (
    LearnedFit,
    OnNonPSD,
    check_dim,
    check_fit_inputs,
    check_nonsingular,
    check_on_non_psd,
    checked_inverse,
    fit_info,
    kernel_to_metric,
    pair_covariances,
)

XQDA_REG = 0.001


def fit_xqda(
    features: torch.Tensor | np.ndarray,
    pids: torch.Tensor | np.ndarray | list[int],
    camids: torch.Tensor | np.ndarray | list[int] | None = None,
    *,
    dim: int | None = None,
    reg: float = XQDA_REG,
    cross_camera: bool = False,
    on_non_psd: OnNonPSD = "project",
) -> LearnedFit:
    """Fit XQDA on ``features [N, D]`` with identities ``pids [N]`` (cameras ``camids [N]``).

    Args:
        dim: keep at most this many subspace directions (default: all with eigenvalue > 1).
        reg: ridge ``λ`` added to ``Σ_I``; with ``reg=0`` a singular ``Σ_I`` is an error.
        cross_camera: count only pairs taken by different cameras.
        on_non_psd: ``"project"`` (warn, clip negative eigenvalues) or ``"error"``.

    Returns:
        :class:`LearnedFit` with ``basis = W [D, r]``, ``kernel = M [r, r]``.
    """
    start = time.perf_counter()
    x, labels, cams = check_fit_inputs(features, pids, camids)
    input_dim = x.shape[1]
    check_dim(dim, input_dim)
    check_on_non_psd(on_non_psd)
    if not reg >= 0:
        raise MetricAttackError(f"XQDA regulariser reg must be >= 0, got {reg}")
    cov = pair_covariances(x, labels, cams, cross_camera=cross_camera)
    intra = cov.similar + reg * np.eye(input_dim)
    if reg == 0:
        check_nonsingular(intra, "intra-personal (same-identity)")
    try:
        gammas, vectors = scipy.linalg.eigh(cov.dissimilar, intra, driver="gvd")
    except np.linalg.LinAlgError as exc:
        raise MetricAttackError(f"XQDA: the intra-personal covariance (+ {reg}·I) is not positive definite ({exc}); use reg > 0") from exc
    order = np.argsort(gammas)[::-1]
    num_above_one = int((gammas > 1).sum())
    if num_above_one == 0:
        raise MetricAttackError(
            f"XQDA found no direction where different identities differ more than the same identity "
            f"(largest generalised eigenvalue {gammas.max():.4g} <= 1); the features do not separate identities"
        )
    keep = order[: num_above_one if dim is None else min(dim, num_above_one)]
    basis = vectors[:, keep]
    kernel = checked_inverse(basis.T @ intra @ basis, "projected intra-personal") - checked_inverse(
        basis.T @ cov.dissimilar @ basis, "projected extra-personal"
    )
    metric, psd_info = kernel_to_metric(basis, kernel, on_non_psd, "xqda")
    options = {"dim": dim, "reg": reg, "cross_camera": cross_camera, "on_non_psd": on_non_psd}
    info = fit_info(
        "XQDA (Liao et al., CVPR 2015)",
        options,
        labels,
        cov,
        start,
        num_eigenvalues_above_one=num_above_one,
        subspace_dim=int(len(keep)),
        eigenvalues=[float(g) for g in gammas[keep]],
        **psd_info,
    )
    return LearnedFit("xqda", metric, basis, kernel, info)
