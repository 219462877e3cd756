"""The in-memory attack engine: attack a split of a dataset → adversarial images and features.

:func:`check_attack` refuses a request (method × threat model × models) with the reason, from
labels only, before anything is loaded or written. :func:`plan_attack` fixes everything before
the first batch: the threat model (which split is perturbed, which images are active, each
image's references, from clean features computed once per model, detached) and the objective.
:func:`attack_batches` then streams the split at native image size (``make_loader`` buckets,
sharded under ``torchrun``) and yields one :class:`AttackedBatch` at a time -- adversarial
images, per-image call counts and the adversarial features of every model asked for -- so
memory is bounded by the batch size, not the split. :func:`attack_split` collects the features
and counts of a whole split in memory (the defense, the benchmark's white-box numbers, the
robustness command); the ``attack`` command's writer (:mod:`.writer`) saves the stream instead.

Features are always :func:`~metricattack.evaluation.features.extract_features`, i.e.
``model(images at native size)`` (the model resizes and normalises inside), for clean and
reloaded images alike, exactly as ``evaluate`` computes them; images the attack leaves alone
keep their clean features (not recomputed: distractors and junk are most of a Market-like gallery).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data.loading import make_loader, read_batches
from ..data.types import ImageRecord, ReIDDataset
from ..distributed import rank_and_world
from ..errors import MetricAttackError
from ..evaluation.features import extract_features
from ..metrics.distance import Metric
from ..overlap import DEFAULT_WORKERS, check_workers
from .objectives import EnsembleLoss, metrics_per_model
from .ops import linf_255, quantize
from .perturb import perturb
from .problem import COUNT_NAMES, CallCounts, ModelInfo
from .spec import AttackSpec
from .threats import THREATS, Selection, SplitFeatures, ThreatModel


def clean_features(
    models: Sequence[nn.Module],
    dataset: ReIDDataset,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    workers: int = DEFAULT_WORKERS,
) -> list[SplitFeatures]:
    """Clean query and gallery features of every model (models put in eval mode), by :func:`extract_features`."""
    return [
        SplitFeatures(
            extract_features(model, dataset.query, batch_size=batch_size, device=device, progress=False, workers=workers),
            extract_features(model, dataset.gallery, batch_size=batch_size, device=device, progress=False, workers=workers),
        )
        for model in models
    ]


@dataclass(frozen=True)
class AttackPlan:
    """Everything fixed before the first batch.

    Attributes:
        threat: the threat model (a :data:`~.threats.THREATS` entry).
        records: the perturbed split's records.
        selection: which images are perturbed (``active [N]``), their references and targets.
        objective: per-image loss over all attacked models.
        models: what the method may know of each attacked model (input sizes).
    """

    threat: ThreatModel
    records: tuple[ImageRecord, ...]
    selection: Selection
    objective: EnsembleLoss
    models: tuple[ModelInfo, ...]

    @property
    def split(self) -> str:
        """The perturbed split (``gallery`` or ``query``)."""
        return self.threat.split

    @property
    def active(self) -> torch.Tensor:
        """``[N]`` bool: the images that are perturbed (others are left unchanged)."""
        return self.selection.active

    @property
    def targets(self) -> torch.Tensor | None:
        """``[N]`` target probe per image (targeted threat models, −1 when inactive) or None."""
        return self.selection.targets


def check_attack(models: Sequence[nn.Module], threat: str, spec: AttackSpec) -> ThreatModel:
    """The threat model ``threat``, after refusing (ConfigError with the reason) a method, objective or
    model it cannot attack with; labels only, so it runs before any output is claimed."""
    model = THREATS.get(threat)
    model.check(spec.build(), spec.objective, models)
    return model


def plan_attack(
    models: Sequence[nn.Module],
    metrics: Metric | Sequence[Metric],
    dataset: ReIDDataset,
    threat: str,
    spec: AttackSpec,
    features: Sequence[SplitFeatures],
) -> AttackPlan:
    """Build the objective of ``threat`` (a :data:`~.threats.THREATS` name) from each model's clean ``features``."""
    rule = check_attack(models, threat, spec)
    if len(features) != len(models):
        raise MetricAttackError(f"got clean features of {len(features)} models for {len(models)} models")
    per_model = metrics_per_model(models, metrics)
    selection = rule.select(dataset, spec.seed)
    objective = rule.objective_name(spec.objective)
    parts = []
    for model, metric, feats in zip(models, per_model, features, strict=True):
        model.eval()
        parts.append(rule.part(model, metric, feats, selection, objective))
    infos = tuple(ModelInfo.of(model) for model in models)
    return AttackPlan(rule, dataset.split(rule.split), selection, EnsembleLoss(parts), infos)


@dataclass(frozen=True)
class FeatureModel:
    """A model whose adversarial features the engine computes: ``model`` and its clean features
    ``clean [N, D]`` of the perturbed split (kept for the images the attack leaves alone)."""

    model: nn.Module
    clean: torch.Tensor


@dataclass(frozen=True)
class AttackedBatch:
    """One attacked batch.

    Attributes:
        number: this rank's batch order (resumption skips by it).
        indices: ``[B]`` positions in the perturbed split.
        clean, adversarial: ``[B,3,H,W]`` images in [0,1] (``adversarial`` within ε of ``clean``).
        active: ``[B]`` bool, the images the threat model perturbs.
        counts: per-image call counts (:class:`~.problem.CallCounts`).
        features: per :class:`FeatureModel` asked for, the features ``[B, D]`` of the adversarial images
            (``saved=True``: of the images rounded to the 8-bit grid, as saved) on the CPU.
    """

    number: int
    indices: torch.Tensor
    clean: torch.Tensor
    adversarial: torch.Tensor
    active: torch.Tensor
    counts: CallCounts
    features: tuple[torch.Tensor, ...] = ()


class AttackBatches:
    """The adversarial batches of a plan, streamed (see :func:`attack_batches`); ``len()`` is the
    number of batches of this rank, skipped ones included (a progress bar's total)."""

    def __init__(
        self,
        plan: AttackPlan,
        spec: AttackSpec,
        batch_size: int,
        device: str | torch.device,
        skip: Callable[[int], bool],
        feature_models: Sequence[FeatureModel] = (),
        saved: bool = False,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.plan, self.spec, self.device, self.skip = plan, spec, torch.device(device), skip
        self.feature_models, self.saved, self.workers = tuple(feature_models), saved, check_workers(workers)
        self.loader = make_loader(plan.records, batch_size, shard=True)

    def __len__(self) -> int:
        return len(self.loader)

    def order(self) -> list[int]:
        """The numbers of the batches to attack (not skipped), those without an active image spread
        evenly between the others (:func:`interleave`): writing such a batch is host work only, which
        overlaps with the model's work on its neighbours. Numbers and batches do not depend on the order."""
        assert self.loader.batch_sampler is not None  # make_loader always batches with a sampler
        todo = [(n, b) for n, b in enumerate(self.loader.batch_sampler) if not self.skip(n)]
        active = [bool(self.plan.active[b].any()) for _, b in todo]
        return interleave(
            [n for (n, _), a in zip(todo, active, strict=True) if a], [n for (n, _), a in zip(todo, active, strict=True) if not a]
        )

    def __iter__(self) -> Generator[AttackedBatch, None, None]:
        plan = self.plan
        stream = read_batches(self.loader, self.order(), workers=self.workers, pin_memory=self.device.type == "cuda")
        for number, batch, images in stream:
            indices = torch.tensor(batch, dtype=torch.long)
            clean = images.to(self.device, non_blocking=True)
            active = plan.active[indices]
            if active.any():
                plan.objective.prepare(clean, indices)
                result = perturb(
                    clean, plan.objective, self.spec, indices=indices, active=active, minimise=plan.threat.minimise, models=plan.models
                )
                adversarial, counts = result.images, result.counts
            else:
                adversarial, counts = clean.clone(), CallCounts.zeros(len(batch))
            features = self._features(adversarial, clean, indices, active)
            yield AttackedBatch(number, indices, clean, adversarial, active, counts, features)

    @torch.no_grad()
    def _features(
        self, adversarial: torch.Tensor, clean: torch.Tensor, indices: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Adversarial features of the batch per feature model (clean rows for the images left alone)."""
        if not self.feature_models:
            return ()
        images = quantize(adversarial, clean, self.spec.eps).float().div_(255.0) if self.saved else adversarial
        chosen = images[active.to(images.device)]
        out = []
        for entry in self.feature_models:
            feats = entry.clean[indices].clone()
            if active.any():
                feats[active] = entry.model(chosen).float().cpu()
            out.append(feats)
        return tuple(out)


def interleave(busy: Sequence[int], idle: Sequence[int]) -> list[int]:
    """``busy`` and ``idle`` merged, each in its order, ``idle`` spread evenly between the first and the
    last ``busy``: ``interleave([1, 2], [7, 8, 9, 10]) == [1, 7, 8, 9, 10, 2]`` (position ``k / (len - 1)``
    in ``busy``, ``(k + 1) / (len + 1)`` in ``idle``, ties to ``busy``). The model starts on the first
    batch read, and what is written after its last batch overlaps with nothing, so that is one batch."""
    keys = [(k / max(len(busy) - 1, 1), 0, n) for k, n in enumerate(busy)] + [((k + 1) / (len(idle) + 1), 1, n) for k, n in enumerate(idle)]
    return [n for *_, n in sorted(keys)]


def attack_batches(
    plan: AttackPlan,
    spec: AttackSpec,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    skip: Callable[[int], bool] = lambda number: False,
    feature_models: Sequence[FeatureModel] = (),
    saved: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> AttackBatches:
    """Stream ``plan.records`` (native sizes, this rank's shard) as adversarial batches.

    Batch ``number``s follow the loader's deterministic order; ``skip(number)`` True skips
    the batch without reading its images (resuming). Each batch carries the adversarial features
    of every model of ``feature_models`` (``saved``: of the 8-bit images, as saved). The next
    batches' images are decoded on ``workers`` threads while the model attacks this one
    (:func:`~metricattack.data.loading.read_batches`; 0: no overlap); the batches do not depend on it.
    """
    return AttackBatches(plan, spec, batch_size, device, skip, feature_models, saved, workers)


@dataclass(frozen=True)
class SplitAttack:
    """A whole perturbed split attacked in memory (:func:`attack_split`).

    Attributes:
        features: per feature model, adversarial features ``[N, D]`` of the split (clean rows for
            the images left alone).
        counts: ``forward`` / ``backward`` / ``zero_gradient`` → ``[N]`` per-image call counts.
        linf_255: ``[N]`` per-image L∞ of the adversarial images (0..255 units; of the 8-bit images when ``saved``).
        active: ``[N]`` bool, the images the threat model perturbs.
    """

    features: tuple[torch.Tensor, ...]
    counts: dict[str, torch.Tensor]
    linf_255: torch.Tensor
    active: torch.Tensor


def attack_split(
    plan: AttackPlan,
    spec: AttackSpec,
    feature_models: Sequence[FeatureModel],
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    saved: bool = False,
) -> SplitAttack:
    """Attack the whole perturbed split of ``plan`` in memory (one process) and collect the adversarial
    features of ``feature_models``, the per-image call counts and L∞ (the images themselves are not kept)."""
    if rank_and_world()[1] > 1:
        raise MetricAttackError("an in-memory attack of a split runs in one process; start it without torchrun")
    count = len(plan.records)
    features = [entry.clean.clone() for entry in feature_models]
    counts = {name: torch.zeros(count, dtype=torch.long) for name in COUNT_NAMES}
    linf = torch.zeros(count)
    for batch in attack_batches(plan, spec, batch_size=batch_size, device=device, feature_models=feature_models, saved=saved):
        for rows, feats in zip(features, batch.features, strict=True):
            rows[batch.indices] = feats
        for name in COUNT_NAMES:
            counts[name][batch.indices] = getattr(batch.counts, name)
        adversarial = quantize(batch.adversarial, batch.clean, spec.eps).float().div_(255.0) if saved else batch.adversarial
        linf[batch.indices] = linf_255(adversarial, batch.clean).cpu()
    return SplitAttack(tuple(features), counts, linf, plan.active.clone())
