"""Universal perturbations: one δ for every image, trained on the training split, applied at test time.

As in the universal attacks on retrieval (UAP-retrieval, Li et al. ICCV 2019; Query-UAP / MUAP for
re-ID), the attacker computes one perturbation offline on images it owns -- here the dataset's
**training** split, whose identities are disjoint from the test identities -- and adds the same
δ to every query (or gallery image) at test time, with no model call per image.

**δ.** A float32 tensor ``[3, h, w]`` in pixel units (``[0,1]`` images), every entry in
``[−ε/255, ε/255]``, at a fixed size ``h × w`` chosen at training (default: the first attacked
model's input size, where the model sees it). It meets an image of another size ``H × W`` through
:func:`fit_delta`: resized with the one differentiable resize the models use
(:func:`~metricattack.models.preprocessing.resize_to_input`: antialiased bilinear, no crop), so the
model's own resize of the perturbed image brings δ back to about the size it was trained at; the
resize takes convex combinations of δ's entries, so the resized δ stays within ε. Applied:
``x' = clip_[0,1](x + fit_delta(δ, H, W))`` (:func:`apply_delta`), inside the ε-ball and [0,1]
(the ``uap`` method, :mod:`~metricattack.attacks.methods.uap`; then the attack's usual projection).

**Training** (:func:`train_universal`): the stochastic sign-momentum ascent of Vanilla / Query-UAP,
on a metric objective. For each batch of training images ``x`` (shuffled per epoch with the seed),
the loss is the mean over the batch of each image's metric loss at ``clip(x + fit_delta(δ))``,
averaged over the models (an ensemble); ``g = ∇_δ loss``, ``m ← μ·m + g / mean|g|``,
``δ ← clip(δ + α·sign(m), −ε, ε)``. Objectives (:data:`OBJECTIVES`):

* ``identity`` (default): push each training image away from the clean features of its identity's
  training images (the paper's non-targeted metric loss, on labels the attacker owns);
* ``self``: push each image away from its own clean feature (SMA's objective, no label).

δ starts uniform in ``[−ε, ε]`` (seeded): the ``self`` loss has a zero gradient at δ = 0.

**Files** (:func:`save_delta`, :func:`load_delta`): ``uap.safetensors`` (tensor ``delta`` and the
one metadata entry ``metricattack``: JSON ``{"eps": ..., "format": ...}``; one entry, as safetensors
writes several in an order that changes between runs), ``uap.json`` (the record: config, models, dataset, losses per epoch,
cost, δ's checksum, versions) and ``uap.png`` (δ mapped from ``[−ε, ε]`` to ``[0, 255]``, mid-grey
= 0, enlarged by an integer factor to at least 256 px tall). A killed training resumes from its
last finished epoch (``.universal/``), to the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..compute import Compute
from ..compute import active as active_compute
from ..config import StrictModel
from ..data.layouts import dataset_fingerprint
from ..data.loading import make_loader, save_png
from ..data.types import ReIDDataset
from ..errors import MetricAttackError
from ..evaluation.features import extract_features
from ..io import atomic_path, atomic_write_json, environment_versions, sha256_file, sha256_json
from ..metrics.distance import Metric
from ..models.preprocessing import resize_to_input
from ..outputs import check_output_folder, claim_output
from ..progress import Progress
from .objectives import EnsembleLoss, MetricLoss, ReferenceTargets, is_identity, metrics_per_model
from .ops import per_image_l1_normalise

logger = logging.getLogger(__name__)

FORMAT = "metricattack.universal/1"
DELTA_FILE, RECORD_FILE, PICTURE_FILE = "uap.safetensors", "uap.json", "uap.png"
STATE_DIR = ".universal"
OBJECTIVES = ("identity", "self")
PICTURE_HEIGHT = 256  # the PNG is enlarged by an integer factor to at least this height


class UniversalConfig(StrictModel):
    """How δ is trained (ε and α in 0..255 units)."""

    eps: float = Field(8.0, gt=0, le=255, allow_inf_nan=False, description="L-inf radius of δ in 0..255 units")
    objective: Literal["identity", "self"] = Field("identity", description="metric objective on the training split (see the module)")
    epochs: int = Field(5, ge=1, description="passes over the training split")
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False, description="sign step in 0..255 units, at most eps")
    mu: float = Field(1.0, ge=0, allow_inf_nan=False, description="momentum decay")
    batch_size: int = Field(32, ge=1, description="training images per step")
    size: tuple[int, int] | None = Field(None, description="(h, w) of δ; default the first model's input size")
    seed: int = Field(0, description="seeds δ's start and the per-epoch shuffles")


# ---------------------------------------------------------------------------------------------- δ
def fit_delta(delta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """δ ``[3, h, w]`` at an image size ``(height, width)``: ``[1, 3, height, width]`` by the models' resize
    (antialiased bilinear; unchanged at its own size); differentiable; stays within δ's own bound."""
    return resize_to_input(delta[None], (height, width))


def apply_delta(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``clip_[0,1](images + fit_delta(δ))`` for ``images [B,3,H,W]`` (a new tensor)."""
    return (images + fit_delta(delta.to(images), images.shape[-2], images.shape[-1])).clamp(0.0, 1.0)


def save_delta(path: Path, delta: torch.Tensor, eps: float) -> None:
    """Write δ ``[3, h, w]`` (float32) with its ε (0..255 units) to ``path`` (safetensors, atomic)."""
    with atomic_path(path) as tmp:
        save_file(
            {"delta": delta.detach().float().cpu().contiguous()},
            str(tmp),
            metadata={"metricattack": json.dumps({"eps": float(eps), "format": FORMAT}, sort_keys=True)},
        )


def load_delta(path: str | Path) -> tuple[torch.Tensor, float]:
    """``(δ [3, h, w], ε)`` of a δ file, checked: the format, one tensor ``delta`` of shape ``[3, h, w]``,
    finite and within ``ε/255``. MetricAttackError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise MetricAttackError(f"universal perturbation {path}: no such file (train one with: metricattack universal ...)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("metricattack", "{}"))
            keys = list(handle.keys())
            delta = handle.get_tensor("delta") if "delta" in keys else None
    except Exception as exc:  # safetensors raises its own error types for a file that is not safetensors (json: bad metadata)
        raise MetricAttackError(f"universal perturbation {path}: not a safetensors file ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or delta is None:
        raise MetricAttackError(f"universal perturbation {path}: not a {FORMAT} file (written by metricattack universal)")
    try:
        eps = float(metadata["eps"])
    except (KeyError, TypeError, ValueError):
        raise MetricAttackError(f"universal perturbation {path}: its metadata has no valid eps") from None
    if delta.dim() != 3 or delta.shape[0] != 3 or min(delta.shape[1:]) < 1:
        raise MetricAttackError(f"universal perturbation {path}: delta must have shape [3, h, w], got {tuple(delta.shape)}")
    if not bool(torch.isfinite(delta).all()) or float(delta.abs().max()) > eps / 255.0 + 1e-6:
        raise MetricAttackError(f"universal perturbation {path}: delta has entries that are not finite or exceed eps = {eps:g}/255")
    return delta.float(), eps


def picture(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """δ as a ``uint8 [3, H, W]`` picture: ``[−ε, ε] → [0, 255]`` (mid-grey = 0), enlarged by an integer
    factor (nearest neighbour) to at least :data:`PICTURE_HEIGHT` px tall."""
    scaled = ((delta.detach().float().cpu() * 255.0 / eps + 1.0) * 127.5).round().clamp(0, 255)
    factor = max(1, -(-PICTURE_HEIGHT // delta.shape[1]))
    return scaled.repeat_interleave(factor, 1).repeat_interleave(factor, 2).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- training
def reference_sets(dataset: ReIDDataset, objective: str) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Per training image: its references (``identity``: the training images of its identity, itself
    included; ``self``: itself) and ``active [N]`` (``identity``: images with an identity)."""
    pids = [r.pid for r in dataset.train]
    if objective == "self":
        return [(i,) for i in range(len(pids))], torch.ones(len(pids), dtype=torch.bool)
    groups: dict[int, list[int]] = {}
    for i, pid in enumerate(pids):
        if is_identity(pid):
            groups.setdefault(pid, []).append(i)
    sets = [tuple(groups[pid]) if is_identity(pid) else () for pid in pids]
    return sets, torch.tensor([bool(s) for s in sets], dtype=torch.bool)


def check_request(models: Sequence[nn.Module], dataset: ReIDDataset, cfg: UniversalConfig) -> tuple[int, int]:
    """Refuse (MetricAttackError) what cannot train before any work; returns δ's ``(h, w)``."""
    if not models:
        raise MetricAttackError("metricattack universal needs at least one model")
    if cfg.alpha > cfg.eps:
        raise MetricAttackError(f"alpha (step size {cfg.alpha:g}) must not exceed eps ({cfg.eps:g}); both are in 0..255 units")
    if not dataset.train:
        raise MetricAttackError(f"dataset {dataset.name} at {dataset.root} has no training images to train a universal perturbation on")
    _, active = reference_sets(dataset, cfg.objective)
    if not bool(active.any()):
        raise MetricAttackError(f"the training split of {dataset.name} has no identity to train the {cfg.objective!r} objective on")
    size = cfg.size or getattr(models[0], "input_size", None)
    if size is None or len(size) != 2 or min(int(s) for s in size) < 1:
        raise MetricAttackError("the first model has no input_size: give the size of delta (--size H W)")
    return int(size[0]), int(size[1])


def _objective(
    models: Sequence[nn.Module], metrics: Sequence[Metric], dataset: ReIDDataset, cfg: UniversalConfig, batch_size: int, device: str
) -> tuple[EnsembleLoss, torch.Tensor]:
    """The ensemble loss over the training split (clean training features of every model) and ``active [N]``."""
    sets, active = reference_sets(dataset, cfg.objective)
    parts = []
    for model, metric in zip(models, metrics, strict=True):
        clean = extract_features(model, list(dataset.train), batch_size=batch_size, device=device, progress=False).float()
        parts.append(MetricLoss(model, metric, ReferenceTargets.build(metric, clean, sets)))
    return EnsembleLoss(parts), active


def _identity(
    cfg: UniversalConfig, size: tuple[int, int], models: Sequence[dict[str, Any]], dataset: ReIDDataset, compute: Compute
) -> dict[str, Any]:
    fields = {
        "config": {**cfg.model_dump(mode="json"), "size": list(size)},
        "models": list(models),
        "dataset_fingerprint": dataset_fingerprint(dataset),
    }
    if compute.key():  # the default adds nothing: runs made before precision existed resume
        fields["compute"] = compute.key()
    return {**fields, "key": sha256_json(fields)}


def _read_state(folder: Path, identity: dict[str, Any]) -> tuple[int, torch.Tensor | None, torch.Tensor | None, list[float]]:
    """``(epochs done, δ, momentum, losses)`` of a previous run of the same identity; a run of another
    identity that finished epochs is refused; nothing found: a fresh start."""
    run = folder / STATE_DIR / "run.json"
    if not run.is_file():
        return 0, None, None, []
    state = json.loads(run.read_text(encoding="utf-8"))
    if state["identity"]["key"] != identity["key"]:
        if state.get("epochs_done", 0) > 0:
            raise MetricAttackError(
                f"{folder} holds a different universal perturbation run (other config, models or data); "
                "use another --out folder or delete this one"
            )
        return 0, None, None, []
    if state.get("epochs_done", 0) == 0:
        return 0, None, None, []
    tensors = load_file(str(folder / STATE_DIR / "state.safetensors"))
    return int(state["epochs_done"]), tensors["delta"], tensors["momentum"], list(state["losses"])


def _write_state(
    folder: Path, identity: dict[str, Any], epochs: int, delta: torch.Tensor, momentum: torch.Tensor, losses: list[float]
) -> None:
    (folder / STATE_DIR).mkdir(exist_ok=True)
    if epochs:
        with atomic_path(folder / STATE_DIR / "state.safetensors") as tmp:
            save_file({"delta": delta.detach().cpu().contiguous(), "momentum": momentum.detach().cpu().contiguous()}, str(tmp))
    atomic_write_json(folder / STATE_DIR / "run.json", {"identity": identity, "epochs_done": epochs, "losses": losses})


def is_universal_run(folder: Path) -> bool:
    """True when ``folder`` holds a universal perturbation run (finished or not)."""
    return (Path(folder) / STATE_DIR / "run.json").is_file()


def train_universal(
    models: Sequence[nn.Module],
    metrics: Metric | Sequence[Metric],
    dataset: ReIDDataset,
    out: str | Path,
    cfg: UniversalConfig,
    *,
    model_records: Sequence[dict[str, Any]] = (),
    metric_record: dict[str, Any] | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    on_epoch: Callable[[int], None] | None = None,
    compute: Compute | None = None,
) -> dict[str, Any]:
    """Train δ on ``dataset.train`` (module docstring) into ``out``; returns the record (``uap.json``).

    ``compute``: the models' precision and GPU switches (:mod:`metricattack.compute`, default: the active one;
    δ, its gradient and steps stay float32), in the run's identity when not the default.

    Everything is checked before the folder is claimed; an interrupted run resumes from its last
    finished epoch (same config, models and data), a finished one returns its record.
    ``batch_size`` bounds the clean feature extraction; ``cfg.batch_size`` is the training step's.
    ``on_epoch(epoch)`` is called after each epoch's state is written.
    """
    out = Path(out)
    size = check_request(models, dataset, cfg)
    per_model = metrics_per_model(models, metrics)
    check_output_folder("--out", out, command="universal", is_previous=is_universal_run, datasets=[dataset.root])
    records = list(model_records) or [{"model": type(m).__name__} for m in models]
    compute = compute or active_compute()
    identity = _identity(cfg, size, records, dataset, compute)
    training = [m.training for m in models]
    with claim_output(out, "universal"), compute.applied(models):
        done, delta, momentum, losses = _read_state(out, identity)
        if done == cfg.epochs and (out / RECORD_FILE).is_file():
            return json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
        try:
            for m in models:
                m.eval()
            start = time.perf_counter()
            objective, active = _objective(models, per_model, dataset, cfg, batch_size, device)
            eps, alpha = cfg.eps / 255.0, cfg.alpha / 255.0
            if delta is None or momentum is None:
                gen = torch.Generator().manual_seed(int(cfg.seed))
                delta = (torch.rand((3, *size), generator=gen) * 2.0 - 1.0) * eps
                momentum = torch.zeros_like(delta)
            _write_state(out, identity, done, delta, momentum, losses)
            delta, momentum = delta.to(device), momentum.to(device)
            for epoch in range(done, cfg.epochs):
                total, count = 0.0, 0
                loader = make_loader(list(dataset.train), cfg.batch_size, shuffle=True, seed=cfg.seed * 1_000_003 + epoch)
                for images, indices in Progress(loader, desc=f"universal perturbation: epoch {epoch + 1}/{cfg.epochs}", unit="batch"):
                    keep = active[indices]
                    if not bool(keep.any()):
                        continue
                    images, indices = images[keep].to(device), indices[keep]
                    delta.requires_grad_(True)
                    with torch.enable_grad():
                        loss = objective(apply_delta(images, delta), indices)
                        grad = compute.input_gradient(loss.mean(), delta)
                    delta = delta.detach()
                    if not bool(torch.isfinite(grad).all()):
                        raise MetricAttackError(f"universal perturbation: the gradient is not finite at epoch {epoch + 1}")
                    momentum = cfg.mu * momentum + per_image_l1_normalise(grad[None])[0]
                    delta = (delta + alpha * momentum.sign()).clamp(-eps, eps)
                    total, count = total + float(loss.detach().sum()), count + len(indices)
                losses.append(total / max(count, 1))
                logger.info("universal perturbation: epoch %d/%d, mean objective %.4f", epoch + 1, cfg.epochs, losses[-1])
                _write_state(out, identity, epoch + 1, delta, momentum, losses)
                if on_epoch is not None:
                    on_epoch(epoch + 1)
            record = _finish(out, delta, cfg, size, identity, dataset, active, losses, metric_record, time.perf_counter() - start)
        finally:
            for m, was_training in zip(models, training, strict=True):
                m.train(was_training)
    return record


def _finish(
    out: Path,
    delta: torch.Tensor,
    cfg: UniversalConfig,
    size: tuple[int, int],
    identity: dict[str, Any],
    dataset: ReIDDataset,
    active: torch.Tensor,
    losses: list[float],
    metric_record: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    """Write δ, its picture and its record."""
    save_delta(out / DELTA_FILE, delta, cfg.eps)
    save_png(picture(delta, cfg.eps).float() / 255.0, out / PICTURE_FILE)
    images = int(active.sum())
    record = {
        "format": FORMAT,
        "delta": {
            "file": DELTA_FILE,
            "sha256": sha256_file(out / DELTA_FILE),
            "shape": [3, *size],
            "linf_255": float(delta.abs().max()) * 255.0,
            "picture": PICTURE_FILE,
        },
        "config": identity["config"],
        "metric": metric_record or {},
        "models": identity["models"],
        "dataset": {
            "name": dataset.name,
            "root": str(dataset.root),
            "fingerprint": identity["dataset_fingerprint"],
            "split": "train",
            "images": images,
            "identities": len({r.pid for r, a in zip(dataset.train, active.tolist(), strict=True) if a and is_identity(r.pid)}),
        },
        "compute": Compute.model_validate(identity.get("compute", {})).record(),
        "losses": losses,
        "cost": {"forward_per_image": cfg.epochs, "backward_per_image": cfg.epochs, "seconds_this_run": round(seconds, 3)},
        "versions": environment_versions(),
    }
    atomic_write_json(out / RECORD_FILE, record)
    return record
