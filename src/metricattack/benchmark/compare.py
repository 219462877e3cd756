"""Compare two ``results.json``: one config, seed and thread count must give the same results.

Timings (when a run was made and how long its stages took) are expected to differ and are
ignored; so is the run folder itself (each run's paths are compared relative to its folder).
Everything else (numbers, checksums of checkpoints and of the per-query evidence, findings,
thread counts) must be equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Dotted paths of the fields that measure time; "*" stands for any list index or key.
TIMING_FIELDS = (
    "provenance.created",
    "provenance.wall_seconds",
    "provenance.stage_seconds",
    "models.*.train_seconds",
    "defenses.entries.*.train_seconds",
    "defenses.entries.*.train_cpu_seconds",
    "defenses.entries.*.cost_multiple",
    "defenses.entries.*.cost_per_image",
    "robustness.rows.*.seconds",
)
RUN_FOLDER = "<run>"


def _is_timing(path: tuple[str, ...]) -> bool:
    for pattern in TIMING_FIELDS:
        parts = pattern.split(".")
        if len(parts) == len(path) and all(p in ("*", q) for p, q in zip(parts, path, strict=True)):
            return True
    return False


def _relative(value: Any, folder: str | None) -> Any:
    """``value`` with the run folder written as ``<run>`` (strings only)."""
    if folder and isinstance(value, str) and (value == folder or value.startswith(folder + "/")):
        return RUN_FOLDER + value[len(folder) :]
    return value


def results_differences(a: Any, b: Any, folders: tuple[str | None, str | None] = (None, None), path: tuple[str, ...] = ()) -> list[str]:
    """Every difference between two loaded results.json trees, as ``"dotted.path: A != B"``.

    ``folders`` are the two runs' output folders (absolute path strings): a path inside
    its own run's folder compares as ``<run>/...``. Timing fields (``TIMING_FIELDS``) are
    skipped. An empty list means the two runs gave the same results.
    """
    if _is_timing(path):
        return []
    where = ".".join(path) or "(top level)"
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in the {'first' if k in a else 'second'} run" for k in sorted(set(a) ^ set(b))]
        for key in sorted(set(a) & set(b)):
            out += results_differences(a[key], b[key], folders, (*path, str(key)))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} entries != {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in results_differences(x, y, folders, (*path, str(i)))]
    x, y = _relative(a, folders[0]), _relative(b, folders[1])
    return [] if type(x) is type(y) and x == y else [f"{where}: {x!r} != {y!r}"]


def compare_result_files(first: str | Path, second: str | Path) -> list[str]:
    """Differences between two results.json files (or run folders holding one), timings aside."""
    paths = [Path(p) / "results.json" if Path(p).is_dir() else Path(p) for p in (first, second)]
    trees = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    folders = (str(paths[0].resolve().parent), str(paths[1].resolve().parent))
    return results_differences(trees[0], trees[1], folders)
