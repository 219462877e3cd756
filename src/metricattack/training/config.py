"""The training configuration (YAML → :class:`TrainConfig`), validated with clear errors.

Example (``configs/paper/market1501-b1.yaml``)::

    data: {dataset: market1501, root: data/Market-1501-v15.09.15}
    model: {backbone: resnet50, pretrained: true, input_size: [256, 128], last_stride: 1}
    loss: {cross_entropy: {label_smoothing: 0.0}}
    optimizer: {lr: 0.00035, weight_decay: 0.0005}
    schedule: {epochs: 60, lr_steps: [20, 40], lr_gamma: 0.1}
    batch: {batch_size: 32, sampler: random}
    seed: 0

``model.architecture`` picks the network (default ``reid``, the base models' ``ReIDModel``):
``hacnn`` and ``mancs`` have sections of their own (:class:`HACNNSection`,
:class:`MancsSection`; ``configs/paper/*-hacnn.yaml``, ``*-mancs.yaml``). Errors name the
section with its architecture, e.g. ``model.hacnn.channels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

from ..compute import Compute, DefaultComputeUnrecorded
from ..config import StrictModel, load_config
from ..data.layouts import DATASETS
from ..models.backbones import BACKBONES
from ..models.base import ARCHITECTURES

#: A name registered in :data:`~metricattack.models.backbones.BACKBONES` (checked when a config loads).
BackboneName = Annotated[str, AfterValidator(BACKBONES.check)]

# Fields that change how fast or where a run executes but not what it computes; a resumed
# run may differ in these (and in ``schedule.epochs``, to extend a finished run).
RUNTIME_FIELDS = ("device", "num_workers", "checkpoint_every", "progress")


class DataSection(StrictModel):
    """Which dataset to train on (its ``train`` split)."""

    dataset: str = Field(description="dataset layout name, registered in metricattack.data.layouts.DATASETS (market1501, folder, ...)")
    root: Path = Field(description="dataset folder (or its parent)")
    cache: bool = Field(False, description="decode + resize every training image once and keep it in memory (uint8)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return DATASETS.check(name)


class ReIDModelSection(StrictModel):
    """A :class:`~metricattack.models.reid.ReIDModel` (backbone + BN neck; the paper's B1–B4)."""

    architecture: Literal["reid"] = "reid"
    backbone: BackboneName
    pretrained: bool | str = Field(False, description="true: torchvision ImageNet weights; a path: local weights file")
    input_size: tuple[PositiveInt, PositiveInt] = (256, 128)
    last_stride: Literal[1, 2] = 1
    neck: Literal["bnneck", "none"] = "bnneck"
    reduce_dim: PositiveInt | None = None
    feature_space: Literal["auto", "neck", "pooled"] = Field(
        "auto",
        description="retrieval features: 'neck' (BN-neck output), 'pooled' (pooled trunk features), or 'auto': "
        "'pooled' for a triplet-only model (the space its loss trains), 'neck' when a classification loss is used",
    )

    @property
    def label(self) -> str:
        """Short name for messages (``resnet50``)."""
        return self.backbone

    def arguments(self, loss: LossSection) -> dict[str, Any]:
        """Constructor arguments of the model (``feature_space: auto`` resolved against ``loss``)."""
        args = self.model_dump(exclude={"architecture"})
        if self.feature_space == "auto":
            args["feature_space"] = "neck" if loss.classifies else "pooled"
        return args


class HACNNSection(StrictModel):
    """An :class:`~metricattack.models.hacnn.HACNN` (trained from scratch; defaults = the HACNN paper's network)."""

    architecture: Literal["hacnn"]
    input_size: tuple[PositiveInt, PositiveInt] = (160, 64)
    channels: tuple[PositiveInt, PositiveInt, PositiveInt] = Field((128, 256, 384), description="widths of the three levels")
    branch_dim: PositiveInt = Field(512, description="size of the global and of the local feature")
    regions: PositiveInt = Field(4, description="T, hard-attention regions (local streams)")
    region_size: tuple[PositiveInt, PositiveInt] = Field((24, 28), description="level-1 region (h, w); halved at each level")

    @field_validator("channels")
    @classmethod
    def _multiples_of_16(cls, channels: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(c % 16 for c in channels):
            raise ValueError(f"every width must be a multiple of 16 (channel attention reduces by 16), got {list(channels)}")
        return channels

    @property
    def label(self) -> str:
        return "hacnn"

    def arguments(self, loss: LossSection) -> dict[str, Any]:
        return self.model_dump(exclude={"architecture"})


class MancsSection(StrictModel):
    """A :class:`~metricattack.models.mancs.Mancs` (defaults: the Mancs paper's ResNet-50 network; the 256×128 input is our choice)."""

    architecture: Literal["mancs"]
    backbone: BackboneName = Field("resnet50", description="a ResNet of the backbone registry (resnet18/34/50, resnext50_32x4d)")
    pretrained: bool | str = Field(False, description="true: torchvision ImageNet weights; a path: local weights file")
    input_size: tuple[PositiveInt, PositiveInt] = (256, 128)
    last_stride: Literal[1, 2] = 1
    fab_reduction: PositiveInt = Field(16, description="channel reduction inside each fully attentional block")
    ranking_dim: PositiveInt | None = Field(
        None, description="size of the ranking branch's FC output, the test feature; null: the trunk's width"
    )

    @property
    def label(self) -> str:
        return f"mancs ({self.backbone})"

    def arguments(self, loss: LossSection) -> dict[str, Any]:
        return self.model_dump(exclude={"architecture"})


class PythonModelSection(StrictModel):
    """A network of one's own, ``python:MODULE:FUNCTION`` (:class:`~metricattack.models.python_net.PythonNet`):
    ``FUNCTION()`` returns an ``nn.Module`` mapping images in [0,1] to features; a linear classifier
    on its features serves cross-entropy. ``MODULE`` must be importable (installed, or on ``PYTHONPATH``)."""

    architecture: Literal["python"]
    source: str = Field(pattern=r"^python:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$", description="python:MODULE:FUNCTION")
    input_size: tuple[PositiveInt, PositiveInt] = Field((256, 128), description="size the training images are resized to")

    @property
    def label(self) -> str:
        return self.source

    def arguments(self, loss: LossSection) -> dict[str, Any]:
        return self.model_dump(exclude={"architecture"})


def _architecture_tag(value: Any) -> str:
    """The ``architecture`` of a model section (``reid`` when absent, as in configs written before it existed)."""
    if isinstance(value, dict):
        return str(value.get("architecture", "reid"))
    return str(getattr(value, "architecture", "reid"))


ModelSection = Annotated[
    Annotated[ReIDModelSection, Tag("reid")]
    | Annotated[HACNNSection, Tag("hacnn")]
    | Annotated[MancsSection, Tag("mancs")]
    | Annotated[PythonModelSection, Tag("python")],
    Discriminator(_architecture_tag),
]
"""The ``model:`` section: one of the architectures' sections, chosen by its ``architecture`` key."""


class CrossEntropyLoss(StrictModel):
    """Identity classification loss (softmax cross-entropy) on every classification head's logits."""

    weight: PositiveFloat = 1.0
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class FocalLoss(StrictModel):
    """Sigmoid focal loss (Lin et al. 2017) on every classification head's logits (Mancs' classification branch).

    Each identity output is a binary classifier; ``gamma`` focuses on the badly classified ones,
    ``alpha`` (off by default) weighs the identity's own output against the others.
    """

    weight: PositiveFloat = 1.0
    gamma: float = Field(2.0, ge=0.0, description="focusing exponent of (1 - p_t); 0 = binary cross-entropy")
    alpha: float | None = Field(None, gt=0.0, lt=1.0, description="weight of the positive output (1 - alpha for the others); null = none")


class CurriculumSampling(StrictModel):
    """Mancs' curriculum over negatives (:func:`~metricattack.training.losses.curriculum_state`).

    Each anchor's negatives in the batch are ranked by distance (0 = closest, the hardest) and one
    is drawn per (anchor, positive) pair from a Gaussian over the rank, whose mean moves from the
    easiest negative at epoch 1 to the hardest at epoch ``t0`` and whose width (a fraction of the
    rank range) shrinks from ``width_start`` at epoch 1 to ``width_end`` at epoch ``t1``.
    """

    t0: PositiveInt = Field(description="epoch (1-based) at which the Gaussian's mean reaches the hardest negative")
    t1: PositiveInt = Field(description="epoch (1-based) at which its width reaches width_end (t1 >= t0)")
    width_start: float = Field(0.5, gt=0.0, description="width at epoch 1, as a fraction of the rank range")
    width_end: float = Field(0.02, gt=0.0, description="width from epoch t1 on, as a fraction of the rank range")

    @model_validator(mode="after")
    def _ordered(self) -> CurriculumSampling:
        if self.t1 < self.t0:
            raise ValueError(f"t1 ({self.t1}) must not come before t0 ({self.t0}): the width shrinks until the mean has arrived")
        if self.width_end > self.width_start:
            raise ValueError(f"width_end ({self.width_end}) must not exceed width_start ({self.width_start}): the Gaussian narrows")
        return self


class TripletLoss(StrictModel):
    """Triplet loss on the model's embedding (the pooled features before the BN neck for ``reid``).

    ``sampling``: ``batch_hard`` (each anchor's farthest positive and closest negative in the
    batch) or ``curriculum`` (Mancs: every positive in turn, a negative drawn by distance rank
    as ``curriculum`` says).
    """

    weight: PositiveFloat = 1.0
    margin: PositiveFloat = 0.3
    sampling: Literal["batch_hard", "curriculum"] = "batch_hard"
    curriculum: CurriculumSampling | None = Field(None, description="the curriculum of sampling: curriculum")

    @model_validator(mode="after")
    def _curriculum_needs_schedule(self) -> TripletLoss:
        if (self.sampling == "curriculum") != (self.curriculum is not None):
            raise ValueError("loss.triplet.curriculum is set exactly when sampling is curriculum")
        return self


class AttentionLoss(StrictModel):
    """Mancs' attention loss: multi-label sigmoid cross-entropy of the attention head (the pooled,
    concatenated masks of the attention blocks), mean over heads."""

    weight: PositiveFloat = 1.0


class LossSection(StrictModel):
    """The losses; their weighted sum is minimised."""

    cross_entropy: CrossEntropyLoss | None = None
    focal: FocalLoss | None = None
    triplet: TripletLoss | None = None
    attention: AttentionLoss | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> LossSection:
        if self.cross_entropy is None and self.focal is None and self.triplet is None:
            raise ValueError("set loss.cross_entropy, loss.focal and/or loss.triplet")
        return self

    @property
    def classifies(self) -> bool:
        """True when a loss trains the classification heads (cross-entropy or focal)."""
        return self.cross_entropy is not None or self.focal is not None


class OptimizerSection(StrictModel):
    """Adam."""

    name: Literal["adam"] = "adam"
    lr: PositiveFloat = 3.5e-4
    weight_decay: float = Field(5e-4, ge=0.0)


class ScheduleSection(StrictModel):
    """Epochs and a per-epoch learning-rate schedule: linear warm-up, then step decay."""

    epochs: PositiveInt
    warmup_epochs: NonNegativeInt = 0
    lr_steps: list[PositiveInt] = Field(default_factory=list, description="epochs (1-based) at which lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0.0, le=1.0)

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the base lr during 1-based ``epoch``."""
        warm = min(1.0, epoch / (self.warmup_epochs + 1)) if self.warmup_epochs else 1.0
        return warm * self.lr_gamma ** sum(epoch >= step for step in self.lr_steps)


class BatchSection(StrictModel):
    """Batch composition: shuffled images, or P identities × K images (``pk``, needed by triplet)."""

    batch_size: PositiveInt = 32
    sampler: Literal["random", "pk"] = "random"
    images_per_id: PositiveInt = Field(4, description="K of the P×K sampler; P = batch_size / K")

    @model_validator(mode="after")
    def _divisible(self) -> BatchSection:
        if self.sampler == "pk" and (self.batch_size % self.images_per_id or self.batch_size // self.images_per_id < 2):
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of images_per_id ({self.images_per_id}) "
                "with at least 2 identities per batch"
            )
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (BatchNorm needs more than one image)")
        return self

    @property
    def ids_per_batch(self) -> int:
        """P of the P×K sampler."""
        return self.batch_size // self.images_per_id


class AugmentSection(StrictModel):
    """Light augmentation at the model input size."""

    flip: bool = True
    pad: NonNegativeInt = Field(10, description="zero-pad by this many pixels, then randomly crop back (0 = off)")


class TrainRecipe(DefaultComputeUnrecorded):
    """How to train, without the data source: what :class:`TrainConfig` holds besides ``data``.

    The benchmark's model entries embed it (their data is the benchmark's dataset).
    """

    model: ModelSection
    loss: LossSection
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection
    batch: BatchSection = BatchSection()
    augmentation: AugmentSection = AugmentSection()
    seed: int = 0
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N")
    num_workers: NonNegativeInt = 0
    checkpoint_every: PositiveInt = Field(1, description="save a resumable checkpoint every this many epochs")
    progress: bool = Field(True, description="progress bars on a terminal; false: the information lines only (metricattack.progress)")
    compute: Compute = Field(
        Compute(),
        description="precision (fp32 / bf16 / fp16 with loss scaling), channels_last, cudnn_benchmark (metricattack.compute); "
        "recorded in the checkpoint when not the default",
    )

    @model_validator(mode="after")
    def _triplet_needs_pk(self) -> TrainRecipe:
        if self.loss.triplet is not None and self.batch.sampler != "pk":
            raise ValueError("loss.triplet needs batch.sampler: pk (batch-hard mining needs several images per identity)")
        return self

    @model_validator(mode="after")
    def _attention_needs_attention_heads(self) -> TrainRecipe:
        if self.loss.attention is not None and not ARCHITECTURES.get(self.model.architecture).attention_heads:
            with_heads = ", ".join(n for n in ARCHITECTURES.names() if ARCHITECTURES.get(n).attention_heads)
            raise ValueError(
                f"loss.attention needs a model with attention heads (model.architecture: {with_heads}), not {self.model.architecture}"
            )
        return self


class TrainConfig(TrainRecipe):
    """Everything :func:`~metricattack.training.trainer.train` needs: a recipe and its training data."""

    data: DataSection

    def result_defining(self) -> dict[str, Any]:
        """The config without runtime-only fields and ``schedule.epochs`` (compared when resuming)."""
        data = self.model_dump(mode="json")
        for name in RUNTIME_FIELDS:
            data.pop(name, None)
        data["schedule"].pop("epochs", None)
        return data


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load a training YAML with ``key.sub=value`` overrides (one ConfigError naming every bad field)."""
    return load_config(TrainConfig, path, overrides)
