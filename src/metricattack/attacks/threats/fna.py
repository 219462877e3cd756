"""``fna`` (FNA, the furthest-negative attack of Bouniot et al., CVPR-W 2020; CEA-LIST/adv-reid): push
each probe away from its same-identity guides and pull it toward the farthest other identity.

**Guides, and what the attacker is assumed to know.** The guides are the **query split's own
images**: a probe's positive guides are the probes of its identity (itself included, as adv-reid
does, so the set is never empty), and the negative guide is the centroid of the probes of another
identity, the one farthest from the probe's clean feature. So FNA reads the *query* split's
identity labels (the attacker knows which of its own probes show the same person, e.g. from a
tracker's tracklets or its own photos), never the gallery's images or labels, and never a label
the evaluation alone should know. It perturbs the **query** split (as adv-reid), ranked against
the clean gallery; junk and distractor probes are not attacked (they have no identity).

**Loss** of probe ``x`` (perturbed ``x'``) with positive guides ``G(x)`` and the farthest other
identity's probes ``N(x)`` (clean features, per attacked model: each model picks its own farthest
identity by the distance of ``x``'s clean feature to the identities' centroids in its metric's space)::

    L = mean_{g ∈ G(x)} d(g, f(x')) − mean_{n ∈ N(x)} d(n, f(x')),   maximised.

The second term is the distance to the centroid ``c`` of ``N(x)`` up to a constant
(``mean_n d(n, f) = s‖e(f) − c‖² + spread``, :mod:`~metricattack.attacks.objectives`), i.e.
adv-reid's pull toward the farthest prototype. One departure: adv-reid *sums* the push distances
over the guides padded with the probe itself to the largest identity's probe count, which
weights the push that many times the pull; here both are means, so push and pull weigh the same
for every probe whatever its identity's size.

The gradient at the clean image is not zero (the pull, and the push of the other guides), so
I-FGSM, FGSM and MI-FGSM move the probes from their first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...data.types import ReIDDataset
from ...errors import MetricAttackError
from ...metrics.distance import Metric
from ..objectives import LossPart, MetricLoss, ReferenceTargets, RefSets, is_identity
from .base import Selection, SplitFeatures, ThreatModel, register_threat


@dataclass(frozen=True)
class GuideSelection(Selection):
    """A :class:`Selection` whose ``references`` are the positive guides (same-identity probes), with
    ``pids``, the query split's identities (the negative guides are picked among them per model)."""

    pids: tuple[int, ...] = ()


def identity_groups(pids: list[int]) -> dict[int, tuple[int, ...]]:
    """Identity → the positions of its images (junk and distractors left out), in identity order."""
    groups: dict[int, list[int]] = {}
    for i, pid in enumerate(pids):
        if is_identity(pid):
            groups.setdefault(pid, []).append(i)
    return {pid: tuple(groups[pid]) for pid in sorted(groups)}


def farthest_groups(metric: Metric, features: torch.Tensor, pids: list[int], groups: dict[int, tuple[int, ...]]) -> RefSets:
    """Per image of ``features [N, D]``: the members of the identity (not its own) whose centroid in the
    metric's space is farthest from the image's feature; empty for an image without identity."""
    with torch.no_grad():
        emb = metric.embed(features.detach().float())
        names = list(groups)
        centroids = torch.stack([emb[list(groups[k])].mean(0) for k in names])
        dist = metric.scale * torch.cdist(emb, centroids).pow(2)
        own = torch.tensor(pids)[:, None] == torch.tensor(names)[None, :]
        farthest = dist.masked_fill(own, float("-inf")).argmax(1).tolist()
    return [groups[names[j]] if is_identity(pid) else () for pid, j in zip(pids, farthest, strict=True)]


@register_threat("fna")
class FurthestNegativeThreat(ThreatModel):
    mode = "fna"
    summary = "FNA: push probes from their identity's other probes, pull them toward the farthest other identity (query labels)"
    split = "query"
    references = "guides"
    needs_labels = True

    def select(self, dataset: ReIDDataset, seed: int) -> GuideSelection:
        pids = [r.pid for r in dataset.query]
        groups = identity_groups(pids)
        if len(groups) < 2:
            raise MetricAttackError(
                f"the fna threat model pulls each probe toward another identity, but the query split of {dataset.name} "
                f"has {len(groups)} identit{'y' if len(groups) == 1 else 'ies'}; it needs at least 2"
            )
        positives = [groups[pid] if is_identity(pid) else () for pid in pids]
        return GuideSelection(torch.tensor([bool(p) for p in positives], dtype=torch.bool), positives, None, tuple(pids))

    def part(self, model: nn.Module, metric: Metric, features: SplitFeatures, selection: Selection, objective: str) -> LossPart:
        assert isinstance(selection, GuideSelection)  # made by select()
        pids = list(selection.pids)
        pull = farthest_groups(metric, features.query, pids, identity_groups(pids))
        push = ReferenceTargets.build(metric, features.query, selection.references)
        return MetricLoss(model, metric, push, pull=ReferenceTargets.build(metric, features.query, pull))
