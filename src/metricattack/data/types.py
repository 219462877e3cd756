"""Core data records shared by every stage.

A re-ID dataset is three lists of :class:`ImageRecord` (train, query, gallery).
Identity conventions follow Market-1501: ``pid == -1`` is a junk image (ignored in
evaluation), ``pid == 0`` is a distractor (counts as a wrong match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

JUNK_PID = -1
DISTRACTOR_PID = 0
SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class ImageRecord:
    """One image: its file, identity and camera (cameras are 0-based)."""

    path: Path
    pid: int
    camid: int


@dataclass(frozen=True)
class ReIDDataset:
    """A parsed dataset: the three splits and where they came from.

    ``split_dirs`` maps each split name to the folder (relative to ``root``) its images
    live in, so an attacked copy can be written in the same layout.
    """

    name: str
    root: Path
    train: tuple[ImageRecord, ...]
    query: tuple[ImageRecord, ...]
    gallery: tuple[ImageRecord, ...]
    split_dirs: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> tuple[ImageRecord, ...]:
        """Records of split ``name`` (one of ``train``, ``query``, ``gallery``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def num_train_ids(self) -> int:
        """Number of distinct training identities (junk excluded)."""
        return len({r.pid for r in self.train if r.pid != JUNK_PID})
