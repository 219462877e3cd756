"""Content-keyed, resumable stages: the one cache of every command (benchmark, defend, evaluate).

A stage is a named piece of work (train one model, attack one gallery, extract one split's
features, ...) identified by a :class:`StageSpec`: its kind, config, the keys of the stages it
reads from, a hash of the source code of the packages it runs (so editing the attack code
invalidates attacks, not training) and the number of intra-op CPU threads (the summation order
of PyTorch's CPU kernels, hence a trained model's bytes, depends on it: benchmarks/RESULTS.md,
"Reproducible numbers"; a run resumed with another thread count recomputes instead of mixing
results of two thread counts). The key is the SHA-256 of those.

:class:`StageCache` keeps stages under ``root`` in one of two places:

* :meth:`StageCache.run` -- a folder per key, ``<root>/cache/<kind>/<key>/`` (any number of
  results per kind side by side: the benchmark's models and attacks, cached features);
* :meth:`StageCache.run_slot` -- one slot per kind, ``<root>/stages/<kind>.json``, whose work
  writes into folders the caller names (the stages of one ``metricattack defend`` run); a slot
  finished with another key is refused (or re-run when asked).

Completion is marked by a JSON marker written atomically *after* the work: a killed stage has
no marker and runs again (in the same folder, so work that can resume -- training per epoch, an
attack export per batch -- continues where it stopped); a finished stage is never re-run. Every
decision (``ran`` / ``cached``) is appended to ``<root>/logs/stages.jsonl``. Under ``torchrun``
every rank runs the work (which may shard it) and only rank 0 writes markers and the log.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .compute import active
from .distributed import is_main_process
from .errors import ConfigError
from .io import append_line, atomic_write_json, environment_versions, sha256_json
from .wording import counted

MARKER = "stage.json"
PACKAGE_ROOT = Path(__file__).resolve().parent
Outputs = dict[str, Any]


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
    """What identifies a stage: its kind, a readable label, config, upstream keys, code packages,
    the intra-op thread count it runs with (default: the process's, when the spec is made) and the
    non-default fields of its :class:`~metricattack.compute.Compute` (default: the active one's;
    ``{}`` for stages that run no model)."""

    kind: str
    label: str
    config: Mapping[str, Any]
    upstream: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    threads: int = field(default_factory=torch.get_num_threads)
    compute: Mapping[str, Any] = field(default_factory=lambda: active().key())

    @property
    def key(self) -> str:
        """The content key (24 hex chars) naming the stage's cache folder."""
        payload = {
            "kind": self.kind,
            "config": dict(self.config),
            "upstream": list(self.upstream),
            "code": code_version(*self.code) if self.code else "",
            "threads": self.threads,
        }
        if self.compute:  # the default compute (fp32) adds nothing: keys made before it existed stay valid
            payload["compute"] = {**self.compute, "code": code_version("compute")}
        return sha256_json(payload)[:24]


class StageCache:
    """Runs stages at most once per content key under ``root`` and logs every decision.

    ``announce(spec)`` is called before a stage's work runs (e.g. to print its name); ``ran``
    lists the stages this object ran (not those found finished).
    """

    def __init__(self, root: Path, *, announce: Callable[[StageSpec], None] | None = None) -> None:
        self.root = Path(root)
        self.log_path = self.root / "logs" / "stages.jsonl"
        self.announce = announce
        self.ran: list[StageSpec] = []

    def folder(self, spec: StageSpec) -> Path:
        """The cache folder of ``spec`` (``<root>/cache/<kind>/<key>``)."""
        return self.root / "cache" / spec.kind / spec.key

    def is_done(self, spec: StageSpec) -> bool:
        """True when ``spec`` finished in an earlier run (its marker exists)."""
        return (self.folder(spec) / MARKER).is_file()

    def run(self, spec: StageSpec, work: Callable[[Path], Outputs], *, valid: Callable[[Path, Outputs], bool] | None = None) -> Outputs:
        """Return ``work(folder)``'s JSON-able outputs, running it only if not yet done.

        ``work`` writes its files into ``folder`` and returns a small JSON dict (paths
        relative to ``folder`` or plain numbers) that is stored in the marker. With ``valid``,
        a finished stage whose ``valid(folder, outputs)`` is False (a damaged file) runs again.
        """
        folder = self.folder(spec)
        marker = folder / MARKER
        if marker.is_file():
            outputs = self._outputs(marker)
            if valid is None or valid(folder, outputs):
                self._log(spec, "cached", 0.0)
                return outputs
        folder.mkdir(parents=True, exist_ok=True)
        return self._work(spec, marker, lambda: work(folder))

    def run_slot(self, spec: StageSpec, work: Callable[[], Outputs], *, on_change: Literal["refuse", "rerun"] = "refuse") -> Outputs:
        """:meth:`run` for a stage with one slot per kind (marker ``<root>/stages/<kind>.json``).

        ``work()`` writes where the caller decides. A slot finished with another key raises
        :class:`~metricattack.errors.ConfigError` (``on_change="refuse"``) or runs again (``"rerun"``).
        """
        marker = self.root / "stages" / f"{spec.kind}.json"
        if marker.is_file():
            record = json.loads(marker.read_text(encoding="utf-8"))
            if record["key"] == spec.key:
                self._log(spec, "cached", 0.0)
                return dict(record["outputs"])
            if on_change == "refuse":
                threads = record.get("threads")
                other = (
                    f" (with {counted(threads, 'CPU thread')}, this run has {spec.threads})" if threads not in (None, spec.threads) else ""
                )
                raise ConfigError(
                    f"{self.root}: stage {spec.kind!r} was made with other settings{other}; use another output folder or remove it"
                )
        return self._work(spec, marker, work)

    def _outputs(self, marker: Path) -> Outputs:
        return dict(json.loads(marker.read_text(encoding="utf-8"))["outputs"])

    def _work(self, spec: StageSpec, marker: Path, work: Callable[[], Outputs]) -> Outputs:
        if self.announce is not None:
            self.announce(spec)
        start, cpu_start = time.perf_counter(), time.process_time()
        outputs = work()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        if is_main_process():
            atomic_write_json(
                marker,
                {
                    "kind": spec.kind,
                    "label": spec.label,
                    "key": spec.key,
                    "config": dict(spec.config),
                    "upstream": list(spec.upstream),
                    "code": {"packages": list(spec.code), "version": code_version(*spec.code) if spec.code else ""},
                    "threads": spec.threads,
                    "versions": environment_versions(),
                    "seconds": round(seconds, 3),
                    "cpu_seconds": round(cpu_seconds, 3),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "outputs": outputs,
                },
            )
        self._log(spec, "ran", seconds)
        self.ran.append(spec)
        return outputs

    def _log(self, spec: StageSpec, status: str, seconds: float) -> None:
        if not is_main_process():
            return
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
        append_line(self.log_path, line)


def read_stage_log(run_dir: Path) -> list[dict[str, Any]]:
    """All entries of ``<run_dir>/logs/stages.jsonl`` (oldest first)."""
    path = Path(run_dir) / "logs" / "stages.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
