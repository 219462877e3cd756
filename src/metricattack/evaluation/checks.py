"""Checks of a test set (query + gallery) made before any model runs, from names and file bytes only.

* :func:`require_valid_matches`: a test set where no query has a valid match (same identity,
  another camera) cannot be evaluated -- every CMC and mAP would be a meaningless 0 -- so it is
  an error, not a result.
* :func:`warn_duplicate_images`: a query whose exact file is also in the gallery under a pair the
  protocol counts (usually the same person under another camera label) is matched trivially and
  inflates rank-1 and mAP: a :class:`DuplicateImageWarning`. Only files whose size occurs in
  both splits are hashed, so the check reads a small part of a real dataset.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from pathlib import Path

from ..data.types import JUNK_PID, ImageRecord, ReIDDataset
from ..errors import DatasetError, MetricAttackWarning
from .ranking import match_counts


class DuplicateImageWarning(MetricAttackWarning):
    """Query images whose exact bytes are in the gallery, where the evaluation counts them."""


def require_valid_matches(dataset: ReIDDataset) -> None:
    """Raise :class:`DatasetError` when no query has a valid match in the gallery."""
    positives, _ = match_counts(
        [r.pid for r in dataset.query],
        [r.pid for r in dataset.gallery],
        [r.camid for r in dataset.query],
        [r.camid for r in dataset.gallery],
    )
    if not (positives > 0).any():
        raise DatasetError(
            f"{dataset.name} at {dataset.root}: none of the {len(dataset.query)} queries has a valid match in the gallery "
            "(an image of the same identity taken by another camera), so CMC and mAP are undefined; "
            "check the file names' identity and camera fields"
        )


def duplicate_pairs(dataset: ReIDDataset) -> list[tuple[ImageRecord, ImageRecord]]:
    """``(query, gallery)`` records with byte-identical files that the evaluation protocol counts
    (not junk, and not the query's own identity under its own camera)."""
    by_size: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in dataset.gallery:
        if record.pid != JUNK_PID:
            by_size[_size(record.path)].append(record)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return digests[path]

    pairs = []
    for query in dataset.query:
        for candidate in by_size.get(_size(query.path), ()):
            ignored = candidate.pid == query.pid and candidate.camid == query.camid
            if not ignored and digest(candidate.path) == digest(query.path):
                pairs.append((query, candidate))
    return pairs


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc.strerror}") from None


def warn_duplicate_images(dataset: ReIDDataset) -> int:
    """Warn (:class:`DuplicateImageWarning`) about :func:`duplicate_pairs`; return how many queries have one."""
    pairs = duplicate_pairs(dataset)
    queries = {q.path for q, _ in pairs}
    if queries:
        q, g = pairs[0]
        warnings.warn(
            f"{len(queries)} of {len(dataset.query)} queries of {dataset.name} are byte-identical to gallery images the "
            f"evaluation counts (e.g. {q.path.name}, identity {q.pid} camera {q.camid + 1} = {g.path.name}, identity {g.pid} "
            f"camera {g.camid + 1}); such queries are matched trivially and rank-1 / mAP overstate the model",
            DuplicateImageWarning,
            stacklevel=2,
        )
    return len(queries)


def check_test_set(dataset: ReIDDataset) -> None:
    """:func:`require_valid_matches` and :func:`warn_duplicate_images`, before evaluating or attacking ``dataset``."""
    require_valid_matches(dataset)
    warn_duplicate_images(dataset)
