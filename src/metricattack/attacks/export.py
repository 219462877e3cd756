"""Write an adversarial copy of a dataset to disk (paper contribution 5) and evaluate it.

Layout of ``out`` (readable by ``load_dataset("folder", out)`` and any Market-1501 parser):

* the attacked split, every image as a lossless PNG at native resolution and the same relative
  path; pixels on the 1/255 grid, within ⌊ε⌋/255 of the original and inside [0,1] (see
  :func:`~.ops.quantize`); images that are not attacked (junk, distractors, ...) are
  written unchanged as PNG too. File names (``file_names``): ``"source"`` (default) keeps every
  name *with its extension*, so ``0002_c1s1_000451_03.jpg`` holds PNG data — the usual
  Market-1501 readers list ``*.jpg`` and decode by content (PIL, OpenCV, torchvision), so they
  load the attacked copy unchanged; ``"png"`` renames to ``0002_c1s1_000451_03.png``;
* the other splits copied with their original names (copies, never hard links: changing the
  adversarial dataset must not change the source; reflinks where the file system has them);
* ``manifest.json``: attack spec (method options resolved), threat model, metric, models (checkpoint SHA-256), seed, software
  versions, source dataset fingerprint, and per file ``source → output`` name and SHA-256;
* ``attack_results.json``: clean vs adversarial CMC/mAP (images reloaded from disk *and* the
  in-memory float images), mean true-positive distance, targeted success, measured L∞, and
  the chance level (expected CMC/mAP of a random ranking, :mod:`~metricattack.evaluation.chance`),
  and per attacked image the method's cost (forward / backward passes) and zero gradients
  (``calls``; images whose gradient was zero are also logged as a warning);
* ``.attack/``: the run identity and per-batch completion records (resumption);
* ``.metricattack.lock``: the lock one run at a time holds (:mod:`metricattack.outputs`).

Resumption: a batch counts as done when its JSON record exists (written last, atomically,
after its PNGs and its in-memory feature record). A re-run with the same run identity skips
done batches; the batches are deterministic, so the result equals an uninterrupted run. A run
with another identity is refused while the folder holds finished batches of the first; the
record of a run that failed before finishing any batch (e.g. on a truncated source image)
does not block the next one. A second run on the same folder while one is running is refused
with the first one's pid, host and start time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..data.layouts import dataset_fingerprint
from ..data.loading import read_image, save_png
from ..data.types import SPLITS, ImageRecord, ReIDDataset
from ..distributed import barrier, is_main_process, rank_and_world
from ..errors import MetricAttackError
from ..evaluation.chance import dataset_chance
from ..evaluation.checks import require_valid_matches
from ..evaluation.features import evaluate_split_features, extract_features
from ..evaluation.ranking import APConvention
from ..io import atomic_path, atomic_write_json, copy_file, environment_versions, sha256_file, sha256_json
from ..metrics.distance import Metric
from ..outputs import check_output_folder, claim_output
from ..wording import counted
from .objectives import metrics_per_model
from .ops import linf_255, quantize
from .runner import (
    attack_batches,
    check_attack,
    clean_features,
    mean_true_positive_distance,
    plan_attack,
    targeted_success,
    true_positive_pairs,
)
from .spec import AttackSpec, check_savable
from .threats import SplitFeatures

MANIFEST_FORMAT = "metricattack.adversarial-dataset/2"
RESULTS_FORMAT = "metricattack.attack-results/2"
COUNTS = ("forward", "backward", "zero_gradient")
STATE_DIR = ".attack"
FILE_NAMES = ("source", "png")

logger = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    """A model with its metric and a provenance record (e.g. checkpoint path and SHA-256)."""

    model: nn.Module
    metric: Metric
    record: dict[str, Any] = field(default_factory=dict)


def is_attack_run(folder: Path) -> bool:
    """True when ``folder`` holds an attack run (finished or not) of this package."""
    return (Path(folder) / STATE_DIR / "run.json").is_file()


def check_output_location(out: Path, source_root: Path, option: str = "output folder") -> None:
    """Refuse an output folder inside the source dataset, a file, an unwritable location, or a
    non-empty folder that holds no attack run (:func:`metricattack.outputs.check_output_folder`)."""
    check_output_folder(option, out, command="attack", is_previous=is_attack_run, datasets=[source_root])


def output_name(rel: Path, attacked: bool, file_names: str = "source") -> Path:
    """Relative output path: the source's, or for attacked images with ``file_names="png"`` the
    same stem with a ``.png`` extension (the content is PNG either way)."""
    return rel.with_suffix(".png") if attacked and file_names == "png" else rel


def _relative(record: ImageRecord, root: Path) -> Path:
    try:
        return record.path.relative_to(root)
    except ValueError:
        raise MetricAttackError(f"image {record.path} is not inside the dataset root {root}; cannot mirror the layout") from None


def _claim_run(out: Path, identity: dict[str, Any]) -> None:
    """Record the run identity, or check it equals the one of the run being resumed.

    The caller holds the folder's lock (:func:`~metricattack.outputs.claim_output`). A recorded
    run of another identity blocks only when it finished some work (batch records or a
    manifest); the record of a run that failed before that is replaced. Every rank looks before
    rank 0 writes (first barrier): a rank that found the file rank 0 had just written would skip
    the barrier and deadlock the others in their next collective.
    """
    path = out / STATE_DIR / "run.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    barrier()
    if previous is not None and previous.get("key") == identity["key"]:
        return
    if previous is not None:
        done = sum(1 for _ in (out / STATE_DIR / "batches").glob("*/*.json"))
        if done or (out / "manifest.json").exists():
            raise MetricAttackError(
                f"output folder {out} holds a different attack run ({done} batches done; other options, models, data or "
                f"batch size: {_identity_difference(previous, identity)}); choose another --out or delete that folder"
            )
    if is_main_process():
        atomic_write_json(path, identity)
    barrier()


def _identity_difference(previous: dict[str, Any], identity: dict[str, Any]) -> str:
    """The fields in which two run identities differ, for the refusal message."""
    fields = sorted(k for k in set(previous) | set(identity) if k != "key" and previous.get(k) != identity.get(k))
    return ", ".join(fields) or "unknown fields"


def _batch_dir(out: Path) -> Path:
    rank, world = rank_and_world()
    return out / STATE_DIR / "batches" / f"rank{rank}-of{world}"


@dataclass(frozen=True)
class BatchRecords:
    """What the batch records of a finished run hold, in split order.

    Attributes:
        features: per evaluated model, in-memory adversarial features ``[N, D]``.
        linf_memory: ``[N]`` in-memory L∞ (0..255 units).
        counts: ``forward`` / ``backward`` / ``zero_gradient`` → ``[N]`` per-image call counts.
        checksums: output file → SHA-256.
    """

    features: list[torch.Tensor]
    linf_memory: torch.Tensor
    counts: dict[str, torch.Tensor]
    checksums: dict[str, str]


def _gather_batch_records(out: Path, count: int, num_eval: int) -> BatchRecords:
    """The batch records of ``out`` (:class:`BatchRecords`) for a split of ``count`` images."""
    feats: list[dict[int, torch.Tensor]] = [{} for _ in range(num_eval)]
    linf: dict[int, float] = {}
    counts: dict[str, dict[int, int]] = {name: {} for name in COUNTS}
    checksums: dict[str, str] = {}
    for record in sorted((out / STATE_DIR / "batches").glob("*/*.json")):
        info = json.loads(record.read_text(encoding="utf-8"))
        tensors = load_file(str(record.with_suffix(".safetensors")))
        indices = tensors["indices"].tolist()
        for m in range(num_eval):
            feats[m].update(zip(indices, tensors[f"features.{m}"], strict=True))
        linf.update(zip(indices, tensors["linf_memory"].tolist(), strict=True))
        for name in COUNTS:
            counts[name].update(zip(indices, tensors[f"calls.{name}"].tolist(), strict=True))
        checksums.update(info["files"])
    if len(linf) != count:
        raise MetricAttackError(f"{out}: batch records cover {len(linf)} of {count} images; re-run the attack to finish it")
    order = range(count)
    return BatchRecords(
        [torch.stack([f[i] for i in order]) for f in feats],
        torch.tensor([linf[i] for i in order]),
        {name: torch.tensor([c[i] for i in order], dtype=torch.long) for name, c in counts.items()},
        checksums,
    )


def measured_linf(original: Sequence[ImageRecord], adversarial: Sequence[ImageRecord]) -> torch.Tensor:
    """Per-image L∞ ``[N]`` between image files decoded from disk, in exact 0..255 integer steps."""
    out = torch.empty(len(original))
    for i, (a, b) in enumerate(zip(original, adversarial, strict=True)):
        out[i] = (read_image(b.path).mul(255).round() - read_image(a.path).mul(255).round()).abs().max()
    return out


def export_attack(
    attack_models: Sequence[ModelEntry],
    dataset: ReIDDataset,
    out: str | Path,
    spec: AttackSpec,
    threat: str = "gallery",
    *,
    eval_models: Sequence[ModelEntry] = (),
    metric_record: dict[str, Any] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    ap: APConvention = "market",
    file_names: str = "source",
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Attack ``dataset`` with ``attack_models``, write the adversarial dataset to ``out``, evaluate it.

    Args:
        attack_models: one entry per model of the (ensemble) attack; each model's metric is
            used for its loss and its white-box evaluation.
        threat: a :data:`~.threats.THREATS` name (the method × threat model pair, the models and
            the data are checked before the output folder is claimed).
        eval_models: further (black-box) models evaluated on the result.
        metric_record: provenance of the metric option (name, file, checksum).
        file_names: ``"source"`` (keep each name and extension) or ``"png"`` (``.png`` extension).
        on_batch: called with the batch number after each batch is completely written.

    Returns the content of ``attack_results.json`` (also written, by rank 0).
    """
    out = Path(out)
    if file_names not in FILE_NAMES:
        raise MetricAttackError(f"unknown file_names {file_names!r}; expected one of {', '.join(FILE_NAMES)}")
    check_savable(spec, "eps")
    models = [e.model for e in attack_models]
    rule = check_attack(models, threat, spec)
    require_valid_matches(dataset)
    rule.select(dataset, spec.seed)  # labels only: a threat model that cannot attack this data fails here
    check_output_location(out, dataset.root)
    metrics_per_model(models, [e.metric for e in attack_models])
    everyone = [*attack_models, *eval_models]
    metrics_per_model([e.model for e in everyone], [e.metric for e in everyone])
    rank, world = rank_and_world()
    fingerprint = dataset_fingerprint(dataset)
    identity_fields = {
        "attack": spec.resolved(),
        "threat_model": threat,
        "metric": metric_record or {},
        "models": [e.record for e in attack_models],
        "dataset_fingerprint": fingerprint,
        "batch_size": batch_size,
        "world_size": world,
        "file_names": file_names,
    }
    identity = {**identity_fields, "key": sha256_json(identity_fields)}

    training = [e.model.training for e in everyone]
    with claim_output(out, "attack"):
        _claim_run(out, identity)
        try:
            for e in everyone:
                e.model.eval()
            features = clean_features([e.model for e in everyone], dataset, batch_size=batch_size, device=device)
            plan = plan_attack(models, [e.metric for e in attack_models], dataset, threat, spec, features[: len(models)])
            _write_batches(
                plan,
                spec,
                out,
                dataset,
                everyone,
                [_attacked_split_features(f, plan) for f in features],
                batch_size=batch_size,
                device=device,
                file_names=file_names,
                progress=progress,
                on_batch=on_batch,
            )
            barrier()
            results = _finish(
                out,
                dataset,
                plan,
                spec,
                everyone,
                len(attack_models),
                features,
                identity,
                fingerprint,
                batch_size=batch_size,
                device=device,
                ap=ap,
            )
        finally:
            for e, was_training in zip(everyone, training, strict=True):
                e.model.train(was_training)
        return results


def _attacked_split_features(features: SplitFeatures, plan) -> torch.Tensor:
    """Clean features ``[N, D]`` of the split ``plan`` attacks."""
    return features.query if plan.split == "query" else features.gallery


def _write_batches(
    plan,
    spec: AttackSpec,
    out: Path,
    dataset: ReIDDataset,
    everyone: Sequence[ModelEntry],
    clean_rows: Sequence[torch.Tensor],
    *,
    batch_size: int,
    device,
    file_names: str,
    progress: bool,
    on_batch: Callable[[int], None] | None,
) -> None:
    batch_dir = _batch_dir(out)

    def done(number: int) -> bool:
        return (batch_dir / f"{number:06d}.json").is_file()

    batches = attack_batches(plan, spec, batch_size=batch_size, device=device, skip=done)
    finished = sum(done(number) for number in range(len(batches)))
    bar = tqdm(
        batches,
        desc=f"attack {plan.split}",
        unit="batch",
        total=len(batches),
        initial=finished,
        disable=not (progress and is_main_process()),
        leave=False,
    )
    for batch in bar:
        pixels = quantize(batch.adversarial, batch.clean, spec.eps).cpu()
        files: dict[str, str] = {}
        for i, index in enumerate(batch.indices.tolist()):
            rel = output_name(_relative(plan.records[index], dataset.root), True, file_names)
            save_png(pixels[i].float() / 255.0, out / rel)
            files[rel.as_posix()] = sha256_file(out / rel)
        tensors = {"indices": batch.indices.clone(), "linf_memory": linf_255(batch.adversarial, batch.clean).cpu().contiguous()}
        tensors.update({f"calls.{name}": getattr(batch.counts, name).clone() for name in COUNTS})
        # images the attack leaves alone keep their pixels, hence their clean features (not recomputed:
        # distractors and junk are most of a Market-like gallery)
        active = plan.active[batch.indices]
        with torch.no_grad():
            for m, entry in enumerate(everyone):
                feats = clean_rows[m][batch.indices].clone()
                if active.any():
                    feats[active] = entry.model(batch.adversarial[active.to(batch.adversarial.device)]).float().cpu()
                tensors[f"features.{m}"] = feats.contiguous()
        stem = batch_dir / f"{batch.number:06d}"
        with atomic_path(stem.with_suffix(".safetensors")) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(stem.with_suffix(".json"), {"batch": batch.number, "files": files})
        if on_batch is not None:
            on_batch(batch.number)


def _finish(
    out: Path,
    dataset: ReIDDataset,
    plan,
    spec: AttackSpec,
    everyone: Sequence[ModelEntry],
    num_attack: int,
    features: Sequence[SplitFeatures],
    identity: dict[str, Any],
    fingerprint: str,
    *,
    batch_size: int,
    device,
    ap: APConvention,
) -> dict[str, Any]:
    records = _gather_batch_records(out, len(plan.records), len(everyone))
    memory_feats, linf_memory, checksums = records.features, records.linf_memory, records.checksums
    files = []
    for split in SPLITS:
        attacked = split == plan.split
        for record in dataset.split(split):
            rel = _relative(record, dataset.root)
            target = output_name(rel, attacked, identity["file_names"])
            if not attacked and is_main_process():
                copy_file(record.path, out / target)
            files.append({"split": split, "source": rel.as_posix(), "output": target.as_posix(), "attacked": attacked})
    barrier()
    adv_records = tuple(
        ImageRecord(out / output_name(_relative(r, dataset.root), True, identity["file_names"]), r.pid, r.camid) for r in plan.records
    )
    for entry in files:
        entry["sha256"] = checksums[entry["output"]] if entry["attacked"] else sha256_file(out / entry["output"])
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": {"name": dataset.name, "root": str(dataset.root), "fingerprint": fingerprint, "split_dirs": dataset.split_dirs},
        "attacked_split": plan.split,
        "encoding": "png",
        "file_names": identity["file_names"],
        "attack": identity["attack"],
        "threat_model": identity["threat_model"],
        "seed": spec.seed,
        "metric": identity["metric"],
        "models": identity["models"],
        "num_active": int(plan.active.sum()),
        "batch_size": identity["batch_size"],
        "world_size": identity["world_size"],
        "versions": environment_versions(),
        "files": files,
    }
    if is_main_process():
        atomic_write_json(out / "manifest.json", manifest)

    pairs = true_positive_pairs(dataset)
    evaluations = []
    attacked = torch.nonzero(plan.active).flatten().tolist()
    for m, model_entry in enumerate(everyone):
        disk = _attacked_split_features(features[m], plan).clone()  # unattacked files hold the clean pixels
        if attacked:
            chosen = [adv_records[i] for i in attacked]
            disk[attacked] = extract_features(model_entry.model, chosen, batch_size=batch_size, device=device, progress=False)
        evaluations.append(_evaluate_model(model_entry, m < num_attack, dataset, plan, features[m], memory_feats[m], disk, pairs, ap))
    disk_linf = measured_linf(plan.records, adv_records)
    active = plan.active
    results = {
        "format": RESULTS_FORMAT,
        "threat_model": identity["threat_model"],
        "mode": plan.threat.mode,
        "attacked_split": plan.split,
        "attack": identity["attack"],
        "metric": identity["metric"],
        "models": identity["models"],
        "ap_convention": ap,
        "num_images": len(plan.records),
        "num_attacked": int(active.sum()),
        "linf_255": {
            "bound": spec.eps,
            "max_disk": float(disk_linf.max()),
            "mean_disk_attacked": float(disk_linf[active].mean()) if active.any() else 0.0,
            "max_memory": float(linf_memory.max()),
            "max_disk_unattacked": float(disk_linf[~active].max()) if (~active).any() else 0.0,
        },
        "calls": call_summary(records.counts, active, linf_memory),
        "evaluations": evaluations,
        "chance": dataset_chance(dataset, ap).to_dict(),
        "dataset": {"name": dataset.name, "root": str(dataset.root), "fingerprint": fingerprint},
        "output": str(out),
        "manifest_sha256": sha256_file(out / "manifest.json"),
        "versions": environment_versions(),
    }
    if is_main_process():
        atomic_write_json(out / "attack_results.json", results)
    return results


def call_summary(counts: dict[str, torch.Tensor], active: torch.Tensor, linf_memory: torch.Tensor, examples: int = 10) -> dict[str, Any]:
    """What the method did to the attacked images (``active [N]``): mean and max forward / backward
    passes per image, the images whose input gradient was exactly zero at some step and those that
    did not move at all (in memory), each with a count and the first ``examples`` split positions.
    Logs a warning for each of the last two when it is not empty (a zero gradient is never silent)."""
    attacked = torch.nonzero(active).flatten()
    summary: dict[str, Any] = {}
    for name in ("forward", "backward"):
        values = counts[name][attacked].double()
        summary[name] = {"mean": float(values.mean()) if attacked.numel() else 0.0, "max": int(values.max()) if attacked.numel() else 0}
    flagged = {
        "zero_gradient": attacked[counts["zero_gradient"][attacked] > 0],
        "unmoved": attacked[linf_memory[attacked] == 0],
    }
    for name, where in flagged.items():
        summary[name] = {"images": int(where.numel()), "examples": where[:examples].tolist()}
    if flagged["zero_gradient"].numel():
        logger.warning(
            "the attack's input gradient was exactly zero at some step on %s (split positions %s%s); "
            "those steps did not move them (attack_results.json: calls.zero_gradient)",
            counted(int(flagged["zero_gradient"].numel()), "attacked image"),
            ", ".join(map(str, summary["zero_gradient"]["examples"])),
            ", ..." if flagged["zero_gradient"].numel() > examples else "",
        )
    if flagged["unmoved"].numel():
        logger.warning(
            "%s left unchanged by the attack (split positions %s%s; attack_results.json: calls.unmoved)",
            counted(int(flagged["unmoved"].numel()), "attacked image"),
            ", ".join(map(str, summary["unmoved"]["examples"])),
            ", ..." if flagged["unmoved"].numel() > examples else "",
        )
    return summary


def _evaluate_model(
    entry: ModelEntry,
    white_box: bool,
    dataset: ReIDDataset,
    plan,
    clean: SplitFeatures,
    memory: torch.Tensor,
    disk: torch.Tensor,
    pairs,
    ap: APConvention,
) -> dict[str, Any]:
    def split_feats(adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (adv, clean.gallery) if plan.split == "query" else (clean.query, adv)

    variants = {"clean": (clean.query, clean.gallery), "adversarial_disk": split_feats(disk), "adversarial_memory": split_feats(memory)}
    row: dict[str, Any] = {"model": entry.record, "white_box": white_box, "metric": entry.metric.name}
    for name, (q, g) in variants.items():
        ranking = evaluate_split_features(q, g, dataset, entry.metric, ap=ap)
        row[name] = {
            **ranking.to_dict(),
            "mean_true_positive_distance": mean_true_positive_distance(entry.metric, q, g, pairs),
        }
        if plan.targets is not None:
            row[name]["targeted"] = targeted_success(entry.metric, q, g, dataset, plan.targets)
    return row
