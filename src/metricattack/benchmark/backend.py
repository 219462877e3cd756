"""The benchmark's calls into the rest of the toolkit, one small function per stage.

Everything the runner needs from data, models, training, features, metrics and attacks
goes through this module, so the contracts it relies on are in one place. Each
``*_work`` function does the work of one stage inside its cache folder and returns the
JSON-able outputs stored in the stage marker (see :mod:`.stages`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..data.types import ImageRecord, ReIDDataset
from ..errors import ConfigError, MetricAttackError
from ..io import atomic_path, sha256_file
from ..training.config import TrainConfig
from .config import AttackSection, BenchmarkConfig, DatasetSection, ModelSection


# --------------------------------------------------------------------------- dataset
def dataset_work(section: DatasetSection, folder: Path) -> dict[str, Any]:
    """Generate the synthetic dataset into ``folder/data`` (real datasets are only parsed)."""
    if section.synthetic is None:
        return {"root": str(section.root)}
    from ..data.synthetic import generate

    root = generate(folder / "data", section.synthetic)
    return {"root": str(Path(root).resolve())}


def open_dataset(section: DatasetSection, root: str) -> ReIDDataset:
    """Parse the dataset at ``root`` (synthetic data and adversarial copies use ``folder``)."""
    from ..data.layouts import load_dataset

    return load_dataset(section.layout, root)


def open_folder_dataset(root: str | Path) -> ReIDDataset:
    from ..data.layouts import load_dataset

    return load_dataset("folder", root)


def fingerprint(ds: ReIDDataset) -> str:
    from ..data.layouts import dataset_fingerprint

    return dataset_fingerprint(ds)


# --------------------------------------------------------------------------- models
def train_config(model: ModelSection, dataset: DatasetSection, dataset_root: str, device: str) -> TrainConfig:
    """The TrainConfig of ``model``, training on the benchmark's dataset and device."""
    if model.train is None:
        raise ConfigError(f"model {model.name} has no training recipe (it is given as a checkpoint)")
    return model.train.train_config(dataset.layout, dataset_root, device, f"model {model.name} training config")


def check_trainable(model: ModelSection, dataset: DatasetSection, ds: ReIDDataset, dataset_root: str, device: str) -> None:
    """Fail now, naming the model, if its recipe cannot train on ``ds`` (e.g. the P×K sampler
    needs more identities than the training split has): the trainer's own batching rules, run
    on the records without reading an image."""
    if model.train is None:
        return
    from ..training.data import TrainImages, relabel
    from ..training.trainer import build_loader

    cfg = train_config(model, dataset, dataset_root, device)
    try:
        records, labels, _ = relabel(ds.train)
        build_loader(cfg, TrainImages(records, labels, cfg.model.input_size, cfg.augmentation), labels, 0, 1)
    except MetricAttackError as exc:
        raise ConfigError(f"model {model.name} cannot train on dataset {dataset.name}: {exc}") from None


def model_work(model: ModelSection, dataset: DatasetSection, dataset_root: str, device: str, folder: Path) -> dict[str, Any]:
    """Train ``model`` on the dataset (or reference its given checkpoint)."""
    if model.checkpoint is not None:
        return {"checkpoint": str(model.checkpoint), "sha256": sha256_file(model.checkpoint)}
    from ..training import train

    cfg = train_config(model, dataset, dataset_root, device)
    checkpoint = Path(train(cfg, folder / "train"))
    return {"checkpoint": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)}


def load_model(checkpoint: str, device: str) -> torch.nn.Module:
    from ..models.checkpoint import load_model as _load

    return _load(checkpoint, device=device)


# --------------------------------------------------------------------------- features
def extract(
    model: torch.nn.Module, records: tuple[ImageRecord, ...] | list[ImageRecord], batch_size: int, device: str = "cpu"
) -> torch.Tensor:
    """L2-normalised features ``[N, D]`` (float32, CPU) of ``records``."""
    from ..evaluation.features import extract_features

    return extract_features(model, list(records), batch_size=batch_size, device=device, progress=False).float().cpu()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def features_work(model: torch.nn.Module, ds: ReIDDataset, batch_size: int, device: str, folder: Path, with_train: bool) -> dict[str, Any]:
    """Clean query/gallery (and optionally train) features of one model."""
    splits = ("query", "gallery", "train") if with_train else ("query", "gallery")
    tensors = {s: extract(model, ds.split(s), batch_size, device) for s in splits}
    save_tensors(folder / "features.safetensors", tensors)
    return {"file": "features.safetensors"}


# --------------------------------------------------------------------------- metrics
def learned_metric_work(kind: str, train_features: torch.Tensor, ds: ReIDDataset, folder: Path) -> dict[str, Any]:
    """Fit the learned metric ``kind`` on one model's training features (identities only) and save it."""
    from ..metrics.learned import fit_learned, save_learned_metric

    pids = torch.tensor([r.pid for r in ds.train])
    camids = torch.tensor([r.camid for r in ds.train])
    keep = pids > 0
    fit = fit_learned(kind, train_features[keep], pids[keep], camids[keep])
    save_learned_metric(fit, folder / "metric.safetensors")
    return {"file": "metric.safetensors"}


def load_metric_file(path: Path) -> Any:
    from ..metrics.distance import load_metric

    return load_metric(path)


def builtin_metric(name: str) -> Any:
    from ..metrics.distance import build_metric

    return build_metric(name)


# --------------------------------------------------------------------------- attacks
SETTING_OF_MODE = {"nontargeted": "gallery", "targeted": "targeted", "classification": "classification"}


def attack_work(
    models: list[torch.nn.Module],
    metrics: list[Any],
    records: list[dict[str, Any]],
    ds: ReIDDataset,
    job: dict[str, Any],
    attack: AttackSection,
    seed: int,
    ap: str,
    device: str,
    folder: Path,
) -> dict[str, Any]:
    """Attack the gallery of ``ds`` as ``job`` says; export it as a dataset in ``folder/data``.

    ``records`` are the provenance records (checkpoint, sha256) of ``models``. The export
    resumes by itself when the stage is re-run after an interruption.
    """
    from ..attacks.export import ModelEntry, export_attack

    spec = attack.spec(job["method"], job["epsilon"], seed)
    entries = [ModelEntry(m, metric, rec) for m, metric, rec in zip(models, metrics, records, strict=True)]
    out = export_attack(
        entries,
        ds,
        folder / "data",
        spec,
        SETTING_OF_MODE[job["mode"]],
        metric_record={"name": job["metric"]},
        batch_size=attack.batch_size,
        device=device,
        ap=ap,
        progress=False,
    )
    return {
        "dataset_dir": str((folder / "data").resolve()),
        "linf": out["linf_255"]["max_disk"],
        "num_attacked": out["num_attacked"],
        "steps": spec.num_steps,
    }


def target_assignment(ds: ReIDDataset, seed: int) -> torch.Tensor:
    """``[G]`` target probe of each gallery image in the targeted attack (−1: not attacked)."""
    from ..attacks.objectives import targeted_reference_sets

    _, targets = targeted_reference_sets([r.pid for r in ds.gallery], [r.pid for r in ds.query], seed)
    return torch.as_tensor(targets)


def attacked_mask(ds: ReIDDataset, mode: str, seed: int) -> torch.Tensor:
    """``[G]`` bool: gallery images the attack of ``mode`` perturbs (the attack module's rule)."""
    if mode == "targeted":
        return target_assignment(ds, seed) >= 0
    from ..attacks.objectives import gallery_reference_sets

    sets = gallery_reference_sets([r.pid for r in ds.gallery], [r.pid for r in ds.query])
    return torch.tensor([bool(s) for s in sets], dtype=torch.bool)


def mean_true_positive_distance(metric: Any, q: torch.Tensor, g: torch.Tensor, ds: ReIDDataset) -> float:
    """Mean metric distance (squared Euclidean for ``euclidean``) over true-positive pairs."""
    from ..attacks.runner import mean_true_positive_distance as _mean
    from ..attacks.runner import true_positive_pairs

    return _mean(metric, q, g, true_positive_pairs(ds))


def targeted_success(metric: Any, q: torch.Tensor, g: torch.Tensor, ds: ReIDDataset, targets: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-10 rates of attacked images in their target's ranking (the attack module's protocol)."""
    from ..attacks.runner import targeted_success as _success

    return _success(metric, q, g, ds, targets)


def resolve_device(cfg: BenchmarkConfig) -> str:
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available; use device: cpu")
    return cfg.device
