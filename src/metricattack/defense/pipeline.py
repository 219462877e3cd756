"""``run_defense``: any defense method (the paper's metric-preserving network or adversarial training), staged.

Stages and the folders they write under ``out``:

1. ``base``            -- the clean model F: trained with ``cfg.train`` into ``base/`` (or ``cfg.base_checkpoint``);
2. ``training_attack`` -- Y_adv: the training set attacked against F (``train_adv/``, an adversarial dataset);
3. ``merge``           -- Y ∪ Y_adv as a ``folder`` dataset (``merged/``, same pids, hard links);
4. ``retrain``         -- F_adv trained on the merged set with F's recipe (``defended_train/``): from F's
   initialisation (same seed) by default, or fine-tuned from F (``retrain``). Any other ``method``
   (:data:`~.methods.DEFENSES`) skips stages 2-3 and trains F_adv on Y with its adversarial batch objective instead;
5. ``finalise``        -- ``defended/model.safetensors``: F_adv as a normal checkpoint whose JSON ``meta.defense``
   says how it was made (method and its settings, fingerprints of the data, F's SHA-256);
6. ``evaluate``        -- ``defense_results.json``: clean mAP of F and F_adv, the gallery attacked against F
   (``transfer_gallery/<settings key>/``, evaluated on disk by both: the Table 5 cells), white-box adaptive gallery
   attacks against both models, and the robust evaluation of both (:func:`~.evaluation.robust_evaluations`).

The stages run in the package's stage cache (:class:`~metricattack.stages.StageCache`, one slot
per stage): each writes ``stages/<name>.json`` (its settings, key and outputs) when it finishes
and logs to ``logs/stages.jsonl``; a re-run skips finished stages and resumes the interrupted one
(training per epoch, attacks per batch). A finished stage made with other settings is refused,
except ``evaluate``, which is recomputed when its settings change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..attacks.engine import clean_features
from ..attacks.export import ModelEntry, export_attack
from ..data.layouts import dataset_fingerprint, load_dataset
from ..data.types import ReIDDataset
from ..distributed import resolve_device
from ..io import atomic_path, atomic_write_json, environment_versions, sha256_file, sha256_json
from ..metrics.distance import Metric, build_metric
from ..models.checkpoint import checkpoint_meta, load_model, save_checkpoint
from ..models.python_net import PythonNet
from ..models.weights import load_exact, read_state_dict
from ..progress import bars_allowed
from ..stages import StageCache, StageSpec
from ..training import train
from ..training.config import TrainConfig
from ..training.data import relabel
from ..training.trainer import build_model
from .config import DefenseConfig, EvaluationSection
from .evaluation import (
    ORIGINAL,
    TRANSFER,
    adaptive_attack_rows,
    adversarial_gallery_name,
    attacked_images,
    robust_evaluations,
    robust_spec,
    table5_cells,
)
from .methods import DEFENSES
from .training import train_defended
from .training_set_attack import adversarial_training_records, attack_training_set, merge_training_sets

_log = logging.getLogger(__name__)

RESULTS_FORMAT = "metricattack.defense-results/2"
STAGES = ("base", "training_attack", "merge", "retrain", "finalise", "evaluate")


def _train_settings(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.result_defining() | {"epochs": cfg.schedule.epochs}


def _with_data(cfg: TrainConfig, root: Path) -> TrainConfig:
    data = cfg.data.model_copy(update={"dataset": "folder", "root": Path(root)})
    return cfg.model_copy(update={"data": data})


def _source(cfg: DefenseConfig) -> ReIDDataset:
    return load_dataset(cfg.train.data.dataset, cfg.train.data.root)


def run_defense(cfg: DefenseConfig, out: str | Path, *, log: Callable[[str], None] = _log.info) -> dict[str, Any]:
    """Run (or resume) every stage; returns the defense results (also ``out/defense_results.json`` when evaluated).
    Everything runs at ``cfg.train.compute`` (precision: the trainings, attacks and evaluations; in the stage keys
    when not the default); progress bars as ``cfg.train.progress`` allows (:mod:`metricattack.progress`)."""
    with cfg.train.compute.activate(), bars_allowed(cfg.train.progress):
        return _run_defense(cfg, Path(out), log)


def _run_defense(cfg: DefenseConfig, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`run_defense` once its compute is active."""
    cache = StageCache(out, announce=lambda spec: log(f"defense stage {spec.kind} ..."))

    def stage(name: str, settings: dict[str, Any], work: Callable[[], dict[str, Any]], *, rerun_on_change: bool = False) -> dict[str, Any]:
        return cache.run_slot(StageSpec(name, name, settings), work, on_change="rerun" if rerun_on_change else "refuse")

    dataset = _source(cfg)
    fingerprint = dataset_fingerprint(dataset)
    device = str(resolve_device(cfg.train.device))

    def base_work() -> dict[str, Any]:
        if cfg.base_checkpoint is not None:
            path = Path(cfg.base_checkpoint)
        elif cfg.base_weights is not None:
            path = own_network_checkpoint(cfg.train, dataset, cfg.base_weights, out / "base" / "model.safetensors")
        else:
            path = train(cfg.train, out / "base")
        return {"checkpoint": str(Path(path).resolve()), "sha256": sha256_file(path)}

    if cfg.base_checkpoint is not None:
        checkpoint_meta(Path(cfg.base_checkpoint))  # a clear error when missing or not a checkpoint
        base_settings: dict[str, Any] = {"checkpoint": str(cfg.base_checkpoint), "sha256": sha256_file(cfg.base_checkpoint)}
    elif cfg.base_weights is not None:
        base_settings = {"model": cfg.train.model.model_dump(mode="json"), "weights": sha256_file(cfg.base_weights), "data": fingerprint}
    else:
        base_settings = {"train": _train_settings(cfg.train), "data": fingerprint}
    base = stage("base", base_settings, base_work)
    base_ckpt = Path(base["checkpoint"])
    base_record = {"name": "F", "checkpoint": str(base_ckpt), "sha256": base["sha256"]}

    data_record: dict[str, Any] = {"clean": {"name": dataset.name, "root": str(dataset.root), "fingerprint": fingerprint}}
    if cfg.method == "metric-preserving":
        attack_settings = {
            "attack": cfg.training_attack.model_dump(mode="json") | {"attack": cfg.training_attack.attack.resolved()},
            "base": base["sha256"],
            "data": fingerprint,
        }

        def attack_work() -> dict[str, Any]:
            model = load_model(base_ckpt, device=device)
            results = attack_training_set(model, dataset, out / "train_adv", cfg.training_attack, model_record=base_record, device=device)
            adv = adversarial_training_records(dataset, out / "train_adv")
            y_adv = ReIDDataset("y_adv", out / "train_adv", adv, (), ())
            white = results["evaluations"][0]
            return {
                "root": str((out / "train_adv").resolve()),
                "fingerprint": dataset_fingerprint(y_adv),
                "manifest_sha256": sha256_file(out / "train_adv" / "manifest.json"),
                "num_attacked": results["num_attacked"],
                "linf_max_disk": results["linf_255"]["max_disk"],
                "train_view_mAP": {"clean": 100 * white["clean"]["mAP"], "adversarial": 100 * white["adversarial_disk"]["mAP"]},
            }

        attacked = stage("training_attack", attack_settings, attack_work)
        merged = stage("merge", {"attack": attacked["fingerprint"], "data": fingerprint}, lambda: _merge_work(dataset, out))
        data_record |= {"adversarial": attacked, "merged": merged}
        recipe = _with_data(cfg.train, Path(merged["root"]))
        retrain_settings = {
            "train": _train_settings(recipe),
            "retrain": cfg.retrain.model_dump(mode="json"),
            "data": merged["fingerprint"],
            "base": base["sha256"],
        }
    else:
        recipe = cfg.train
        retrain_settings = {
            "train": _train_settings(recipe),
            "retrain": cfg.retrain.model_dump(mode="json"),
            "method": cfg.method,
            "settings": cfg.settings().model_dump(mode="json"),
            "data": fingerprint,
            "base": base["sha256"],
        }
    online = DEFENSES.get(cfg.method).objective is not None

    def retrain_work() -> dict[str, Any]:
        folder, run_recipe, init, lr_factor = out / "defended_train", recipe, None, 1.0
        if cfg.retrain.init == "finetune":
            epochs = cfg.retrain.finetune_epochs or recipe.schedule.epochs
            schedule = recipe.schedule.model_copy(update={"epochs": epochs, "warmup_epochs": 0, "lr_steps": []})
            run_recipe, init, lr_factor = recipe.model_copy(update={"schedule": schedule}), base_ckpt, cfg.retrain.finetune_lr_factor
        if online or init is not None:
            path = train_defended(
                run_recipe,
                folder,
                method=cfg.method if online else None,
                settings=cfg.settings() if online else None,
                init_checkpoint=init,
                lr_factor=lr_factor,
            )
        else:
            path = train(recipe, folder)
        return {"checkpoint": str(Path(path).resolve()), "sha256": sha256_file(path)}

    retrained = stage("retrain", retrain_settings, retrain_work)

    def finalise_work() -> dict[str, Any]:
        trained = Path(retrained["checkpoint"])
        meta = dict(checkpoint_meta(trained)["meta"])
        meta["defense"] = {
            "method": cfg.method,
            "source": DEFENSES.get(cfg.method).source,
            "settings": cfg.settings().model_dump(mode="json"),
            "base_model": base_record,
            "initialisation": (
                "F's initialisation (same seed, architecture and classes)"
                if cfg.retrain.init == "scratch"
                else "fine-tuned from F's weights"
            ),
            "training_attack": (
                {
                    "attack": cfg.training_attack.attack.resolved(),
                    "epsilon": cfg.training_attack.attack.eps,
                    "metric": cfg.training_attack.metric,
                    "setting": "push each training image away from its identity's clean training features",
                }
                if cfg.method == "metric-preserving"
                else None
            ),
            "retrain": cfg.retrain.model_dump(mode="json"),
            "data": data_record,
            "trained_checkpoint": {"path": str(trained), "sha256": retrained["sha256"]},
        }
        model = load_model(trained)
        path = save_checkpoint(model, out / "defended" / "model.safetensors", meta)
        written = {"checkpoint": str(path.resolve()), "sha256": sha256_file(path)}
        if isinstance(model, PythonNet):  # the network of one's own: its module's weights, for --model ... --weights
            weights = out / "defended" / "module.safetensors"
            with atomic_path(weights) as tmp:
                save_file(model.module_state(), str(tmp))
            written["module_weights"] = str(weights.resolve())
        return written

    final = stage("finalise", {"retrained": retrained["sha256"], "data": data_record, "method": cfg.method}, finalise_work)
    summary: dict[str, Any] = {"base": base, "defended": final, "data": data_record}
    if cfg.evaluation.enabled:
        eval_settings = {
            "evaluation": cfg.evaluation.model_dump(mode="json"),
            "base": base["sha256"],
            "defended": final["sha256"],
            "data": fingerprint,
        }
        summary["evaluation"] = stage(
            "evaluate", eval_settings, lambda: _evaluate(cfg, out, dataset, base_record, final, device), rerun_on_change=True
        )
    summary["stages_ran"] = [spec.kind for spec in cache.ran]
    return summary


def own_network_checkpoint(recipe: TrainConfig, dataset: ReIDDataset, weights: Path, path: Path) -> Path:
    """F from a network of one's own (``recipe.model``: ``python``) with ``weights`` loaded into its
    module, written as a checkpoint of ``dataset``'s training identities (classifier seeded, untrained)."""
    _, _, class_pids = relabel(dataset.train)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, len(class_pids), pretrained=False)
    assert isinstance(model, PythonNet)
    load_exact(model.net, read_state_dict(weights, f"base_weights {weights}"), str(weights), f"the module {model.source} returns")
    meta = {
        "class_pids": class_pids,
        "weights": {"path": str(weights), "sha256": sha256_file(weights)},
        "config": recipe.model_dump(mode="json"),
    }
    return save_checkpoint(model.eval(), path, meta)


def _merge_work(dataset: ReIDDataset, out: Path) -> dict[str, Any]:
    root = merge_training_sets(dataset, out / "train_adv", out / "merged")
    record = json.loads((root / "merge.json").read_text(encoding="utf-8"))
    return {"root": str(root.resolve()), "fingerprint": record["merged_fingerprint"], "train_images": record["train_images"]}


def _evaluate(
    cfg: DefenseConfig, out: Path, dataset: ReIDDataset, base_record: dict[str, Any], final: dict[str, Any], device: str
) -> dict[str, Any]:
    """Table 5 cells for F / F_adv and the adaptive white-box rows; writes ``defense_results.json``."""
    ev = cfg.evaluation
    metric = build_metric(ev.metric)
    normal = cfg.train.compute.prepare(load_model(Path(base_record["checkpoint"]), device=device))
    defended = cfg.train.compute.prepare(load_model(Path(final["checkpoint"]), device=device))
    defended_record = {"name": "F_adv", "checkpoint": final["checkpoint"], "sha256": final["sha256"]}
    folder = out / "transfer_gallery" / sha256_json([ev.transfer.model_dump(mode="json"), ev.metric, ev.ap, base_record, final])[:16]
    transfer = export_attack(
        [ModelEntry(normal, metric, base_record)],
        dataset,
        folder,
        ev.transfer.attack,
        "gallery",
        eval_models=[ModelEntry(defended, metric, defended_record)],
        metric_record={"name": ev.metric},
        batch_size=ev.transfer.batch_size,
        device=device,
        ap=ev.ap,
    )
    by_model = {row["model"]["name"]: row for row in transfer["evaluations"]}
    gallery = adversarial_gallery_name("F")
    maps = {(name, ORIGINAL): 100 * row["clean"]["mAP"] for name, row in by_model.items()}
    maps |= {(name, gallery): 100 * row["adversarial_disk"]["mAP"] for name, row in by_model.items()}
    cells = table5_cells(["F"], [ORIGINAL, gallery], lambda b, g: maps[("F", g)], lambda b, g: maps[("F_adv", g)])
    adaptive = adaptive_attack_rows(
        {"F": normal, "F_adv": defended},
        dataset,
        metric,
        ev.adaptive.specs(),
        batch_size=ev.adaptive.batch_size,
        device=device,
        ap=ev.ap,
        roles={"F": "normal", "F_adv": "defended"},
    )
    models = {"F": (normal, base_record), "F_adv": (defended, defended_record)}
    robust = _robust_rows(models, dataset, metric, ev, device, out) if ev.robust.enabled else []
    results = {
        "format": RESULTS_FORMAT,
        "method": cfg.method,
        "ap_convention": ev.ap,
        "metric": ev.metric,
        "units": "mAP and rank-1 in percent; improvement = (#M - #N) / #N as a fraction",
        "models": {"F": base_record, "F_adv": defended_record},
        "table5": {"cells": cells, "transfer_attack": transfer["attack"], "transfer_dir": str(folder), "linf_255": transfer["linf_255"]},
        "adaptive": adaptive,
        "robust": robust,
        "config": cfg.model_dump(mode="json"),
        "versions": environment_versions(),
    }
    atomic_write_json(out / "defense_results.json", results)
    return {
        "results": str((out / "defense_results.json").resolve()),
        "cells": cells,
        "adaptive": [{k: r[k] for k in ("model", "method", "epsilon", "clean_mAP", "adversarial_mAP")} for r in adaptive],
        "robust": [{k: r[k] for k in ("model", "epsilon", "clean_mAP", "robust_mAP", "gallery_robust_mAP", "flags")} for r in robust],
    }


def _robust_rows(
    models: Mapping[str, tuple[nn.Module, dict[str, Any]]],
    dataset: ReIDDataset,
    metric: Metric,
    ev: EvaluationSection,
    device: str,
    out: Path,
) -> list[dict[str, Any]]:
    """The robust evaluation of F and F_adv (``models``: name -> (model, record)) at each ε (F_adv's worst case
    includes F's query attack, transferred); the protocol's finished runs are kept in
    ``out/robustness/<key of the evaluation>/`` (resume)."""
    normal, defended = models["F"][0], models["F_adv"][0]
    rows = []
    size, epsilons = ev.robust.batch_size, ev.robust.epsilons
    clean = {name: clean_features([m], dataset, batch_size=size, device=device)[0] for name, m in (("F", normal), ("F_adv", defended))}
    transfers = {
        eps: attacked_images(
            normal, metric, dataset, TRANSFER.side, robust_spec(TRANSFER.method, eps), clean["F"], batch_size=size, device=device
        )
        for eps in epsilons
    }
    for name, (model, record) in models.items():
        key = sha256_json([ev.robust.model_dump(mode="json"), ev.metric, ev.ap, record])[:16]
        results = robust_evaluations(
            model,
            dataset,
            metric,
            epsilons,
            version=ev.robust.version,
            transfers=transfers if name == "F_adv" else None,
            clean=clean[name],
            batch_size=size,
            device=device,
            ap=ev.ap,
            records=out / "robustness" / key,
            model_record=record,
        )
        for result in results:
            rows.append(
                {
                    "model": name,
                    "epsilon": result.epsilon,
                    "protocol": ev.robust.version,
                    "clean_mAP": result.mAP(result.clean),
                    "robust_mAP": result.mAP(result.worst("query")),
                    "gallery_robust_mAP": result.mAP(result.worst("gallery")),
                    "attacks": {key: result.mAP(v) for key, v in result.attacks.items()},
                    "checks": result.checks,
                    "flags": result.flags(),
                }
            )
    return rows
