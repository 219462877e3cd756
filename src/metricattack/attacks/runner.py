"""Attack a dataset split batch by batch, and measure what the attack did.

:func:`plan_attack` fixes everything before the first batch: the threat model (which split is
perturbed, which images are active, each image's references, from clean features computed once
per model, detached) and the objective. :func:`attack_batches` then streams the split at native image
size (``make_loader`` buckets, sharded under ``torchrun``) and yields one
:class:`AttackedBatch` at a time, so memory is bounded by the batch size, not the split.

Features are always :func:`~metricattack.evaluation.features.extract_features`, i.e.
``model(images at native size)`` (the model resizes and normalises inside), for clean and
reloaded images alike, exactly as ``evaluate`` computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data.loading import make_loader
from ..data.types import DISTRACTOR_PID, JUNK_PID, ImageRecord, ReIDDataset
from ..errors import MetricAttackError
from ..evaluation.features import extract_features
from ..metrics.distance import Metric
from .objectives import EnsembleLoss, metrics_per_model
from .perturb import perturb
from .problem import CallCounts, ModelInfo
from .spec import AttackSpec
from .threats import THREATS, Selection, SplitFeatures, ThreatModel


def clean_features(
    models: Sequence[nn.Module], dataset: ReIDDataset, *, batch_size: int = 32, device: str | torch.device = "cpu"
) -> list[SplitFeatures]:
    """Clean query and gallery features of every model (models put in eval mode), by :func:`extract_features`."""
    return [
        SplitFeatures(
            extract_features(model, dataset.query, batch_size=batch_size, device=device, progress=False),
            extract_features(model, dataset.gallery, batch_size=batch_size, device=device, progress=False),
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
class AttackedBatch:
    """One attacked batch: ``number`` (this rank's batch order), ``indices [B]`` into the split, images
    ``[B,3,H,W]`` and the per-image call counts (:class:`~.problem.CallCounts`)."""

    number: int
    indices: torch.Tensor
    clean: torch.Tensor
    adversarial: torch.Tensor
    counts: CallCounts


class AttackBatches:
    """The adversarial batches of a plan, streamed (see :func:`attack_batches`); ``len()`` is the
    number of batches of this rank, skipped ones included (a progress bar's total)."""

    def __init__(
        self, plan: AttackPlan, spec: AttackSpec, batch_size: int, device: str | torch.device, skip: Callable[[int], bool]
    ) -> None:
        self.plan, self.spec, self.device, self.skip = plan, spec, device, skip
        self.loader = make_loader(plan.records, batch_size, shard=True)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[AttackedBatch]:
        plan, dataset, batches = self.plan, self.loader.dataset, self.loader.batch_sampler
        assert batches is not None  # make_loader always batches with a sampler
        for number, batch in enumerate(batches):
            if self.skip(number):
                continue
            indices = torch.tensor(batch, dtype=torch.long)
            clean = torch.stack([dataset[i][0] for i in batch]).to(self.device)
            active = plan.active[indices]
            if active.any():
                plan.objective.prepare(clean, indices)
                result = perturb(
                    clean, plan.objective, self.spec, indices=indices, active=active, minimise=plan.threat.minimise, models=plan.models
                )
                yield AttackedBatch(number, indices, clean, result.images, result.counts)
            else:
                yield AttackedBatch(number, indices, clean, clean.clone(), CallCounts.zeros(len(batch)))


def attack_batches(
    plan: AttackPlan,
    spec: AttackSpec,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    skip: Callable[[int], bool] = lambda number: False,
) -> AttackBatches:
    """Stream ``plan.records`` (native sizes, this rank's shard) as adversarial batches.

    Batch ``number``s follow the loader's deterministic order; ``skip(number)`` True skips
    the batch without reading its images (resuming).
    """
    return AttackBatches(plan, spec, batch_size, device, skip)


# ------------------------------------------------------------------ measurements
def true_positive_pairs(dataset: ReIDDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(query idx, gallery idx)`` of all true-positive pairs: same identity (not junk/distractor), other camera."""
    by_pid: dict[int, list[int]] = {}
    for g, r in enumerate(dataset.gallery):
        by_pid.setdefault(r.pid, []).append(g)
    qs, gs = [], []
    for q, r in enumerate(dataset.query):
        if r.pid in (JUNK_PID, DISTRACTOR_PID):
            continue
        for g in by_pid.get(r.pid, []):
            if dataset.gallery[g].camid != r.camid:
                qs.append(q)
                gs.append(g)
    return torch.tensor(qs, dtype=torch.long), torch.tensor(gs, dtype=torch.long)


@torch.no_grad()
def mean_true_positive_distance(
    metric: Metric, q_feats: torch.Tensor, g_feats: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor]
) -> float:
    """Mean ``d(p, x)`` over true-positive pairs (paper Sec. 5.1: 0.80 → 1.42 for B1); NaN without pairs."""
    q_idx, g_idx = pairs
    if q_idx.numel() == 0:
        return float("nan")
    return float(metric.paired(q_feats[q_idx], g_feats[g_idx]).mean())


@torch.no_grad()
def target_ranks(metric: Metric, q_feats: torch.Tensor, g_feats: torch.Tensor, dataset: ReIDDataset, targets: torch.Tensor) -> torch.Tensor:
    """``[n]`` 0-based rank of each attacked gallery image (``targets >= 0``, in gallery order) in
    its target probe's ranking.

    The ranking of probe ``t`` follows the evaluation protocol: junk images and images of
    ``t``'s identity and camera are left out; ties are broken by gallery index.
    """
    attacked = torch.nonzero(targets >= 0).flatten()
    g_pids = torch.tensor([r.pid for r in dataset.gallery])
    g_cams = torch.tensor([r.camid for r in dataset.gallery])
    q_pids = torch.tensor([r.pid for r in dataset.query])
    q_cams = torch.tensor([r.camid for r in dataset.query])
    g_emb = metric.embed(g_feats.float())
    positions = torch.arange(len(dataset.gallery))
    ranks = torch.empty(attacked.numel(), dtype=torch.long)
    for start in range(0, attacked.numel(), 256):
        gal = attacked[start : start + 256]
        tgt = targets[gal]
        dist = metric.pairwise_embedded(metric.embed(q_feats[tgt].float()), g_emb)  # [b, G]
        ignored = (g_pids == JUNK_PID).unsqueeze(0) | (
            (g_pids.unsqueeze(0) == q_pids[tgt].unsqueeze(1)) & (g_cams.unsqueeze(0) == q_cams[tgt].unsqueeze(1))
        )
        own = dist.gather(1, gal.unsqueeze(1))
        before = (dist < own) | ((dist == own) & (positions.unsqueeze(0) < gal.unsqueeze(1)))
        ranks[start : start + gal.numel()] = (before & ~ignored).sum(1)
    return ranks


def targeted_success(
    metric: Metric,
    q_feats: torch.Tensor,
    g_feats: torch.Tensor,
    dataset: ReIDDataset,
    targets: torch.Tensor,
    ks: Sequence[int] = (1, 10),
) -> dict[str, float]:
    """Fraction of attacked gallery images in the top-k of their target probe's ranking
    (:func:`target_ranks`). Returns ``{"top1": ..., "top10": ..., "mean_rank": ..., "num_targets": n}``
    (ranks are 1-based).
    """
    ranks = target_ranks(metric, q_feats, g_feats, dataset, targets)
    if ranks.numel() == 0:
        return {**{f"top{k}": float("nan") for k in ks}, "mean_rank": float("nan"), "num_targets": 0}
    out: dict[str, float] = {f"top{k}": float((ranks < k).float().mean()) for k in ks}
    out["mean_rank"] = float((ranks + 1).float().mean())
    out["num_targets"] = int(ranks.numel())
    return out
