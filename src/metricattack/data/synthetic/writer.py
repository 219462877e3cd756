"""Plan, render and write a synthetic dataset in the Market-1501 layout, atomically.

Files carry Market-1501's names, ``.jpg`` extension included, so re-ID code that lists
``*.jpg`` reads them; their content is lossless PNG (PIL, OpenCV and torchvision decode by
content), so pixels are exactly what was drawn.

Every image has its own random stream, seeded from (seed, kind, ids...), so an image
does not depend on generation order or on the number of worker processes.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import MetricAttackError
from ...io import atomic_dir, atomic_write_json, environment_versions, remove_leftovers
from ...outputs import check_writable
from ...progress import Progress
from .appearance import Camera, Fabric, Identity, sample_camera, sample_fabric, sample_identity, wear
from .config import SynthConfig
from .render import render_background, render_image, render_junk

MANIFEST = "synth.json"
#: Bumped whenever the drawing code changes the bytes or names produced for a given config.
#: 3: files are named ``.jpg`` like Market-1501's (content still lossless PNG).
#: (``texture`` > 0 and ``outfits`` draw new images; without them the bytes of version 3 are kept.)
GENERATOR_VERSION = 3
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

# Stream kinds: the second entry of every seed tuple, so streams never collide.
_IDENTITY, _CAMERA, _IMAGE, _DISTRACTOR, _SUBSET, _JUNK, _FRAMES, _PIDS, _BACKGROUND, _COUNTS, _FABRIC, _OUTFIT, _WEARS = range(1, 14)


@dataclass(frozen=True)
class PlannedImage:
    """One image to draw: where it goes and which random streams make it."""

    relpath: str
    pid: int  # as written in the name: -1 junk, 0 distractor
    cam: int  # 0-based
    who: tuple[int, int]  # identity stream (kind, index); kind 0 for junk
    key: tuple[int, ...]  # image stream


def _rng(cfg: SynthConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *key])


def split_identities(cfg: SynthConfig) -> tuple[list[int], list[int]]:
    """Disjoint sorted train and test pids, drawn from 1..num_train_ids+num_test_ids."""
    perm = _rng(cfg, _PIDS).permutation(cfg.num_train_ids + cfg.num_test_ids) + 1
    return sorted(int(p) for p in perm[: cfg.num_train_ids]), sorted(int(p) for p in perm[cfg.num_train_ids :])


def _cameras_of(cfg: SynthConfig, pid: int) -> list[int]:
    if cfg.cameras_per_id is None:
        return list(range(cfg.num_cameras))
    chosen = _rng(cfg, _SUBSET, pid).choice(cfg.num_cameras, cfg.cameras_per_id, replace=False)
    return sorted(int(c) for c in chosen)


def _spread(cfg: SynthConfig, split: int, total: int | None, pairs: list[tuple[int, int]], default: int) -> list[int]:
    """Images per (identity, camera) pair: ``default`` each, or ``total`` spread as evenly as
    possible (a seeded choice of pairs gets one more)."""
    if total is None:
        return [default] * len(pairs)
    base, extra = divmod(total, len(pairs))
    counts = [base] * len(pairs)
    for i in _rng(cfg, _COUNTS, split).permutation(len(pairs))[:extra]:
        counts[int(i)] += 1
    return counts


def _query_pairs(cfg: SynthConfig, pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The (identity, camera) pairs that get a query: all, or ``query_images`` of them, one
    seeded pair per identity first so that every test identity keeps a query."""
    if cfg.query_images is None:
        return set(pairs)
    order = [pairs[int(i)] for i in _rng(cfg, _COUNTS, 2).permutation(len(pairs))]
    chosen: dict[tuple[int, int], None] = {}
    seen: set[int] = set()
    for pair in order:  # first pair of each identity, in the seeded order
        if pair[0] not in seen:
            seen.add(pair[0])
            chosen[pair] = None
    for pair in order:
        if len(chosen) >= cfg.query_images:
            break
        chosen.setdefault(pair, None)
    return set(chosen)


def plan(cfg: SynthConfig) -> list[PlannedImage]:
    """Every image of the dataset with its Market-1501 file name."""
    train, test = split_identities(cfg)
    raw: list[tuple[str, int, int, tuple[int, int], tuple[int, ...]]] = []
    train_pairs = [(pid, cam) for pid in train for cam in _cameras_of(cfg, pid)]
    for (pid, cam), count in zip(train_pairs, _spread(cfg, 0, cfg.train_images, train_pairs, cfg.images_per_camera), strict=True):
        raw += [("train", pid, cam, (_IDENTITY, pid), (_IMAGE, pid, cam, k)) for k in range(count)]
    test_pairs = [(pid, cam) for pid in test for cam in _cameras_of(cfg, pid)]
    with_query = _query_pairs(cfg, test_pairs)
    for (pid, cam), count in zip(test_pairs, _spread(cfg, 1, cfg.gallery_images, test_pairs, cfg.images_per_camera), strict=True):
        if (pid, cam) in with_query:
            raw.append(("query", pid, cam, (_IDENTITY, pid), (_IMAGE, pid, cam, count)))
        raw += [("gallery", pid, cam, (_IDENTITY, pid), (_IMAGE, pid, cam, k)) for k in range(count)]
    for i in range(cfg.num_distractors):
        cam = int(_rng(cfg, _DISTRACTOR, i, 0).integers(0, cfg.num_cameras))
        raw.append(("gallery", 0, cam, (_DISTRACTOR, i), (_DISTRACTOR, i, 1)))
    for i in range(cfg.num_junk):
        cam = int(_rng(cfg, _JUNK, i, 0).integers(0, cfg.num_cameras))
        raw.append(("gallery", -1, cam, (0, 0), (_JUNK, i, 1)))
    frame_rng = _rng(cfg, _FRAMES)
    frames = [0] * cfg.num_cameras
    jobs = []
    for split, pid, cam, who, key in raw:
        frames[cam] += int(frame_rng.integers(1, 60))
        name = f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam + 1}s1_{frames[cam]:06d}_01.jpg"
        jobs.append(PlannedImage(f"{SPLIT_DIRS[split]}/{name}", pid, cam, who, key))
    return jobs


@lru_cache(maxsize=64)
def _camera(cfg: SynthConfig, cam: int) -> tuple[Camera, Image.Image]:
    camera = sample_camera(_rng(cfg, _CAMERA, cam), cfg.difficulty)
    return camera, render_background(camera, cfg.height, cfg.width, _rng(cfg, _BACKGROUND, cam))


@lru_cache(maxsize=4096)
def _identity(cfg: SynthConfig, kind: int, index: int) -> Identity:
    """Identity ``(kind, index)``: its own draw, dressed in one of ``cfg.outfits`` shared outfits when set
    (the outfit is drawn from its own streams, so without outfits every other draw is as before)."""
    person = sample_identity(_rng(cfg, kind, index))
    if cfg.outfits is None:
        return person
    rng = _rng(cfg, _WEARS, kind, index)
    outfit = sample_identity(_rng(cfg, _OUTFIT, int(rng.integers(cfg.outfits))))
    return wear(person, outfit, rng)


@lru_cache(maxsize=4096)
def _fabric(cfg: SynthConfig, kind: int, index: int) -> Fabric | None:
    """The cloth texture of identity ``(kind, index)`` (own stream: texture 0 leaves every other draw as is)."""
    return sample_fabric(_rng(cfg, _FABRIC, kind, index), cfg.texture) if cfg.texture > 0 else None


def render_job(cfg: SynthConfig, job: PlannedImage) -> bytes:
    """PNG bytes of one planned image."""
    camera, background = _camera(cfg, job.cam)
    rng = _rng(cfg, *job.key)
    if job.pid < 0:
        pixels = render_junk(camera, background, cfg.height, cfg.width, rng)
    else:
        pixels = render_image(_identity(cfg, *job.who), camera, background, cfg.height, cfg.width, rng, _fabric(cfg, *job.who))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _render_many(cfg: SynthConfig, jobs: list[PlannedImage]) -> list[bytes]:
    return [render_job(cfg, job) for job in jobs]


def _rendered(cfg: SynthConfig, jobs: list[PlannedImage], workers: int) -> Iterable[tuple[PlannedImage, bytes]]:
    if workers <= 1:
        for job in jobs:
            yield job, render_job(cfg, job)
        return
    chunks = [jobs[i : i + 64] for i in range(0, len(jobs), 64)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for chunk, blobs in zip(chunks, pool.map(_render_many, [cfg] * len(chunks), chunks), strict=True):
            yield from zip(chunk, blobs, strict=True)


def _counts(jobs: list[PlannedImage]) -> dict[str, int]:
    split_of = {v: k for k, v in SPLIT_DIRS.items()}
    counts: dict[str, Any] = {f"{s}_images": 0 for s in SPLIT_DIRS}
    ids: dict[str, set[int]] = {s: set() for s in SPLIT_DIRS}
    for job in jobs:
        split = split_of[job.relpath.split("/", 1)[0]]
        counts[f"{split}_images"] += 1
        if job.pid > 0:
            ids[split].add(job.pid)
    counts.update({f"{s}_ids": len(v) for s, v in ids.items()})
    counts["distractors"] = sum(job.pid == 0 for job in jobs)
    counts["junk"] = sum(job.pid < 0 for job in jobs)
    return counts


def _existing(out_dir: Path, cfg: SynthConfig) -> bool:
    """True when ``out_dir`` already holds this dataset; raise when it holds anything else."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise MetricAttackError(f"synthetic output {out_dir} is a file; expected a directory (or a new path)")
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        if any(out_dir.iterdir()):
            raise MetricAttackError(f"synthetic output {out_dir} is not empty and holds no {MANIFEST}; choose a new or empty directory")
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MetricAttackError(f"{manifest_path} is unreadable ({exc}); delete {out_dir} and generate again") from exc
    wanted = cfg.record()
    if manifest.get("config") != wanted or manifest.get("generator_version") != GENERATOR_VERSION:
        old = dict(manifest.get("config") or {}, generator_version=manifest.get("generator_version"))
        new = dict(wanted, generator_version=GENERATOR_VERSION)
        diff = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} wanted" for k in sorted(new) if old.get(k) != new.get(k))
        raise MetricAttackError(f"{out_dir} holds a different synthetic dataset ({diff}); use another --out or delete it")
    missing = [rel for rel in manifest.get("files", {}) if not (out_dir / rel).is_file()]
    if missing:
        raise MetricAttackError(f"{out_dir} is incomplete ({len(missing)} files missing, e.g. {missing[0]}); delete it")
    return True


def generate(out_dir: Path | str, cfg: SynthConfig, *, workers: int = 1, progress: bool = False) -> Path:
    """Write the dataset of ``cfg`` to ``out_dir`` (Market-1501 layout) and return ``out_dir``.

    Images are lossless PNG; same config ⇒ same bytes, whatever ``workers``. A directory
    that already holds this exact dataset is returned as is; one that holds anything else
    raises :class:`MetricAttackError`, and so does an unwritable location, before any image is
    drawn. The dataset is built in a temporary sibling and renamed into place, so an interrupted
    run leaves nothing half-written; the temporary folder of a killed run is removed by the next.
    ``progress``: report the images written (:mod:`metricattack.progress`).
    """
    out_dir = Path(out_dir)
    if _existing(out_dir, cfg):
        return out_dir
    check_writable("output folder", out_dir)
    remove_leftovers(out_dir.parent, prefix=f".{out_dir.name}.", recursive=False)  # of a killed earlier run
    jobs = plan(cfg)
    with atomic_dir(out_dir) as tmp:
        for sub in SPLIT_DIRS.values():
            (tmp / sub).mkdir()
        files: dict[str, str] = {}
        stream = _rendered(cfg, jobs, workers)
        for job, blob in Progress(stream, desc="synth", total=len(jobs), unit="image", report=progress):
            (tmp / job.relpath).write_bytes(blob)
            files[job.relpath] = hashlib.sha256(blob).hexdigest()
        atomic_write_json(
            tmp / MANIFEST,
            {
                "format": "metricattack-synth",
                "generator_version": GENERATOR_VERSION,
                "config": cfg.record(),
                "seed": cfg.seed,
                "counts": _counts(jobs),
                "layout": "market1501",
                "environment": environment_versions(),
                "files": files,
            },
        )
    return out_dir


def read_manifest(root: Path | str) -> dict[str, Any]:
    """The ``synth.json`` manifest of a generated dataset."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise MetricAttackError(f"{path} does not exist; expected a dataset made by `metricattack synth`")
    return json.loads(path.read_text(encoding="utf-8"))
