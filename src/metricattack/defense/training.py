"""``train_defended``: the trainer's run with a defense's batch objective and/or from given weights.

A :class:`~metricattack.training.trainer.Variant` of the normal training: same data, sampler,
recipe, checkpoints and resumption; the variant's identity (method, its settings, the start
weights' SHA-256, the learning-rate factor) is recorded in every checkpoint and must match to
resume. One process only (the inner attacks run on the whole batch).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..config import StrictModel
from ..distributed import rank_and_world
from ..errors import ConfigError
from ..models.checkpoint import checkpoint_meta
from ..training.config import TrainConfig
from ..training.trainer import BatchObjective, TrainingRun, Variant, recipe_objective, train
from .methods import DEFENSES


def train_defended(
    cfg: TrainConfig,
    out_dir: Path,
    *,
    method: str | None = None,
    settings: StrictModel | None = None,
    init_checkpoint: Path | None = None,
    lr_factor: float = 1.0,
) -> Path:
    """Train per ``cfg`` with ``method``'s objective (a :data:`DEFENSES` name trained online, with
    its ``settings``) and/or from ``init_checkpoint``'s weights at lr × ``lr_factor``.

    Writes ``out_dir/model.safetensors`` and returns it.
    """
    if rank_and_world()[1] > 1:
        raise ConfigError("defense training (adversarial training / fine-tuning) runs in one process; start it without torchrun")
    objective: Callable[[TrainingRun], BatchObjective] = recipe_objective
    if method is not None:
        build = DEFENSES.get(method).objective
        if build is None or settings is None or not isinstance(settings, DEFENSES.get(method).settings):
            raise ConfigError(f"{method} is not trained online, or its settings are missing")
        objective = partial(build, settings)
    identity = {
        "method": method,
        "settings": settings.model_dump(mode="json") if settings is not None else None,
        "init_sha256": checkpoint_meta(init_checkpoint)["weights_sha256"] if init_checkpoint is not None else None,
        "lr_factor": lr_factor,
    }
    return train(cfg, out_dir, Variant(identity, init_checkpoint, lr_factor, objective))
