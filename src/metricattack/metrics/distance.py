"""Distance metrics between re-ID features, all differentiable.

Every metric is an *embedding followed by a squared Euclidean distance*: ``embed`` maps
features ``[N, D]`` to ``[N, k]`` and ``d(p, x) = scale · ‖embed(p) − embed(x)‖²``. This one
shape covers the paper's metrics:

* :class:`EuclideanMetric` -- ``d = ‖p − x‖²`` (paper Eq. 3); embed = identity, scale 1.
* :class:`CosineMetric` -- ``d = 1 − cos(p, x)``; embed = L2 normalisation, scale 1/2
  (``‖p̂ − x̂‖² = 2 − 2 cos``).
* :class:`MahalanobisMetric` -- ``d = (p − x)ᵀ M (p − x)`` with ``M = P Pᵀ`` (paper Eq. 4);
  embed = ``f @ P``. Learned metrics (XQDA, KISSME) are stored this way.

Example::

    >>> m = build_metric("cosine")
    >>> m.pairwise(torch.eye(2), torch.eye(2))
    tensor([[0., 1.],
            [1., 0.]])

Metrics are ``nn.Module``s (a projection is a buffer, so ``.to(device)`` moves it) and can be
saved as safetensors + a JSON sidecar with :func:`save_metric` / :func:`load_metric`. Their
classes are listed by kind in :data:`METRICS` (learned metrics, which are fitted into a
:class:`MahalanobisMetric`, are listed in :data:`metricattack.metrics.learned.LEARNED_METRICS`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import MetricAttackError, MetricAttackWarning
from ..io import atomic_path, atomic_write_json, environment_versions, sha256_file
from ..registry import Registry

STATE_FORMAT = "metricattack.metric/1"

METRICS: Registry[type[Metric]] = Registry("metric")
"""Metric kind → its class (``euclidean``, ``cosine``, ``mahalanobis``); see :func:`build_metric`."""


class NonPSDMatrixWarning(MetricAttackWarning):
    """A Mahalanobis matrix had negative eigenvalues that were set to zero."""


def squared_euclidean_pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``‖a_i − b_j‖²`` for ``a [N, k]``, ``b [M, k]`` → ``[N, M]``, as ``‖a‖² + ‖b‖² − 2abᵀ`` clamped ≥ 0.

    Without autograd the result is built in one ``[N, M]`` buffer (in place), so a chunk of
    queries against a large gallery costs one distance matrix of memory.
    """
    a2 = a.pow(2).sum(1, keepdim=True)
    b2 = b.pow(2).sum(1).unsqueeze(0)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return (a2 + b2 - 2 * (a @ b.t())).clamp(min=0)
    return (a @ b.t()).mul_(-2).add_(a2).add_(b2).clamp_(min=0)


class Metric(nn.Module):
    """A distance ``d(p, x) = scale · ‖embed(p) − embed(x)‖²`` between feature rows.

    Subclasses define :meth:`embed` and set ``name`` and ``scale``. ``feature_dim`` is the
    required input dimension, or ``None`` when any dimension works. A class whose constructor
    needs arguments (a learned projection) sets ``takes_parameters``.
    """

    name: str = "metric"
    scale: float = 1.0
    feature_dim: int | None = None
    takes_parameters: ClassVar[bool] = False

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Map ``features [N, D]`` into the space where the metric is squared Euclidean (``[N, k]``)."""
        raise NotImplementedError

    def check_features(self, features: torch.Tensor, what: str = "features") -> None:
        """Raise MetricAttackError unless ``features`` is ``[N, feature_dim]``."""
        if features.dim() != 2:
            raise MetricAttackError(f"metric {self.name!r} needs {what} of shape [N, D], got {tuple(features.shape)}")
        if self.feature_dim is not None and features.shape[1] != self.feature_dim:
            raise MetricAttackError(
                f"metric {self.name!r} expects {what} of dimension {self.feature_dim}, got dimension "
                f"{features.shape[1]} (was the metric fitted on features of another model?)"
            )

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances between every row of ``a [N, D]`` and of ``b [M, D]`` → ``[N, M]``."""
        return self.pairwise_embedded(self.embed(a), self.embed(b))

    def pairwise_embedded(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        """:meth:`pairwise` on already embedded rows ``ea [N, k]``, ``eb [M, k]`` (embed a gallery once)."""
        dist = squared_euclidean_pairwise(ea, eb)
        if self.scale == 1.0:
            return dist
        return dist * self.scale if dist.requires_grad else dist.mul_(self.scale)

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances between matching rows of ``a [N, D]`` and ``b [N, D]`` → ``[N]``."""
        if a.shape != b.shape:
            raise MetricAttackError(f"paired distances need two feature matrices of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        dist = (self.embed(a) - self.embed(b)).pow(2).sum(1)
        return dist if self.scale == 1.0 else dist * self.scale

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, meta)``: what :meth:`from_state` needs to rebuild this metric (meta is JSON-able)."""
        return {}, {"kind": self.kind, "name": self.name}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Metric:
        """Rebuild a metric from :meth:`to_state` output; it must be an instance of ``cls``."""
        metric = metric_from_state(tensors, meta)
        if not isinstance(metric, cls):
            raise MetricAttackError(f"metric state holds a {metric.kind!r} metric, expected {cls.__name__}")
        return metric

    @property
    def kind(self) -> str:
        """:data:`METRICS` name of the metric's class (``euclidean``, ``cosine``, ``mahalanobis``)."""
        for kind in METRICS:
            if METRICS.get(kind) is type(self):
                return kind
        raise MetricAttackError(f"metric class {type(self).__name__} is not registered in METRICS")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, scale={self.scale}, feature_dim={self.feature_dim}"


@METRICS.register("euclidean")
class EuclideanMetric(Metric):
    """Squared Euclidean distance ``‖p − x‖²`` (paper Eq. 3)."""

    name = "euclidean"

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        self.check_features(features)
        return features


@METRICS.register("cosine")
class CosineMetric(Metric):
    """Cosine distance ``1 − cos(p, x)`` in ``[0, 2]``: L2-normalised rows, squared Euclidean / 2."""

    name = "cosine"
    scale = 0.5

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        self.check_features(features)
        return F.normalize(features, p=2, dim=1)


@METRICS.register("mahalanobis")
class MahalanobisMetric(Metric):
    """``d(p, x) = (p − x)ᵀ P Pᵀ (p − x) = ‖(p − x) P‖²`` (paper Eq. 4 with ``M = P Pᵀ``).

    Args:
        projection: ``[D, k]`` factor ``P`` of the PSD matrix ``M``.
        name: label used in reports and errors (e.g. ``"xqda"``, ``"kissme"``).
    """

    takes_parameters = True

    projection: torch.Tensor

    def __init__(self, projection: torch.Tensor, *, name: str = "mahalanobis") -> None:
        super().__init__()
        projection = torch.as_tensor(projection)
        if projection.dim() != 2 or projection.shape[0] == 0 or projection.shape[1] == 0:
            raise MetricAttackError(f"Mahalanobis projection must be a non-empty [D, k] matrix, got shape {tuple(projection.shape)}")
        if not torch.isfinite(projection).all():
            raise MetricAttackError("Mahalanobis projection contains NaN or infinite values")
        self.register_buffer("projection", projection.detach().to(torch.float32).contiguous())
        self.name = name
        self.feature_dim = int(projection.shape[0])

    @classmethod
    def from_matrix(
        cls,
        matrix: torch.Tensor,
        *,
        on_non_psd: Literal["project", "error"] = "project",
        tol: float = 1e-6,
        name: str = "mahalanobis",
    ) -> MahalanobisMetric:
        """Factor a symmetric ``matrix [D, D]`` into ``P [D, k]`` with ``P Pᵀ = matrix`` (k = its rank).

        ``tol`` is relative to ``max |M|`` (symmetry) and ``max |eigenvalue|`` (negativity and rank).
        A matrix with an eigenvalue below ``-tol·max|λ|`` is not PSD: ``on_non_psd="project"``
        clips negative eigenvalues to 0 with a :class:`NonPSDMatrixWarning`; ``"error"`` raises.
        """
        if on_non_psd not in ("project", "error"):
            raise MetricAttackError(f"on_non_psd must be 'project' or 'error', got {on_non_psd!r}")
        m = torch.as_tensor(matrix).detach().to(torch.float64).cpu()
        if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
            raise MetricAttackError(f"a Mahalanobis matrix must be square [D, D], got shape {tuple(m.shape)}")
        if not torch.isfinite(m).all():
            raise MetricAttackError("the Mahalanobis matrix contains NaN or infinite values")
        size = float(m.abs().max())
        asym = float((m - m.t()).abs().max())
        if asym > tol * max(size, 1e-300):
            raise MetricAttackError(
                f"the Mahalanobis matrix is not symmetric: max |M − Mᵀ| = {asym:.3g} exceeds tol·max|M| = {tol * size:.3g}"
            )
        eigvals, eigvecs = torch.linalg.eigh((m + m.t()) / 2)
        top = float(eigvals.abs().max())
        smallest = float(eigvals.min())
        if smallest < -tol * top:
            negative = int((eigvals < -tol * top).sum())
            message = (
                f"the Mahalanobis matrix is not positive semidefinite: {negative} of {len(eigvals)} eigenvalues "
                f"are negative, the most negative is {smallest:.6g}"
            )
            if on_non_psd == "error":
                raise MetricAttackError(message + " (use on_non_psd='project' to set them to 0)")
            warnings.warn(message + "; they are set to 0 (projection onto the PSD cone)", NonPSDMatrixWarning, stacklevel=2)
        keep = eigvals > tol * top
        if not keep.any():
            raise MetricAttackError("the Mahalanobis matrix has no positive eigenvalue: the distance would be 0 everywhere")
        projection = eigvecs[:, keep] * eigvals[keep].sqrt()
        return cls(projection, name=name)

    @property
    def matrix(self) -> torch.Tensor:
        """The PSD matrix ``M = P Pᵀ`` ``[D, D]``."""
        return self.projection @ self.projection.t()

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        self.check_features(features)
        return features @ self.projection.to(features.dtype)

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().to_state()
        tensors["projection"] = self.projection.detach().cpu().contiguous()
        meta["feature_dim"] = self.feature_dim
        meta["rank"] = int(self.projection.shape[1])
        return tensors, meta

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write ``path`` (safetensors) + its ``.json`` sidecar; see :func:`save_metric`."""
        return save_metric(self, path, meta)


def parameter_free_metrics() -> tuple[str, ...]:
    """:data:`METRICS` names that :func:`build_metric` builds without options (``euclidean``, ``cosine``)."""
    return tuple(name for name in METRICS if not METRICS.get(name).takes_parameters)


def check_parameter_free_metric(name: str) -> str:
    """``name`` if it is in :func:`parameter_free_metrics`, else ValueError (a pydantic validator)."""
    if name not in parameter_free_metrics():
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(parameter_free_metrics())}")
    return name


ParameterFreeMetricName = Annotated[str, AfterValidator(check_parameter_free_metric)]
"""A pydantic field type: the name of a metric without options (see :func:`parameter_free_metrics`)."""


def build_metric(name: str, **kwargs: Any) -> Metric:
    """Build a metric by :data:`METRICS` name: ``euclidean``, ``cosine``, or ``mahalanobis`` with
    ``projection=[D, k]`` or ``matrix=[D, D]`` (plus ``from_matrix`` options).
    """
    key = name.lower()
    cls = METRICS.get(key)
    if cls is not MahalanobisMetric:
        if kwargs:
            raise MetricAttackError(f"metric {key!r} takes no options, got {', '.join(sorted(kwargs))}")
        return cls()
    if ("projection" in kwargs) == ("matrix" in kwargs):
        raise MetricAttackError("metric 'mahalanobis' needs exactly one of projection=[D, k] or matrix=[D, D]")
    try:
        if "matrix" in kwargs:
            return MahalanobisMetric.from_matrix(kwargs.pop("matrix"), **kwargs)
        return MahalanobisMetric(kwargs.pop("projection"), **kwargs)
    except TypeError as exc:
        raise MetricAttackError(f"invalid options for metric 'mahalanobis': {exc}") from None


def metric_from_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Metric:
    """Rebuild a metric from :meth:`Metric.to_state` output."""
    kind = meta.get("kind")
    if not isinstance(kind, str) or kind not in METRICS:
        raise MetricAttackError(f"metric state has unknown kind {kind!r}; expected one of {', '.join(METRICS)}")
    cls = METRICS.get(kind)
    if cls is not MahalanobisMetric:
        return cls()
    if "projection" not in tensors:
        raise MetricAttackError("Mahalanobis metric state has no 'projection' tensor")
    return MahalanobisMetric(tensors["projection"], name=str(meta.get("name", "mahalanobis")))


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a metric file: ``x.xqda.safetensors`` → ``x.xqda.json``."""
    return Path(path).with_suffix(".json")


def save_metric(metric: Metric, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``metric`` to ``path`` (safetensors tensors) and ``path.with_suffix('.json')``.

    The sidecar holds the metric's state meta, the caller's ``meta`` (provenance: how it was
    fitted, on which features), software versions and the SHA-256 of the tensor file. Both
    files are written atomically (tensors first, so a sidecar always describes a full file).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise MetricAttackError(f"metric file {path} must end with .safetensors")
    tensors, state = metric.to_state()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    record = {
        "format": STATE_FORMAT,
        "state": state,
        "tensors_sha256": sha256_file(path),
        "meta": meta or {},
        "versions": environment_versions(),
    }
    atomic_write_json(sidecar_path(path), record)
    return path


def is_metric_file(path: str | Path) -> bool:
    """True when ``path``'s JSON sidecar is a metric record of :func:`save_metric` (cheap: the tensors are not read)."""
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == STATE_FORMAT


def load_metric(path: str | Path) -> Metric:
    """Load a metric written by :func:`save_metric`; errors name the file and the problem."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise MetricAttackError(f"metric file {path} does not exist")
    if not side.is_file():
        raise MetricAttackError(f"metric file {path} has no JSON sidecar {side}")
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MetricAttackError(f"metric sidecar {side} is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        raise MetricAttackError(f"metric sidecar {side} is not a {STATE_FORMAT} record")
    if record.get("tensors_sha256") != sha256_file(path):
        raise MetricAttackError(f"metric file {path} does not match the checksum in {side} (modified or truncated?)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise MetricAttackError(f"metric file {path} is not a readable safetensors file: {exc}") from None
    return metric_from_state(tensors, record.get("state", {}))
