"""Steps 2 and 3a of the metric-preserving defense: attack the training set, merge it with the clean one.

**Attack** (:func:`attack_training_set`). The paper treats every training image as the probe
in turn; in practice every training image of identity k is pushed away from the clean
features of the training images of identity k. This reuses the attack export unchanged: it
attacks a *view* of the dataset whose query and gallery are both the training split, with
the non-targeted ``gallery`` setting, so each image's reference set is every training image
of its identity -- its own clean feature included (that term is 1/K of the loss for an
identity with K images and also pushes the image away from its own clean feature). Reference
features come from F on the clean images, once; images of many identities share a batch.
The output is an adversarial dataset like any other (PNG at native size, on the 1/255 grid,
within ε, ``manifest.json``, ``attack_results.json``, resumable per batch).

**Merge** (:func:`merge_training_sets`). A ``folder``-layout dataset whose
``bounding_box_train/`` holds every clean training image (Y) and its adversarial version
(Y_adv) with the same identity and camera, copied (never hard-linked: the source stays untouched) under
generated Market-1501 names (``0002_c1_y000017.jpg`` clean, ``0002_c1_a000017.png``
adversarial), so the normal trainer consumes it unchanged. Query and gallery are copied from
the source (a ``folder`` dataset needs them; training does not read them). ``merge.json``
records both fingerprints and the file mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.export import ModelEntry, export_attack
from ..data.layouts import dataset_fingerprint, load_dataset
from ..data.types import DISTRACTOR_PID, JUNK_PID, ImageRecord, ReIDDataset
from ..errors import DatasetError, MetricAttackError
from ..io import atomic_write_json, copy_file, environment_versions, sha256_file
from ..metrics.distance import build_metric
from .config import TrainingSetAttack

MERGE_FORMAT = "metricattack.merged-training-set/1"


def identity_records(records: tuple[ImageRecord, ...] | list[ImageRecord]) -> tuple[ImageRecord, ...]:
    """Training records that carry an identity (junk and distractors dropped, as training does)."""
    return tuple(r for r in records if r.pid not in (JUNK_PID, DISTRACTOR_PID))


def training_view(dataset: ReIDDataset) -> ReIDDataset:
    """``dataset`` with query = gallery = its identity-bearing training images and no train split."""
    train = identity_records(dataset.train)
    if len({r.pid for r in train}) < 2:
        raise DatasetError(f"{dataset.name} at {dataset.root}: the training split needs at least 2 identities to be attacked")
    folder = dataset.split_dirs.get("train", "")
    return ReIDDataset(f"{dataset.name}-train", dataset.root, (), train, train, {"train": folder, "query": folder, "gallery": folder})


def attack_training_set(
    model: nn.Module,
    dataset: ReIDDataset,
    out: Path,
    settings: TrainingSetAttack,
    *,
    model_record: dict[str, Any],
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Write Y_adv (the attacked training split of ``dataset``, F = ``model``) to ``out``.

    Returns the attack results (``attack_results.json``); resumes an interrupted run.
    """
    view = training_view(dataset)
    metric = build_metric(settings.metric)
    entry = ModelEntry(model, metric, model_record)
    return export_attack(
        [entry],
        view,
        Path(out),
        settings.attack,
        "gallery",
        metric_record={"name": settings.metric},
        batch_size=settings.batch_size,
        device=device,
        progress=progress,
    )


def adversarial_training_records(dataset: ReIDDataset, adv_dir: Path) -> tuple[ImageRecord, ...]:
    """Y_adv records in the order of :func:`identity_records` (same pid and camid), checked on disk."""
    manifest_path = Path(adv_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise MetricAttackError(f"{adv_dir} holds no finished training-set attack (manifest.json missing); run the attack stage first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    attacked = {f["source"]: f["output"] for f in manifest["files"] if f["attacked"]}
    out = []
    for record in identity_records(dataset.train):
        rel = record.path.relative_to(dataset.root).as_posix()
        if rel not in attacked:
            raise MetricAttackError(f"{manifest_path} has no adversarial version of training image {rel}; it belongs to another dataset")
        out.append(ImageRecord(Path(adv_dir) / attacked[rel], record.pid, record.camid))
    return tuple(out)


def _pid_text(pid: int) -> str:
    return "-1" if pid == JUNK_PID else f"{pid:04d}"


def merge_training_sets(dataset: ReIDDataset, adv_dir: Path, out: Path) -> Path:
    """Write the merged training set Y ∪ Y_adv (see module docstring) to ``out``; return ``out``.

    Idempotent: a finished merge (``merge.json`` present) is returned as is; an interrupted
    one is completed.
    """
    out = Path(out)
    record_path = out / "merge.json"
    if record_path.is_file():
        return out
    adv_manifest = Path(adv_dir) / "manifest.json"
    clean = identity_records(dataset.train)
    adversarial = adversarial_training_records(dataset, adv_dir)
    mapping = []
    for i, (y, y_adv) in enumerate(zip(clean, adversarial, strict=True)):
        stem = f"{_pid_text(y.pid)}_c{y.camid + 1}"
        pair = {
            "clean": f"bounding_box_train/{stem}_y{i:06d}{y.path.suffix.lower()}",
            "adversarial": f"bounding_box_train/{stem}_a{i:06d}.png",
        }
        copy_file(y.path, out / pair["clean"])
        copy_file(y_adv.path, out / pair["adversarial"])
        mapping.append({**pair, "source": y.path.relative_to(dataset.root).as_posix(), "source_adversarial": y_adv.path.name})
    for split, folder, tag in (("query", "query", "q"), ("gallery", "bounding_box_test", "g")):
        for i, r in enumerate(dataset.split(split)):
            copy_file(r.path, out / folder / f"{_pid_text(r.pid)}_c{r.camid + 1}_{tag}{i:06d}{r.path.suffix.lower()}")
    merged = load_dataset("folder", out)
    atomic_write_json(
        record_path,
        {
            "format": MERGE_FORMAT,
            "source": {"name": dataset.name, "root": str(dataset.root), "fingerprint": dataset_fingerprint(dataset)},
            "adversarial": {"root": str(Path(adv_dir).resolve()), "manifest_sha256": sha256_file(adv_manifest)},
            "merged_fingerprint": dataset_fingerprint(merged),
            "train_images": {"clean": len(clean), "adversarial": len(adversarial), "total": len(merged.train)},
            "versions": environment_versions(),
            "files": mapping,
        },
    )
    return out
