"""Stages of a benchmark run: the package's one stage cache (:mod:`metricattack.stages`), re-exported.

A benchmark stage's result lives in ``<run>/cache/<stage>/<key>/``; see :mod:`metricattack.stages`
for keys, markers, resumption and ``<run>/logs/stages.jsonl``. :func:`progress` draws the bar
over one group of stages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

from ..stages import MARKER, StageCache, StageSpec, code_version, read_stage_log

__all__ = ["MARKER", "StageCache", "StageSpec", "code_version", "progress", "read_stage_log"]

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar (with elapsed time and ETA) over one group of stages."""
    return tqdm(
        items,
        desc=desc,
        total=total,
        unit="stage",
        dynamic_ncols=True,
        leave=True,
        bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining} ETA",
    )
