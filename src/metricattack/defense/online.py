"""Online adversarial training, and the defense's training runs (variants of ``training.train``).

:func:`adversarial_batch` makes adversarial copies of one training batch against the current
model (in eval mode, so each image's objective depends on that image only), with the push
and pull guides of :class:`~.config.OnlineSection`. :class:`AdversarialBatches` wraps a
training loader so every batch becomes ``[clean; adversarial]`` with repeated labels, which
the trainer's own :func:`~metricattack.training.trainer.run_epoch` and loss consume unchanged.

:func:`train_defended` runs the trainer with online adversarial batches or from F's weights
(fine-tuning); it runs in one process (no DDP) and resumes like any training run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.perturb import perturb
from ..attacks.problem import ModelInfo
from ..distributed import rank_and_world, resolve_device
from ..errors import ConfigError
from ..models.checkpoint import checkpoint_meta
from ..training.config import TrainConfig
from ..training.trainer import Variant, train
from .config import OnlineSection


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
            pull[i] = features[candidates[int(torch.randint(candidates.numel(), (1,), generator=generator))]]
    return push, pull


def adversarial_batch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: OnlineSection,
    *,
    indices: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
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

        return perturb(images, objective, settings.attack, indices=indices, models=(ModelInfo.of(model),)).images
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
            generator = torch.Generator().manual_seed(self.settings.attack.seed * 1_000_003 + self.epoch * 10_007 + number)
            adv = adversarial_batch(
                self.model, images, labels, self.settings, indices=torch.arange(first, first + images.shape[0]), generator=generator
            )
            yield torch.cat([images, adv]), torch.cat([labels, labels])


def train_defended(
    cfg: TrainConfig, out_dir: Path, *, online: OnlineSection | None = None, init_checkpoint: Path | None = None, lr_factor: float = 1.0
) -> Path:
    """Train per ``cfg`` with online adversarial batches (``online``) and/or from
    ``init_checkpoint``'s weights at lr × ``lr_factor`` (fine-tuning); one process only.

    A :class:`~metricattack.training.trainer.Variant` of the trainer's run: same data, sampler,
    loss, checkpoints and resumption. Writes ``out_dir/model.safetensors`` and returns it.
    """
    if rank_and_world()[1] > 1:
        raise ConfigError("defense training (online adversarial / fine-tuning) runs in one process; start it without torchrun")
    identity = {
        "online": online.model_dump(mode="json") if online is not None else None,
        "init_sha256": checkpoint_meta(init_checkpoint)["weights_sha256"] if init_checkpoint is not None else None,
        "lr_factor": lr_factor,
    }
    device = resolve_device(cfg.device)

    def adversarial(loader: Any, model: nn.Module, epoch: int) -> AdversarialBatches:
        return AdversarialBatches(loader, model, online, device, epoch)  # type: ignore[arg-type]

    return train(cfg, out_dir, Variant(identity, init_checkpoint, lr_factor, adversarial if online is not None else None))
