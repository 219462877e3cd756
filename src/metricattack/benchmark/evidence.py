"""The evidence behind the findings and its bootstrap.

Every evaluation of a run leaves its per-query APs (``[Q]``, NaN for a query without a valid
match) under :func:`ap_key`; the targeted experiment leaves, per attacked gallery image, 1 if it
reached the top-10 of its target probe (:func:`hits_key`). They are saved beside results.json
(``evidence.safetensors``), so the findings can be recomputed from the run folder.

:class:`Bootstrap` resamples the units of a vector (the valid queries; the attacked images)
with replacement, ``resamples`` times, with a fixed seed, and returns the statistic on the full
sample followed by its value on every resample, vectorised: ``mean(key)`` is a ``[1 + B]``
array. Vectors of the same length are resampled with the same draws (paired), so a
difference of two mAPs on the same queries keeps its correlation. A finding combines such
arrays element-wise and reads a percentile interval from them (:meth:`Bootstrap.interval`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import MetricAttackError
from ..io import atomic_path


def ap_key(tested: str, attack_id: str | None, metric: str) -> str:
    """Key of the per-query APs of ``tested`` on a gallery (``attack_id`` None: the clean one) under ``metric``."""
    return f"ap|{tested}|{attack_id or 'clean'}|{metric}"


def hits_key(attack_id: str, clean: bool = False) -> str:
    """Key of the per-image top-10 hits of a targeted attack (``clean``: the same images before the attack)."""
    return f"top10|{attack_id}|{'clean' if clean else 'attacked'}"


def save_evidence(path: Path, vectors: Mapping[str, np.ndarray]) -> None:
    """Write ``vectors`` (float64) to ``path`` (safetensors, atomic)."""
    with atomic_path(path) as tmp:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in sorted(vectors.items())}, str(tmp))


def load_evidence(path: Path) -> dict[str, np.ndarray]:
    """The vectors saved by :func:`save_evidence`."""
    return {k: v.numpy() for k, v in load_file(str(path)).items()}


class Bootstrap:
    """Seeded, vectorised bootstrap of means of evidence vectors (see the module docstring).

    Args:
        vectors: key → ``[N]`` float vector (NaN entries are not units: a query without a match).
        resamples: number of bootstrap resamples ``B``.
        seed: seeds the draws (the same config gives the same intervals).
        confidence: coverage of :meth:`interval` (0.95: the 2.5 and 97.5 percentiles).
    """

    def __init__(self, vectors: Mapping[str, np.ndarray], resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> None:
        self.vectors = dict(vectors)
        self.resamples, self.seed, self.confidence = resamples, seed, confidence
        self._draws: dict[int, np.ndarray] = {}
        self._valid: dict[int, np.ndarray] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.vectors

    def _units(self, key: str) -> np.ndarray:
        """The finite entries of vector ``key``, checked to sit where those of its paired vectors sit."""
        if key not in self.vectors:
            raise MetricAttackError(f"no evidence {key!r} in this run")
        vector = np.asarray(self.vectors[key], dtype=np.float64)
        valid = np.isfinite(vector)
        known = self._valid.setdefault(len(vector), valid)
        if not np.array_equal(known, valid):
            raise MetricAttackError(f"evidence {key!r} has valid entries other than the vectors it is paired with")
        return vector[valid]

    def _draw(self, n: int) -> np.ndarray:
        """``[B, n]`` indices drawn with replacement (one matrix per unit count, so equal-length vectors are paired)."""
        if n not in self._draws:
            rng = np.random.default_rng([self.seed, n])
            self._draws[n] = rng.integers(0, n, size=(self.resamples, n))
        return self._draws[n]

    def mean(self, key: str, scale: float = 1.0) -> np.ndarray:
        """``[1 + B]``: ``scale`` × the mean of vector ``key`` on the full sample, then on every resample."""
        units = self._units(key)
        if units.size == 0:
            raise MetricAttackError(f"evidence {key!r} has no valid entry")
        return scale * np.concatenate([[units.mean()], units[self._draw(units.size)].mean(axis=1)])

    def mAP(self, key: str) -> np.ndarray:
        """``[1 + B]`` mAP in percent (the mean of the per-query APs of ``key``)."""
        return self.mean(key, 100.0)

    def interval(self, values: np.ndarray) -> tuple[float, float]:
        """The percentile interval of a ``[1 + B]`` statistic (its resampled values ``values[1:]``)."""
        tail = 100 * (1 - self.confidence) / 2
        low, high = np.percentile(values[1:], [tail, 100 - tail])
        return float(low), float(high)
