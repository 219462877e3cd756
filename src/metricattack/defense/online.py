"""Online adversarial training, and the training loop the defence needs beyond ``training.train``.

:func:`adversarial_batch` makes adversarial copies of one training batch against the current
model (in eval mode, so each image's objective depends on that image only), with the push
and pull guides of :class:`~.config.OnlineSection`. :class:`AdversarialBatches` wraps a
training loader so every batch becomes ``[clean; adversarial]`` with repeated labels, which
the trainer's own :func:`~metricattack.training.trainer.run_epoch` and loss consume unchanged.

:func:`train_defended` is the epoch loop for the two cases ``training.train`` cannot do
(no batch hook, no initial weights): online adversarial training and fine-tuning from F.
It reuses the trainer's data, sampler, loss and epoch step; it runs in one process (no DDP)
and resumes from its last epoch checkpoint when re-run with the same settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..attacks.methods import perturb
from ..data.layouts import dataset_fingerprint, load_dataset
from ..distributed import rank_and_world, resolve_device
from ..errors import ConfigError
from ..io import sha256_json
from ..models.checkpoint import checkpoint_meta, load_model, load_train_state, meta_path, save_checkpoint, save_train_state, train_state_path
from ..models.reid import ReIDModel
from ..training.config import TrainConfig
from ..training.data import TrainImages, relabel
from ..training.trainer import LossTerms, build_loader, run_epoch
from .config import OnlineSection

FINAL_NAME = "model.safetensors"


def guide_references(features: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Push and pull references of every image of a batch.

    Args:
        features: ``[B, D]`` detached clean features; labels: ``[B]``.
    Returns:
        ``(push [B, D], pull [B, D])``: the mean feature of the other images of the same label
        (the image's own feature when it has none), and the feature of one image of another
        label drawn uniformly with ``generator`` (the image's own feature when there is none).
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    others = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    counts = others.sum(1, keepdim=True)
    push = torch.where(counts > 0, (others.float() @ features) / counts.clamp_min(1), features)
    pull = features.clone()
    for i in range(len(labels)):
        candidates = torch.nonzero(~same[i]).flatten()
        if candidates.numel():
            pull[i] = features[candidates[torch.randint(candidates.numel(), (1,), generator=generator).item()]]
    return push, pull


def adversarial_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: OnlineSection, *,
                      indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Adversarial copies ``[B,3,H,W]`` of ``images`` against ``model`` (left in its original mode).

    Maximises ``push·‖f(x') − push_ref‖² − pull·‖f(x') − pull_ref‖²`` per image with the
    stepper of ``settings`` (ε-ball, [0,1]); ``indices`` seed PGD's random start per image.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean = model(images)
        push, pull = guide_references(clean, labels, generator)
        use_push, use_pull = float("push" in settings.guides), float("pull" in settings.guides)

        def objective(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            f = model(x)
            return use_push * (f - push).pow(2).sum(1) - use_pull * (f - pull).pow(2).sum(1)

        return perturb(images, objective, settings.spec(), indices=indices)
    finally:
        model.train(was_training)


class AdversarialBatches:
    """A training loader whose batches ``(images [B], labels [B])`` become ``([clean; adv] [2B], labels [2B])``."""

    def __init__(self, loader: Any, model: nn.Module, settings: OnlineSection, device: torch.device, epoch: int) -> None:
        self.loader, self.model, self.settings, self.device, self.epoch = loader, model, settings, device, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for number, (images, labels) in enumerate(self.loader):
            images, labels = images.to(self.device), labels.to(self.device)
            first = (self.epoch * 100_000 + number) * images.shape[0]
            generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + self.epoch * 10_007 + number)
            adv = adversarial_batch(self.model, images, labels, self.settings,
                                    indices=torch.arange(first, first + images.shape[0]), generator=generator)
            yield torch.cat([images, adv]), torch.cat([labels, labels])


class _Step(nn.Module):
    """``forward`` = ``forward_train`` (what :func:`run_epoch` calls)."""

    def __init__(self, model: ReIDModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_train(images)


def _latest(folder: Path) -> Path | None:
    done = [p for p in folder.glob("epoch-*.safetensors") if meta_path(p).is_file() and train_state_path(p).is_file()]
    return max(done, default=None, key=lambda p: int(p.stem.split("-")[1]))


def train_defended(cfg: TrainConfig, out_dir: Path, *, online: OnlineSection | None = None,
                   init_checkpoint: Path | None = None, lr_factor: float = 1.0,
                   meta_extra: dict[str, Any] | None = None) -> Path:
    """Train per ``cfg`` (online adversarial batches when ``online``; from ``init_checkpoint``'s
    weights when given, lr × ``lr_factor``); write ``out_dir/model.safetensors`` and return it."""
    if rank_and_world()[1] > 1:
        raise ConfigError("defence training (online adversarial / fine-tuning) runs in one process; start it without torchrun")
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data.dataset, cfg.data.root)
    records, labels, class_pids = relabel(dataset.train)
    fingerprint = dataset_fingerprint(dataset)
    init_sha = None
    if init_checkpoint is not None:
        init_meta = checkpoint_meta(init_checkpoint)
        init_sha = init_meta["weights_sha256"]
        if init_meta["meta"].get("class_pids", class_pids) != class_pids:
            raise ConfigError(f"cannot fine-tune from {init_checkpoint}: it was trained on other identities than {cfg.data.root}")
    identity = {"config": cfg.result_defining(), "online": online.model_dump(mode="json") if online else None,
                "init_sha256": init_sha, "lr_factor": lr_factor, "dataset": fingerprint}
    key = sha256_json(identity)
    final, ckpt_dir = out_dir / FINAL_NAME, out_dir / "checkpoints"
    if final.is_file() and checkpoint_meta(final)["meta"].get("run_key") == key:
        return final

    torch.manual_seed(cfg.seed)
    m = cfg.model
    model = ReIDModel(m.backbone, len(class_pids), m.input_size, pretrained=m.pretrained, last_stride=m.last_stride, neck=m.neck, reduce_dim=m.reduce_dim)
    if init_checkpoint is not None:
        model.load_state_dict(load_model(init_checkpoint).state_dict())
    lr = cfg.optimizer.lr * lr_factor
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.optimizer.weight_decay)
    history: list[dict[str, Any]] = []
    start = 0
    latest = _latest(ckpt_dir)
    if latest is not None:
        meta = checkpoint_meta(latest)["meta"]
        if meta.get("run_key") != key:
            raise ConfigError(f"{out_dir} holds a defence training run with other settings; use another output folder or remove it")
        model.load_state_dict(load_model(latest).state_dict())
        optimizer.load_state_dict(load_train_state(latest)["optimizer"])
        history, start = list(meta["history"]), int(meta["epoch"])
    model.to(device)
    images = TrainImages(records, labels, m.input_size, cfg.augmentation, cache=cfg.data.cache)
    loader = build_loader(cfg, images, labels, 0, 1)
    losses, step = LossTerms(cfg), _Step(model)
    base = {"config": cfg.model_dump(mode="json"), "online": identity["online"], "init_checkpoint": str(init_checkpoint) if init_checkpoint else None,
            "init_sha256": init_sha, "lr_factor": lr_factor, "run_key": key, "class_pids": class_pids, "seed": cfg.seed,
            "dataset": {"name": dataset.name, "root": str(dataset.root), "fingerprint": fingerprint, "train_images": len(records)},
            "code_version": __version__, "world_size": 1, **(meta_extra or {})}
    for epoch in range(start + 1, cfg.schedule.epochs + 1):
        torch.manual_seed(cfg.seed + epoch)
        loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        for group in optimizer.param_groups:
            group["lr"] = lr * cfg.schedule.lr_factor(epoch)
        batches = AdversarialBatches(loader, model, online, device, epoch) if online is not None else loader
        with tqdm(total=len(loader), desc=f"defence epoch {epoch}/{cfg.schedule.epochs}", disable=not cfg.progress, leave=False) as bar:
            stats = run_epoch(step, batches, optimizer, losses, device, bar)  # type: ignore[arg-type]
        history.append({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats})
        path = ckpt_dir / f"epoch-{epoch:03d}.safetensors"
        save_train_state(path, {"epoch": epoch, "optimizer": optimizer.state_dict()})
        save_checkpoint(model, path, {**base, "epoch": epoch, "history": history})
        for old in ckpt_dir.glob("epoch-*.safetensors"):
            if old != path:
                for file in (old, meta_path(old), train_state_path(old)):
                    file.unlink(missing_ok=True)
    return save_checkpoint(model.eval(), final, {**base, "epoch": cfg.schedule.epochs, "history": history})
