"""Attack a dataset, write the adversarial copy (paper contribution 5) and evaluate it: the
``attack`` command's pipeline, also used by the benchmark and the defense.

:func:`export_attack` checks the whole request first (method × threat model × models × data ×
options, the output folder), then claims the folder and runs the engine (:mod:`.engine`), whose
batches the writer saves (:mod:`.writer`: layout, PNG, manifest, resumption), and finally the
evaluation (:mod:`.evaluation`), written as ``attack_results.json``:

* ``attack`` (the spec with the method's resolved options), ``threat_model``, ``mode``,
  ``attacked_split``, ``metric``, ``models``, ``num_images``, ``num_attacked``;
* ``compute``: the precision and GPU switches the models ran with (:class:`~metricattack.compute.Compute`);
* ``linf_255``: measured L∞ on disk and in memory (bound ε);
* ``calls``: the method's cost per attacked image (forward / backward passes) and the images with
  a zero input gradient or left unchanged (also logged as warnings);
* ``evaluations``: one row per model (attacked ones white-box, ``eval_models`` black-box): clean
  vs adversarial (disk, memory) CMC / mAP, mean true-positive distance, targeted success, and
  ``notes`` (an adversarial mAP above the clean one, with its measured reasons);
* ``chance`` (the expected CMC / mAP of a random ranking), ``dataset``, ``output``, ``versions``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compute import Compute, active
from ..data.layouts import dataset_fingerprint
from ..data.loading import read_image
from ..data.types import ReIDDataset
from ..distributed import barrier, is_main_process, rank_and_world
from ..errors import MetricAttackError
from ..evaluation.chance import dataset_chance
from ..evaluation.checks import require_valid_matches
from ..evaluation.features import extract_features
from ..evaluation.ranking import APConvention
from ..io import atomic_write_json, environment_versions, sha256_file, sha256_json
from ..metrics.distance import Metric
from ..outputs import claim_output
from ..overlap import DEFAULT_WORKERS, check_workers
from . import writer
from .engine import AttackPlan, FeatureModel, check_attack, clean_features, plan_attack
from .evaluation import call_summary, evaluate_attack_model
from .objectives import metrics_per_model
from .spec import AttackSpec, check_savable
from .threats import SplitFeatures
from .writer import FILE_NAMES, check_output_location

RESULTS_FORMAT = "metricattack.attack-results/2"
PROBE_IMAGES = 8  # clean images the determinism check passes twice through a model

__all__ = ["FILE_NAMES", "RESULTS_FORMAT", "ModelEntry", "check_output_location", "export_attack"]


@dataclass
class ModelEntry:
    """A model with its metric and a provenance record (e.g. checkpoint path and SHA-256)."""

    model: nn.Module
    metric: Metric
    record: dict[str, Any] = field(default_factory=dict)


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
    compute: Compute | None = None,
    workers: int = DEFAULT_WORKERS,
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
        progress: report the batches (a bar on a terminal, else lines at a bounded rate: :mod:`metricattack.progress`).
        on_batch: called with the batch number after each batch is completely written.
        compute: precision and GPU switches of every model call (:mod:`metricattack.compute`; default:
            the active one, fp32 outside a run that activated another); recorded in the run identity when not the default, and always in the results.
        workers: host threads (:mod:`metricattack.overlap`) that decode the next batches and write
            the previous ones (PNG, SHA-256, records; the image files' work in host processes)
            while the model attacks this one; 0: one thread, read → attack → write in turn. The
            output is the same byte for byte.

    Returns the content of ``attack_results.json`` (also written, by rank 0).
    """
    out = Path(out)
    if file_names not in FILE_NAMES:
        raise MetricAttackError(f"unknown file_names {file_names!r}; expected one of {', '.join(FILE_NAMES)}")
    check_savable(spec, "eps")
    check_workers(workers)
    models = [e.model for e in attack_models]
    rule = check_attack(models, threat, spec)
    require_valid_matches(dataset)
    rule.select(dataset, spec.seed)  # labels only: a threat model that cannot attack this data fails here
    check_output_location(out, dataset.root)
    metrics_per_model(models, [e.metric for e in attack_models])
    everyone = [*attack_models, *eval_models]
    metrics_per_model([e.model for e in everyone], [e.metric for e in everyone])
    fingerprint = dataset_fingerprint(dataset)
    identity_fields = {
        "attack": spec.resolved(),
        "threat_model": threat,
        "metric": metric_record or {},
        "models": [e.record for e in attack_models],
        "dataset_fingerprint": fingerprint,
        "batch_size": batch_size,
        "world_size": rank_and_world()[1],
        "file_names": file_names,
    }
    compute = compute or active()
    if compute.key():  # the default adds nothing: runs made before precision existed resume
        identity_fields["compute"] = compute.key()
    identity = {**identity_fields, "key": sha256_json(identity_fields)}

    training = [e.model.training for e in everyone]
    with claim_output(out, "attack"), compute.applied([e.model for e in everyone]):
        writer.claim_run(out, identity)
        try:
            for e in everyone:
                e.model.eval()
            features = clean_features([e.model for e in everyone], dataset, batch_size=batch_size, device=device, workers=workers)
            plan = plan_attack(models, [e.metric for e in attack_models], dataset, threat, spec, features[: len(models)])
            feature_models = [FeatureModel(e.model, f.of(plan.split)) for e, f in zip(everyone, features, strict=True)]
            writer.write_attack(
                out,
                plan,
                spec,
                dataset.root,
                feature_models,
                batch_size=batch_size,
                device=device,
                file_names=file_names,
                workers=workers,
                progress=progress,
                on_batch=on_batch,
            )
            barrier()
            return _finish(
                out,
                dataset,
                plan,
                spec,
                everyone,
                len(attack_models),
                features,
                identity,
                batch_size=batch_size,
                device=device,
                ap=ap,
                workers=workers,
            )
        finally:
            for e, was_training in zip(everyone, training, strict=True):
                e.model.train(was_training)


def _finish(
    out: Path,
    dataset: ReIDDataset,
    plan: AttackPlan,
    spec: AttackSpec,
    everyone: Sequence[ModelEntry],
    num_attack: int,
    features: Sequence[SplitFeatures],
    identity: dict[str, Any],
    *,
    batch_size: int,
    device: str | torch.device,
    ap: APConvention,
    workers: int,
) -> dict[str, Any]:
    """Gather the batch records, copy the other splits, write the manifest, evaluate, write the results."""
    records = writer.gather_batch_records(out, len(plan.records), len(everyone))
    files = writer.write_other_splits(out, dataset, plan.split, identity["file_names"], records.checksums)
    writer.write_manifest(
        out,
        {
            "source": {
                "name": dataset.name,
                "root": str(dataset.root),
                "fingerprint": identity["dataset_fingerprint"],
                "split_dirs": dataset.split_dirs,
            },
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
            "files": files,
        },
    )
    adv_records = writer.adversarial_records(out, dataset, plan.records, identity["file_names"])
    active = plan.active
    calls = call_summary(records.counts, active, records.linf_memory, log=is_main_process())
    probe = torch.stack([read_image(r.path) for r in plan.records[:PROBE_IMAGES]]).to(device)
    attacked = torch.nonzero(active).flatten().tolist()
    evaluations = []
    for m, entry in enumerate(everyone):
        disk = features[m].of(plan.split).clone()  # unattacked files hold the clean pixels
        if attacked:
            chosen = [adv_records[i] for i in attacked]
            disk[attacked] = extract_features(entry.model, chosen, batch_size=batch_size, device=device, progress=False, workers=workers)
        evaluations.append(
            evaluate_attack_model(
                entry.model,
                entry.metric,
                entry.record,
                white_box=m < num_attack,
                dataset=dataset,
                threat=plan.threat,
                targets=plan.targets,
                clean=features[m],
                memory=records.features[m],
                disk=disk,
                calls=calls,
                probe_images=probe,
                ap=ap,
                log=is_main_process(),
            )
        )
    disk_linf = writer.measured_linf(plan.records, adv_records)
    results = {
        "format": RESULTS_FORMAT,
        "threat_model": identity["threat_model"],
        "mode": plan.threat.mode,
        "attacked_split": plan.split,
        "attack": identity["attack"],
        "metric": identity["metric"],
        "models": identity["models"],
        "ap_convention": ap,
        "compute": Compute.model_validate(identity.get("compute", {})).record(),
        "num_images": len(plan.records),
        "num_attacked": int(active.sum()),
        "linf_255": {
            "bound": spec.eps,
            "max_disk": float(disk_linf.max()),
            "mean_disk_attacked": float(disk_linf[active].mean()) if active.any() else 0.0,
            "max_memory": float(records.linf_memory.max()),
            "max_disk_unattacked": float(disk_linf[~active].max()) if (~active).any() else 0.0,
        },
        "calls": calls,
        "evaluations": evaluations,
        "chance": dataset_chance(dataset, ap).to_dict(),
        "dataset": {"name": dataset.name, "root": str(dataset.root), "fingerprint": identity["dataset_fingerprint"]},
        "output": str(out),
        "manifest_sha256": sha256_file(out / "manifest.json"),
        "versions": environment_versions(),
    }
    if is_main_process():
        atomic_write_json(out / "attack_results.json", results)
    return results
