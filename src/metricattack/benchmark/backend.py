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
from ..errors import ConfigError
from ..io import atomic_path, sha256_file
from .config import AttackSection, BenchmarkConfig, DatasetSection, ModelSection


# --------------------------------------------------------------------------- dataset
def dataset_work(section: DatasetSection, folder: Path) -> dict[str, Any]:
    """Generate the synthetic dataset into ``folder/data`` (real datasets are only parsed)."""
    if section.name != "synthetic":
        return {"root": str(section.root)}
    from ..data.synthetic import SynthConfig, generate

    try:
        synth = SynthConfig(**section.synthetic)
    except Exception as exc:  # pydantic ValidationError
        raise ConfigError(f"dataset.synthetic: {exc}") from None
    root = generate(folder / "data", synth)
    return {"root": str(Path(root).resolve())}


def open_dataset(section: DatasetSection, root: str) -> ReIDDataset:
    """Parse the dataset at ``root`` (synthetic data and adversarial copies use ``folder``)."""
    from ..data.layouts import load_dataset

    return load_dataset("folder" if section.name == "synthetic" else section.name, root)


def open_folder_dataset(root: str | Path) -> ReIDDataset:
    from ..data.layouts import load_dataset

    return load_dataset("folder", root)


def fingerprint(ds: ReIDDataset) -> str:
    from ..data.layouts import dataset_fingerprint

    return dataset_fingerprint(ds)


# --------------------------------------------------------------------------- models
def train_settings(model: ModelSection) -> dict[str, Any]:
    """The TrainConfig fields of ``model`` (inline ``train`` or the ``train_config`` file)."""
    if model.train is not None:
        return dict(model.train)
    if model.train_config is not None:
        from ..config import read_yaml

        return read_yaml(model.train_config)
    return {}


def train_config(model: ModelSection, dataset: DatasetSection, dataset_root: str, device: str) -> Any:
    """The validated TrainConfig of ``model``, training on the benchmark's dataset and device."""
    from ..config import validate
    from ..training import TrainConfig

    settings = train_settings(model)
    data = dict(settings.get("data") or {})
    data["dataset"] = "folder" if dataset.name == "synthetic" else dataset.name
    data["root"] = dataset_root
    settings["data"] = data
    settings["device"] = device
    return validate(TrainConfig, settings, f"model {model.name} training config")


def model_work(model: ModelSection, dataset: DatasetSection, dataset_root: str, device: str, folder: Path) -> dict[str, Any]:
    """Train ``model`` on the dataset (or reference its given checkpoint)."""
    if model.checkpoint is not None:
        if not model.checkpoint.is_file():
            raise ConfigError(f"model {model.name}: checkpoint {model.checkpoint} does not exist")
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
def xqda_work(train_features: torch.Tensor, ds: ReIDDataset, folder: Path) -> dict[str, Any]:
    """Fit XQDA on one model's training features and save it as a metric file."""
    from ..metrics.distance import save_metric
    from ..metrics.xqda import fit_xqda

    pids = torch.tensor([r.pid for r in ds.train])
    camids = torch.tensor([r.camid for r in ds.train])
    keep = pids > 0
    fit = fit_xqda(train_features[keep], pids[keep], camids[keep])
    metric = _metric_of_fit(fit)
    save_metric(metric, folder / "xqda.safetensors", {"fit": fit.info})
    return {"file": "xqda.safetensors"}


def _metric_of_fit(fit: Any) -> Any:
    from ..metrics.distance import build_metric

    metric = getattr(fit, "metric", None)
    if metric is not None:
        return metric
    return build_metric("mahalanobis", projection=torch.as_tensor(fit.projection, dtype=torch.float32))


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
    from ..attacks.spec import make_spec

    spec = make_spec(
        f"attack {job['id']}",
        method=job["method"],
        eps=job["epsilon"],
        alpha=min(attack.alpha, job["epsilon"]),
        steps=None if job["method"] == "fgsm" else attack.steps,
        mu=attack.momentum,
        seed=seed,
    )
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


def steps_for(epsilon: float, steps: int | None, method: str) -> int:
    """Iterations n: 1 for FGSM, else ``steps`` or the paper's ``min(ε + 4, 1.25 ε)``."""
    if method == "fgsm":
        return 1
    return steps if steps is not None else max(1, int(min(epsilon + 4, 1.25 * epsilon)))


def resolve_device(cfg: BenchmarkConfig) -> str:
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available; use device: cpu")
    return cfg.device
