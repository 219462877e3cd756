"""Pair-difference statistics and the kernel → metric step shared by XQDA and KISSME.

Both methods learn a kernel ``M`` from two covariances of feature *differences*:

* ``Σ_S`` (similar / intra-personal): over all unordered pairs of images of the same identity,
* ``Σ_D`` (dissimilar / extra-personal): over all pairs of images of different identities.

They are computed in closed form from class sums in ``O(N·D²)`` (no pair is enumerated): for a
group ``g`` of ``n_g`` images with mean ``μ_g``,
``Σ_{i<j in g} (x_i − x_j)(x_i − x_j)ᵀ = n_g · Σ_{i in g} (x_i − μ_g)(x_i − μ_g)ᵀ``, and the
dissimilar scatter is the all-pairs scatter minus the similar one.

Pair convention: by default **all** same-identity pairs count as similar, whatever the cameras
(the training split of a re-ID dataset is not organised as two views). With
``cross_camera=True`` only pairs taken by different cameras count, for similar and dissimilar
pairs alike -- the "cross-view" reading of XQDA.

A learned metric is stored as a :class:`~metricattack.metrics.distance.MahalanobisMetric`
whose ``projection P = B·L`` (basis ``B`` times a factor of the PSD kernel, ``M = L Lᵀ``), so a
distance is a projection followed by a squared Euclidean distance.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse
import torch

from ..errors import MetricAttackError
from .distance import MahalanobisMetric, NonPSDMatrixWarning

OnNonPSD = Literal["project", "error"]
ON_NON_PSD_CHOICES = ("project", "error")
# Eigenvalues of a kernel below -PSD_TOL * max|eigenvalue| make it "not PSD"; smaller ones are
# rounding noise and are dropped silently (passed as ``tol`` to ``MahalanobisMetric.from_matrix``).
PSD_TOL = 1e-6


@dataclass(frozen=True)
class LearnedFit:
    """The outcome of fitting a learned metric.

    ``metric.pairwise`` computes ``(p − x)ᵀ basis · kernel⁺ · basisᵀ (p − x)`` as
    ``‖(p − x) · P‖²`` where ``kernel⁺`` is ``kernel`` projected onto the PSD cone.

    Attributes:
        kind: ``"xqda"`` or ``"kissme"``.
        metric: the learned :class:`MahalanobisMetric` (projection ``P [D, k]``, float32).
        basis: ``[D, r]`` float64 subspace of the kernel (XQDA's ``W``, KISSME's PCA basis).
        kernel: ``[r, r]`` float64 learned kernel ``M`` before the PSD projection.
        info: JSON-able diagnostics (options, pair counts, eigenvalues, clipped eigenvalues, time).
    """

    kind: str
    metric: MahalanobisMetric
    basis: np.ndarray
    kernel: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PairCovariances:
    """Covariances ``[D, D]`` (float64) of similar and dissimilar pair differences."""

    similar: np.ndarray
    dissimilar: np.ndarray
    num_similar: int
    num_dissimilar: int


def check_fit_inputs(
    features: torch.Tensor | np.ndarray,
    pids: torch.Tensor | np.ndarray | list[int],
    camids: torch.Tensor | np.ndarray | list[int] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and convert ``features [N, D]``, ``pids [N]``, ``camids [N]`` to float64/int64 numpy."""
    x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MetricAttackError(f"training features must be a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise MetricAttackError("training features contain NaN or infinite values")
    labels = _as_int_vector(pids, "pids", x.shape[0])
    cams = None if camids is None else _as_int_vector(camids, "camids", x.shape[0])
    return x, labels, cams


def _as_int_vector(values: Any, name: str, count: int) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.shape != (count,):
        raise MetricAttackError(f"{name} must have shape [{count}] (one per feature row), got {tuple(arr.shape)}")
    return arr.astype(np.int64)


def pair_scatter(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Scatter ``Σ (x_i − x_j)(x_i − x_j)ᵀ`` over unordered pairs ``i < j`` with equal ``groups``.

    ``x [N, D]`` float64, ``groups [N]`` ints. Returns ``([D, D], number of pairs)``, computed as
    ``Σ_g n_g Σ_{i∈g} (x_i − μ_g)(x_i − μ_g)ᵀ`` in one ``[N, D]ᵀ[N, D]`` product.
    """
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    indicator = scipy.sparse.csr_matrix((np.ones(len(groups)), (inverse, np.arange(len(groups)))), shape=(len(counts), len(groups)))
    means = (indicator @ x) / counts[:, None]
    weighted = (x - means[inverse]) * np.sqrt(counts[inverse])[:, None]
    scatter = weighted.T @ weighted
    return scatter, int((counts * (counts - 1) // 2).sum())


def pair_covariances(x: np.ndarray, pids: np.ndarray, camids: np.ndarray | None = None, *, cross_camera: bool = False) -> PairCovariances:
    """Similar / dissimilar pair-difference covariances of ``x [N, D]`` (float64), see module doc.

    Raises :class:`MetricAttackError` when there is no similar pair (every identity has fewer
    than two images, or fewer than two cameras with ``cross_camera``) or no dissimilar pair.
    """
    if cross_camera and camids is None:
        raise MetricAttackError("cross_camera=True needs camera ids for every training feature")
    same_id, n_same = pair_scatter(x, pids)
    everything, n_all = pair_scatter(x, np.zeros_like(pids))
    if cross_camera:
        assert camids is not None
        pid_cam = np.unique(np.stack([pids, camids], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
        same_id_same_cam, n_same_id_same_cam = pair_scatter(x, pid_cam)
        same_cam, n_same_cam = pair_scatter(x, camids)
        same_id, n_same = same_id - same_id_same_cam, n_same - n_same_id_same_cam
        everything, n_all = everything - same_cam, n_all - n_same_cam
    n_diff = n_all - n_same
    if n_same == 0:
        detail = "was seen by two different cameras" if cross_camera else "has two or more images"
        raise MetricAttackError(
            f"cannot learn a metric: no pair of images of the same identity (no identity among "
            f"{len(np.unique(pids))} {detail}); the training split needs identities with several images"
        )
    if n_diff == 0:
        raise MetricAttackError(
            "cannot learn a metric: no pair of images of different identities"
            + (" taken by different cameras" if cross_camera else "")
            + f" (training features of {len(np.unique(pids))} distinct identity label(s)); at least two identities are needed"
        )
    dissimilar = everything - same_id
    return PairCovariances(
        similar=_symmetrise(same_id / n_same),
        dissimilar=_symmetrise(dissimilar / n_diff),
        num_similar=n_same,
        num_dissimilar=n_diff,
    )


def _symmetrise(a: np.ndarray) -> np.ndarray:
    return (a + a.T) / 2


def check_nonsingular(cov: np.ndarray, name: str, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition ``(values, vectors)`` of a symmetric PSD ``cov [d, d]``.

    Raises MetricAttackError naming ``name`` when ``cov`` is (nearly) singular: its smallest
    eigenvalue must exceed ``rtol`` times the largest.
    """
    eigvals, eigvecs = np.linalg.eigh(_symmetrise(cov))
    top = float(eigvals[-1])
    rank = int((eigvals > rtol * top).sum()) if top > 0 else 0
    if rank < len(eigvals):
        raise MetricAttackError(
            f"the {name} covariance is singular (numerical rank {rank} of {len(eigvals)}): too few "
            f"training pairs for dimension {len(eigvals)}; reduce the dimension (dim) or add a ridge (reg > 0)"
        )
    return eigvals, eigvecs


def checked_inverse(cov: np.ndarray, name: str) -> np.ndarray:
    """Inverse of a symmetric positive definite ``cov [d, d]`` (see :func:`check_nonsingular`)."""
    eigvals, eigvecs = check_nonsingular(cov, name)
    return (eigvecs / eigvals) @ eigvecs.T


def kernel_to_metric(basis: np.ndarray, kernel: np.ndarray, on_non_psd: OnNonPSD, name: str) -> tuple[MahalanobisMetric, dict[str, Any]]:
    """The metric ``(p − x)ᵀ basis · kernel⁺ · basisᵀ (p − x)`` and a summary of ``kernel``'s spectrum.

    ``basis [D, r]``, symmetric ``kernel [r, r]``; ``name`` is the method (``xqda``, ``kissme``).
    ``kernel⁺`` is ``kernel`` with its negative eigenvalues set to 0 (the Frobenius-nearest PSD
    matrix): a :class:`NonPSDMatrixWarning` reports them, or with ``on_non_psd="error"`` a
    MetricAttackError refuses them. The result's projection is ``basis @ L``, ``L Lᵀ = kernel⁺``.
    """
    check_on_non_psd(on_non_psd)
    kernel = _symmetrise(kernel)
    eigvals = np.linalg.eigvalsh(kernel)
    scale = float(np.abs(eigvals).max())
    negative = eigvals < -PSD_TOL * scale
    info = {
        "kernel_eigenvalue_min": float(eigvals.min()),
        "kernel_eigenvalue_max": float(eigvals.max()),
        "kernel_num_negative_eigenvalues": int(negative.sum()),
        "kernel_negative_mass_fraction": float(np.abs(eigvals[negative]).sum() / np.abs(eigvals).sum()),
    }
    if negative.any():
        message = (
            f"the learned {name} kernel M [{len(eigvals)}x{len(eigvals)}] is not positive semidefinite: "
            f"{int(negative.sum())} eigenvalues are negative (most negative {eigvals.min():.4g}, largest "
            f"{eigvals.max():.4g}; {info['kernel_negative_mass_fraction']:.1%} of the spectrum's mass)"
        )
        if on_non_psd == "error":
            raise MetricAttackError(message + "; use on_non_psd='project' (--on-non-psd project) to clip them to 0")
        warnings.warn(message + "; clipping them to 0 (projection onto the PSD cone)", NonPSDMatrixWarning, stacklevel=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonPSDMatrixWarning)  # reported above with the method's name
        factor = MahalanobisMetric.from_matrix(torch.from_numpy(kernel), on_non_psd="project", tol=PSD_TOL, name=name)
    projection = torch.from_numpy(basis) @ factor.projection.double()
    info["rank"] = int(projection.shape[1])
    return MahalanobisMetric(projection, name=name), info


def fit_info(
    method: str, options: dict[str, Any], labels: np.ndarray, cov: PairCovariances, start: float, **details: Any
) -> dict[str, Any]:
    """The JSON-able record of one fit: method, options, data and pair counts, time, ``details``."""
    return {
        "method": method,
        "options": options,
        "num_features": int(labels.shape[0]),
        "num_identities": int(len(np.unique(labels))),
        "num_similar_pairs": cov.num_similar,
        "num_dissimilar_pairs": cov.num_dissimilar,
        "fit_seconds": time.perf_counter() - start,
        **details,
    }


def check_on_non_psd(on_non_psd: str) -> None:
    """Reject an unknown ``on_non_psd`` value before any expensive work."""
    if on_non_psd not in ON_NON_PSD_CHOICES:
        raise MetricAttackError(f"on_non_psd must be one of {', '.join(ON_NON_PSD_CHOICES)}, got {on_non_psd!r}")


def check_dim(dim: int | None, input_dim: int) -> None:
    """``dim`` is ``None`` or an integer in ``1..input_dim``."""
    if dim is not None and not 1 <= dim <= input_dim:
        raise MetricAttackError(f"dim must be between 1 and the feature dimension {input_dim}, got {dim}")
