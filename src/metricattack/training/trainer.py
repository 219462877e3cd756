"""The training loop: classification, triplet and attention losses, Adam, resumable checkpoints, DDP.

Output folder layout of :func:`train`::

    OUT/checkpoints/epoch-007.safetensors (+ .json, .train-state.pt)   latest resumable state
    OUT/model.safetensors (+ model.json)                               the final model

A re-run with the same config resumes from the latest epoch checkpoint (the random state
is re-seeded from ``seed + epoch`` at every epoch start, so an interrupted and resumed run
computes the same weights as an uninterrupted one). Raising ``schedule.epochs`` extends a
finished run; any other change of the result-defining config is refused.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel;
each rank trains on its share of every epoch's batches and only rank 0 writes files.

A :class:`Variant` departs from plain training the ways the defenses need: start from given
weights, scale the learning rate, and replace how a batch becomes a loss (a
:data:`BatchObjective` built from the :class:`TrainingRun`: adversarial training makes its
adversarial images and losses there). Its ``identity`` is recorded in every checkpoint and
must match to resume.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader

from .. import __version__
from ..data.layouts import dataset_fingerprint, load_dataset
from ..data.types import ReIDDataset
from ..distributed import barrier, is_main_process, process_group, rank_and_world, resolve_device
from ..errors import ConfigError
from ..models.base import ARCHITECTURES, ReIDNet, TrainOutputs
from ..models.checkpoint import (
    checkpoint_meta,
    load_model,
    load_train_state,
    meta_path,
    save_checkpoint,
    save_train_state,
    train_state_path,
)
from ..outputs import check_output_folder, claim_output
from ..progress import Progress, bars_allowed
from .config import TrainConfig
from .data import TrainImages, relabel
from .losses import (
    batch_hard_triplet_loss,
    cross_entropy_loss,
    curriculum_state,
    curriculum_triplet_loss,
    multilabel_sigmoid_loss,
    sigmoid_focal_loss,
)
from .sampler import PKBatchSampler

log = logging.getLogger(__name__)

FINAL_NAME = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"


class _TrainStep(nn.Module):
    """Routes ``forward`` to ``forward_train`` so DDP's gradient hooks see the training pass."""

    def __init__(self, model: ReIDNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> TrainOutputs:
        return self.model.forward_train(images)


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Losses = tuple[torch.Tensor, dict[str, torch.Tensor]]
BatchObjective = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, int], Losses]
"""``(step, images [B,3,H,W], labels [B], epoch, number) -> (loss, named parts)``: the loss one
batch is trained on. ``step(images)`` is the model's training pass (:class:`TrainOutputs`),
``epoch`` 1-based, ``number`` the batch's 0-based position in the epoch; the parts are averaged
per epoch into the run's history."""


@dataclass(frozen=True)
class TrainingRun:
    """What a :class:`Variant`'s objective may use (built once per run, after the model).

    Attributes:
        model: the model being trained (its training mode is the loop's; an objective that
            attacks it switches it to eval mode and back).
        losses: the recipe's loss (:class:`LossTerms`).
        images: the training images (:class:`~.data.TrainImages`; ``plain(indices)`` without
            augmentation, ``labels`` per image).
        device: where batches live.
    """

    model: ReIDNet
    losses: LossTerms
    images: TrainImages
    device: torch.device


def recipe_objective(run: TrainingRun) -> BatchObjective:
    """Plain training: the recipe's loss on the batch."""

    def objective(step: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, number: int) -> Losses:
        return run.losses(step(images), labels, epoch)

    return objective


@dataclass(frozen=True)
class Variant:
    """How a run departs from plain training; ``identity`` (JSON) must describe every departure.

    Attributes:
        identity: result-defining description, recorded as ``meta["variant"]``; resuming a run
            with another identity is refused.
        init_checkpoint: start from these weights (a model trained on the same identities).
        lr_factor: learning rate × this, on top of the schedule.
        objective: builds the per-batch :data:`BatchObjective` from the :class:`TrainingRun`
            (default :func:`recipe_objective`). It must be a function of its arguments and of
            generators it seeds from ``(epoch, number)``, so a resumed run equals an
            uninterrupted one.
    """

    identity: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: Path | None = None
    lr_factor: float = 1.0
    objective: Callable[[TrainingRun], BatchObjective] = recipe_objective


def build_model(cfg: TrainConfig, num_classes: int, *, pretrained: bool = True) -> ReIDNet:
    """The untrained model of ``cfg.model`` with ``num_classes`` outputs; ``pretrained=False``
    skips ImageNet initialisation (the weights will be overwritten: resuming, or a start checkpoint)."""
    args = cfg.model.arguments(cfg.loss)
    if not pretrained and "pretrained" in args:
        args["pretrained"] = False
    return ARCHITECTURES.get(cfg.model.architecture)(num_classes=num_classes, **args)


@dataclass
class LossTerms:
    """Weighted loss of one batch from the model's :class:`TrainOutputs` and ``labels [B]``.

    Cross-entropy and the sigmoid focal loss are applied to every classification head
    (``outputs.logits``) and summed (HACNN: global + local branch); the triplet loss trains
    ``outputs.embedding`` (batch-hard, or curriculum-sampled at the 1-based ``epoch``'s
    :func:`~.losses.curriculum_state`); the attention loss is the mean multi-label sigmoid
    cross-entropy of the attention heads (``outputs.attention_logits``, Mancs).
    """

    cfg: TrainConfig

    def __call__(self, outputs: TrainOutputs, labels: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        loss = self.cfg.loss
        ce, focal, tri, att = loss.cross_entropy, loss.focal, loss.triplet, loss.attention
        if ce is not None:
            parts["cross_entropy"] = ce.weight * sum_of(cross_entropy_loss(lg, labels, ce.label_smoothing) for lg in outputs.logits)
        if focal is not None:
            parts["focal"] = focal.weight * sum_of(sigmoid_focal_loss(lg, labels, focal.gamma, focal.alpha) for lg in outputs.logits)
        if tri is not None and tri.curriculum is not None:
            c = tri.curriculum
            state = curriculum_state(epoch, c.t0, c.t1, c.width_start, c.width_end)
            parts["triplet"] = tri.weight * curriculum_triplet_loss(outputs.embedding, labels, tri.margin, state)
        elif tri is not None:
            parts["triplet"] = tri.weight * batch_hard_triplet_loss(outputs.embedding, labels, tri.margin)
        if att is not None:
            heads = outputs.attention_logits
            parts["attention"] = att.weight * sum_of(multilabel_sigmoid_loss(lg, labels) for lg in heads) / len(heads)
        return sum_of(parts.values()), parts

    def leaves_parameters_unused(self) -> bool:
        """True when some head gets no loss (DistributedDataParallel must then look for unused parameters)."""
        net, loss = ARCHITECTURES.get(self.cfg.model.architecture), self.cfg.loss
        unused_attention = net.attention_heads and loss.attention is None
        unused_ranking = net.ranking_head and loss.triplet is None
        return not loss.classifies or unused_attention or unused_ranking


def sum_of(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of loss tensors (at least one)."""
    total: torch.Tensor | None = None
    for term in terms:
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no loss terms to add")
    return total


def batch_sampler(cfg: TrainConfig, labels: list[int], rank: int, world: int) -> Any:
    """P×K batches or shuffled full batches of ``labels``' indices (seeded, sharded by rank).

    Raises :class:`ConfigError` when the training split cannot fill one batch per rank, which
    needs the labels only: :func:`train` checks it before decoding any image.
    """
    if cfg.batch.sampler == "pk":
        sampler: Any = PKBatchSampler(labels, cfg.batch.ids_per_batch, cfg.batch.images_per_id, seed=cfg.seed, rank=rank, world=world)
    else:
        sampler = _ShuffledBatches(len(labels), cfg.batch.batch_size, seed=cfg.seed, rank=rank, world=world)
    if len(sampler) == 0:
        raise ConfigError(
            f"batch.batch_size={cfg.batch.batch_size} is larger than one epoch's worth of training images ({len(labels)}, {world} process(es))"
        )
    return sampler


def build_loader(cfg: TrainConfig, dataset: TrainImages, labels: list[int], rank: int, world: int) -> DataLoader:
    """DataLoader over ``dataset`` with :func:`batch_sampler`'s batches."""
    sampler = batch_sampler(cfg, labels, rank, world)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)


def is_train_run(folder: Path) -> bool:
    """True when ``folder`` holds a training run (epoch checkpoints or a final model) of this package."""
    return (folder / CHECKPOINT_DIR).is_dir() or meta_path(folder / FINAL_NAME).is_file()


class _ShuffledBatches(torch.utils.data.Sampler[list[int]]):
    """Full batches of a ``seed + epoch`` permutation (last partial batch dropped); rank r takes r::world."""

    def __init__(self, count: int, batch_size: int, *, seed: int, rank: int, world: int) -> None:
        self.count, self.batch_size, self.seed, self.rank, self.world = count, batch_size, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.count // self.batch_size) // self.world

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        batches = [order[s : s + self.batch_size] for s in range(0, self.count - self.batch_size + 1, self.batch_size)]
        usable = len(batches) - len(batches) % self.world
        return iter(batches[self.rank : usable : self.world])


def run_epoch(
    step: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    objective: BatchObjective,
    device: torch.device,
    bar: Progress[Any],
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` (1-based ``epoch``); returns mean losses, the count of training
    images, wall seconds, CPU seconds of this process (``cpu_seconds``, all its threads) and images/s;
    ``first_loss`` is the first step's loss (the reference of ``check_not_diverged``). ``scaler``: fp16's
    loss scaling (:meth:`~metricattack.compute.Compute.scaler`; a disabled one changes nothing)."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    step.train()
    totals: dict[str, torch.Tensor] = {}
    images_seen, batches, start, cpu_start = 0, 0, time.perf_counter(), time.process_time()
    first = torch.zeros(())
    for number, (images, labels) in enumerate(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss, parts = objective(step, images, labels, epoch, number)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # in fp16: skipped when a gradient overflowed (the scale is then lowered)
        scaler.update()
        if batches == 0:
            first = loss.detach()  # the reference of check_not_diverged
        for name, value in {"loss": loss, **parts}.items():
            totals[name] = totals.get(name, 0.0) + value.detach()
        images_seen, batches = images_seen + images.shape[0], batches + 1
        bar.update(1)
        if not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{images_seen / (time.perf_counter() - start):.0f}", refresh=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    stats = {name: float(total) / max(batches, 1) for name, total in totals.items()}
    stats["first_loss"] = float(first)
    rate = images_seen / seconds if seconds else 0.0
    return {**stats, "images": images_seen, "seconds": seconds, "cpu_seconds": cpu_seconds, "images_per_second": rate}


#: Training stops when an epoch's mean loss exceeds this multiple of the run's first-step loss (at least 1).
DIVERGENCE_FACTOR = 1000.0


def check_not_diverged(model: nn.Module, stats: dict[str, float], reference: float, epoch: int, lr: float) -> None:
    """ConfigError when epoch ``epoch`` diverged: a non-finite mean loss or weight, or a mean loss above
    :data:`DIVERGENCE_FACTOR` × ``reference`` (the first step's loss; a learning rate far too large
    multiplies the loss by thousands while the weights stay finite). Called before the epoch is saved;
    every rank decides alike (the losses are averaged over the ranks, the weights are the same)."""
    loss = stats["loss"]
    broken = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if math.isfinite(loss) and loss <= DIVERGENCE_FACTOR * max(reference, 1.0) and not broken:
        return
    what = f"weight {broken[0]} is not finite" if broken else f"the mean loss is {loss:.4g} (the first step's: {reference:.4g})"
    raise ConfigError(
        f"training diverged in epoch {epoch} at learning rate {lr:.4g}: {what}; this epoch was not saved. "
        "Lower the learning rate (optimizer.lr) and train again into a new output folder"
    )


def _across_ranks(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """Epoch statistics of all ranks: images summed, losses averaged, seconds of the slowest rank."""
    _, world = rank_and_world()
    if world == 1:
        return stats
    names = sorted(k for k in stats if k not in ("images", "seconds", "images_per_second"))  # cpu_seconds: the ranks' mean
    sums = torch.tensor([stats[k] for k in names] + [stats["images"]], dtype=torch.float64, device=device)
    slowest = torch.tensor([stats["seconds"]], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    out = {k: float(v) / world for k, v in zip(names, sums[:-1].tolist(), strict=True)}
    images, seconds = int(sums[-1].item()), float(slowest.item())
    return {**out, "images": images, "seconds": seconds, "images_per_second": images / seconds if seconds else 0.0}


def _latest_checkpoint(folder: Path) -> Path | None:
    """Highest-epoch checkpoint in ``folder`` whose JSON sidecar and train state both exist."""
    complete = [p for p in folder.glob("epoch-*.safetensors") if meta_path(p).is_file() and train_state_path(p).is_file()]
    return max(complete, default=None, key=lambda p: int(p.stem.split("-")[1]))


def _check_same_run(meta: dict[str, Any], cfg: TrainConfig, fingerprint: str, path: Path, variant: Variant) -> None:
    """Refuse to resume the run of checkpoint ``path`` when its config, dataset or variant differs."""
    out_dir = path.parent.parent
    if meta.get("variant", {}) != variant.identity:
        raise ConfigError(
            f"{out_dir} holds a run with other training settings ({meta.get('variant', {})!r} there, "
            f"{variant.identity!r} now); use another --out folder or remove it to start over"
        )
    try:
        saved = TrainConfig.model_validate(meta["config"]).result_defining()
    except ValidationError:
        raise ConfigError(f"{out_dir} holds a run whose recorded config is not valid for this version; use another --out folder") from None
    wanted = cfg.result_defining()
    for section in sorted(set(saved) | set(wanted)):
        if saved.get(section) != wanted.get(section):
            raise ConfigError(
                f"{out_dir} holds a run made with a different config ({section}: {saved.get(section)!r} there, "
                f"{wanted.get(section)!r} now); use another --out folder or remove it to start over"
            )
    if meta["dataset"]["fingerprint"] != fingerprint:
        raise ConfigError(f"{out_dir} holds a run trained on different data (dataset fingerprint changed); use another --out folder")
    if meta["epoch"] > cfg.schedule.epochs:
        raise ConfigError(f"{path} is already at epoch {meta['epoch']}, beyond schedule.epochs={cfg.schedule.epochs}")


def train(cfg: TrainConfig, out_dir: Path, variant: Variant | None = None) -> Path:
    """Train the model of ``cfg`` (and ``variant``), writing checkpoints under ``out_dir``;
    return the final checkpoint path."""
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    with process_group(device):
        return _train(cfg, out_dir, device, variant or Variant())


def _initial_weights(model: ReIDNet, checkpoint: Path, class_pids: list[int], root: Any) -> None:
    """Load ``checkpoint``'s weights into ``model``, refusing a model trained on other identities."""
    if checkpoint_meta(checkpoint)["meta"].get("class_pids", class_pids) != class_pids:
        raise ConfigError(f"cannot start from {checkpoint}: it was trained on other identities than {root}")
    model.load_state_dict(load_model(checkpoint).state_dict())


def _train(cfg: TrainConfig, out_dir: Path, device: torch.device, variant: Variant) -> Path:
    """Checks that need only names and labels (output folder, batch composition), then the run, holding ``out_dir``."""
    rank, world = rank_and_world()
    dataset = load_dataset(cfg.data.dataset, cfg.data.root)
    check_output_folder("output folder", out_dir, command="train", is_previous=is_train_run, datasets=[dataset.root])
    records, labels, class_pids = relabel(dataset.train)
    try:
        batch_sampler(cfg, labels, rank, world)
    except ConfigError as exc:
        raise ConfigError(f"training on {dataset.root}: {exc}") from None
    with claim_output(out_dir, "train"):
        return _run(cfg, out_dir, device, variant, dataset, (records, labels, class_pids))


def _run(
    cfg: TrainConfig, out_dir: Path, device: torch.device, variant: Variant, dataset: ReIDDataset, relabelled: tuple[list, list, list]
) -> Path:
    rank, world = rank_and_world()
    records, labels, class_pids = relabelled
    fingerprint = dataset_fingerprint(dataset)
    final, ckpt_dir = out_dir / FINAL_NAME, out_dir / CHECKPOINT_DIR

    latest = _latest_checkpoint(ckpt_dir)
    meta = checkpoint_meta(latest)["meta"] if latest else None
    if meta is not None:
        _check_same_run(meta, cfg, fingerprint, latest, variant)  # type: ignore[arg-type]
        finished = final.is_file() and meta_path(final).is_file()  # else a run stopped while writing it: written again below
        if meta["epoch"] == cfg.schedule.epochs and finished and checkpoint_meta(final)["meta"]["epoch"] == meta["epoch"]:
            return final

    torch.manual_seed(cfg.seed)
    # resuming or starting from given weights: no ImageNet initialisation to fetch
    model = build_model(cfg, len(class_pids), pretrained=latest is None and variant.init_checkpoint is None)
    if variant.init_checkpoint is not None and latest is None:
        _initial_weights(model, variant.init_checkpoint, class_pids, cfg.data.root)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    history: list[dict[str, float]] = []
    start_epoch = 0
    if latest is not None and meta is not None:
        model.load_state_dict(load_model(latest).state_dict())
        optimizer.load_state_dict(load_train_state(latest)["optimizer"])
        history, start_epoch = list(meta["history"]), int(meta["epoch"])
    model.to(device)
    losses = LossTerms(cfg)
    step: nn.Module = cfg.compute.prepare(_TrainStep(model))  # the network at cfg.compute's precision, losses in float32
    cfg.compute.prepare(model)  # what a variant's objective asks the model itself (adversarial training's attacks)
    scaler = cfg.compute.scaler(device)
    if latest is not None and "scaler" in (state := load_train_state(latest)):
        scaler.load_state_dict(state["scaler"])
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        step = nn.parallel.DistributedDataParallel(step, device_ids=ids, find_unused_parameters=losses.leaves_parameters_unused())

    images = TrainImages(records, labels, model.input_size, cfg.augmentation, cache=cfg.data.cache)
    loader = build_loader(cfg, images, labels, rank, world)
    objective = variant.objective(TrainingRun(model, losses, images, device))
    base = {
        "config": cfg.model_dump(mode="json"),
        "dataset": {"name": dataset.name, "root": str(dataset.root), "fingerprint": fingerprint, "train_images": len(records)},
        "class_pids": class_pids,
        "seed": cfg.seed,
        "code_version": __version__,
        "world_size": world,
        "variant": variant.identity,
        "init_checkpoint": str(variant.init_checkpoint) if variant.init_checkpoint else None,
    }
    show = is_main_process()  # the information lines; cfg.progress: bars (metricattack.progress)
    if show and start_epoch:
        log.info("resuming from %s (epoch %d/%d)", latest, start_epoch, cfg.schedule.epochs)
    with (
        bars_allowed(cfg.progress),
        Progress[int](desc="training", total=cfg.schedule.epochs, initial=start_epoch, unit="epoch", lines="none") as epochs,
    ):  # a bar; the epoch's line below
        for epoch in range(start_epoch + 1, cfg.schedule.epochs + 1):
            torch.manual_seed(cfg.seed + epoch)
            loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
            lr = cfg.optimizer.lr * variant.lr_factor * cfg.schedule.lr_factor(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with (
                Progress[Any](desc=f"epoch {epoch}/{cfg.schedule.epochs}", total=len(loader), unit="batch") as bar,
                cfg.compute.activate(),
            ):
                stats = _across_ranks(run_epoch(step, loader, optimizer, objective, device, bar, epoch, scaler), device)
            check_not_diverged(model, stats, (history[0] if history else stats).get("first_loss", stats["first_loss"]), epoch, lr)
            history.append({"epoch": epoch, "lr": lr, **stats})
            epochs.update(1)
            if show:
                log.info("epoch %d/%d: loss %.4f, %.1f images/s", epoch, cfg.schedule.epochs, stats["loss"], stats["images_per_second"])
            if is_main_process() and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.schedule.epochs):
                _save_epoch(model, optimizer, ckpt_dir, epoch, {**base, "epoch": epoch, "history": history}, scaler)
            barrier()
    if is_main_process():
        save_checkpoint(model.eval(), final, {**base, "epoch": cfg.schedule.epochs, "history": history})
    barrier()
    return final


def _save_epoch(
    model: ReIDNet, optimizer: torch.optim.Optimizer, folder: Path, epoch: int, meta: dict[str, Any], scaler: torch.amp.GradScaler
) -> None:
    """Write the resumable checkpoint of ``epoch`` (state with fp16's loss scale, then weights + JSON), then drop older ones."""
    path = folder / f"epoch-{epoch:03d}.safetensors"
    state: dict[str, Any] = {"epoch": epoch, "optimizer": optimizer.state_dict()}
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    save_train_state(path, state)
    save_checkpoint(model, path, meta)
    for old in folder.glob("epoch-*.safetensors"):
        if old != path:
            for file in (old, meta_path(old), train_state_path(old)):
                file.unlink(missing_ok=True)
