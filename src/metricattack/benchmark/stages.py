"""Content-addressed, resumable stages of a benchmark run.

A stage is a named piece of work (train one model, attack one gallery, ...) whose
result lives in ``<run>/cache/<stage>/<key>/``. The key is the SHA-256 of the stage's
config section, the keys of the stages it reads from, and a hash of the source code of
the packages it runs (so editing the attack code invalidates attacks, not training).

Completion is marked by ``stage.json`` written atomically *after* the work: a killed
stage has no marker and is re-run in the same folder (so work that can resume, such as
an attack export, continues where it stopped); a finished stage is never re-run.
Every decision (``ran`` / ``cached``) is appended to ``<run>/logs/stages.jsonl``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from ..io import atomic_write_json, environment_versions, sha256_json

T = TypeVar("T")
MARKER = "stage.json"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def code_version(*packages: str) -> str:
    """Hex SHA-256 (16 chars) of the ``.py`` sources of ``metricattack.<package>`` folders/modules.

    ``code_version("attacks", "models")`` changes whenever a file of those packages changes.
    """
    digest = hashlib.sha256()
    for package in sorted(packages):
        target = PACKAGE_ROOT / package
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
        for path in files:
            if path.is_file():
                digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class StageSpec:
    """What identifies a stage: its kind, a readable label, config, upstream keys, code."""

    kind: str
    label: str
    config: Mapping[str, Any]
    upstream: tuple[str, ...] = ()
    code: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The content key (24 hex chars) naming the stage's cache folder."""
        payload = {
            "kind": self.kind,
            "config": dict(self.config),
            "upstream": list(self.upstream),
            "code": code_version(*self.code) if self.code else "",
        }
        return sha256_json(payload)[:24]


class StageCache:
    """Runs stages at most once per content key under ``root`` and logs every decision."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.log_path = self.root / "logs" / "stages.jsonl"

    def folder(self, spec: StageSpec) -> Path:
        """The cache folder of ``spec`` (``<root>/cache/<kind>/<key>``)."""
        return self.root / "cache" / spec.kind / spec.key

    def is_done(self, spec: StageSpec) -> bool:
        """True when ``spec`` finished in an earlier run (its marker exists)."""
        return (self.folder(spec) / MARKER).is_file()

    def run(self, spec: StageSpec, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Return ``work(folder)``'s JSON-able outputs, running it only if not yet done.

        ``work`` writes its files into ``folder`` and returns a small JSON dict (paths
        relative to ``folder`` or plain numbers) that is stored in the marker.
        """
        folder = self.folder(spec)
        marker = folder / MARKER
        if marker.is_file():
            record = json.loads(marker.read_text(encoding="utf-8"))
            self._log(spec, "cached", 0.0)
            return dict(record["outputs"])
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        outputs = work(folder)
        seconds = time.perf_counter() - start
        atomic_write_json(
            marker,
            {
                "kind": spec.kind,
                "label": spec.label,
                "key": spec.key,
                "config": dict(spec.config),
                "upstream": list(spec.upstream),
                "code": {"packages": list(spec.code), "version": code_version(*spec.code) if spec.code else ""},
                "versions": environment_versions(),
                "seconds": round(seconds, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "outputs": outputs,
            },
        )
        self._log(spec, "ran", seconds)
        return outputs

    def _log(self, spec: StageSpec, status: str, seconds: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(
            {
                "kind": spec.kind,
                "label": spec.label,
                "key": spec.key,
                "status": status,
                "seconds": round(seconds, 3),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            sort_keys=True,
        )
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def read_stage_log(run_dir: Path) -> list[dict[str, Any]]:
    """All entries of ``<run_dir>/logs/stages.jsonl`` (oldest first)."""
    path = Path(run_dir) / "logs" / "stages.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
