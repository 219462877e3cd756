"""What an attack did, measured: rankings before and after, true-positive distances, targeted
success, the method's cost and zero gradients, and notes on anything a reader must not take at
face value (an adversarial mAP above the clean one).

:func:`evaluate_attack_model` is one row of ``attack_results.json``'s ``evaluations``: clean vs
adversarial (images reloaded from disk and the in-memory float images) CMC / mAP, mean
true-positive distance, targeted success (:func:`targeted_success`), and ``notes``.
:func:`call_summary` is its ``calls`` section.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data.types import DISTRACTOR_PID, JUNK_PID, ReIDDataset
from ..evaluation.features import evaluate_split_features
from ..evaluation.ranking import APConvention
from ..metrics.distance import Metric
from ..wording import counted
from .threats import SplitFeatures, ThreatModel

logger = logging.getLogger(__name__)


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
    ``t``'s identity and camera are left out. Ties count against the attack: an image at the
    same distance as other gallery images is ranked after all of them (its rank is the number
    of other counted images at a distance ≤ its own), so tied or saturated features never
    raise the success rate.
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
        before = (dist <= own) & (positions.unsqueeze(0) != gal.unsqueeze(1))
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


def call_summary(
    counts: dict[str, torch.Tensor], active: torch.Tensor, linf_memory: torch.Tensor, examples: int = 10, *, log: bool = True
) -> dict[str, Any]:
    """What the method did to the attacked images (``active [N]``): mean and max forward / backward
    passes per image, the images whose input gradient was exactly zero at some step and those that
    did not move at all (in memory), each with a count and the first ``examples`` split positions.
    With ``log``, a warning for each of the last two when it is not empty (a zero gradient is never silent)."""
    attacked = torch.nonzero(active).flatten()
    summary: dict[str, Any] = {}
    for name in ("forward", "backward"):
        values = counts[name][attacked].double()
        summary[name] = {"mean": float(values.mean()) if attacked.numel() else 0.0, "max": int(values.max()) if attacked.numel() else 0}
    flagged = {
        "zero_gradient": attacked[counts["zero_gradient"][attacked] > 0],
        "unmoved": attacked[linf_memory[attacked] == 0],
    }
    for name, where in flagged.items():
        summary[name] = {"images": int(where.numel()), "examples": where[:examples].tolist()}
    texts = {
        "zero_gradient": "the attack's input gradient was exactly zero at some step on {n} (split positions {where}); "
        "those steps did not move them (attack_results.json: calls.zero_gradient)",
        "unmoved": "{n} left unchanged by the attack (split positions {where}; attack_results.json: calls.unmoved)",
    }
    for name, where in flagged.items():
        if log and where.numel():
            shown = ", ".join(map(str, summary[name]["examples"])) + (", ..." if where.numel() > examples else "")
            logger.warning(texts[name].format(n=counted(int(where.numel()), "attacked image"), where=shown))
    return summary


@torch.no_grad()
def feature_instability(model: nn.Module, images: torch.Tensor) -> float:
    """Largest ``|f₁ − f₂|`` between two forward passes of ``model`` (eval mode) on the same ``images``
    in the same batch: 0 for a deterministic model."""
    model.eval()
    return float((model(images).float() - model(images).float()).abs().max()) if len(images) else 0.0


def above_clean_reasons(
    clean_mAP: float,
    adversarial_mAP: float,
    *,
    variant: str,
    white_box: bool,
    threat: ThreatModel,
    calls: dict[str, Any],
    instability: float,
    memory_mAP: float | None = None,
) -> list[str]:
    """The measured facts that can explain an adversarial mAP above the clean one (each a sentence);
    a sentence saying that none was found when no fact applies."""
    reasons = []
    if instability > 0:
        reasons.append(
            f"the model's features of the same images differ between two forward passes (max |Δ| = {instability:.3g}): "
            "it is not deterministic in eval mode (dropout or noise left on?), so its rankings move without any attack"
        )
    if not white_box:
        reasons.append("this model was not attacked (black-box transfer): a perturbation made on other models can help its ranking")
    if threat.minimise:
        reasons.append(f"the {threat.name} threat model pulls images toward chosen references, not away from their own identity")
    for name, what in (("zero_gradient", "had a zero input gradient at some step"), ("unmoved", "did not move")):
        n = calls.get(name, {}).get("images", 0)
        if n:
            reasons.append(f"{counted(n, 'attacked image')} {what}")
    if variant == "adversarial_disk" and memory_mAP is not None and memory_mAP <= clean_mAP:
        reasons.append("the in-memory images score below the clean mAP: rounding to 8-bit pixels undid the attack")
    if not reasons:
        reasons.append(
            "no cause found among non-determinism, transfer, the threat model, zero gradients and 8-bit rounding: the attack "
            "maximises its objective (a distance to references), not the loss of mAP, and here the two disagree"
        )
    return reasons


def evaluate_attack_model(
    model: nn.Module,
    metric: Metric,
    record: dict[str, Any],
    *,
    white_box: bool,
    dataset: ReIDDataset,
    threat: ThreatModel,
    targets: torch.Tensor | None,
    clean: SplitFeatures,
    memory: torch.Tensor,
    disk: torch.Tensor,
    calls: dict[str, Any],
    probe_images: torch.Tensor,
    ap: APConvention,
    log: bool = True,
) -> dict[str, Any]:
    """One row of ``attack_results.json``'s ``evaluations``: ``clean``, ``adversarial_disk`` and
    ``adversarial_memory`` rankings (``memory`` / ``disk``: adversarial features ``[N, D]`` of the
    perturbed split), mean true-positive distances, targeted success, and ``notes``: an adversarial
    mAP above the clean one is never reported without the measured reasons (also logged as a
    warning with ``log``; ``probe_images`` are clean images the determinism check passes through the model twice)."""

    def split_feats(adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (adv, clean.gallery) if threat.split == "query" else (clean.query, adv)

    pairs = true_positive_pairs(dataset)
    variants = {"clean": (clean.query, clean.gallery), "adversarial_disk": split_feats(disk), "adversarial_memory": split_feats(memory)}
    row: dict[str, Any] = {"model": record, "white_box": white_box, "metric": metric.name}
    for name, (q, g) in variants.items():
        ranking = evaluate_split_features(q, g, dataset, metric, ap=ap)
        row[name] = {**ranking.to_dict(), "mean_true_positive_distance": mean_true_positive_distance(metric, q, g, pairs)}
        if targets is not None:
            row[name]["targeted"] = targeted_success(metric, q, g, dataset, targets)
    notes = []
    clean_mAP = row["clean"]["mAP"]
    above = [v for v in ("adversarial_disk", "adversarial_memory") if row[v]["mAP"] > clean_mAP]
    if above:
        instability = feature_instability(model, probe_images)
        label = record.get("label") or record.get("checkpoint") or type(model).__name__
        for variant in above:
            reasons = above_clean_reasons(
                clean_mAP,
                row[variant]["mAP"],
                variant=variant,
                white_box=white_box,
                threat=threat,
                calls=calls,
                instability=instability,
                memory_mAP=row["adversarial_memory"]["mAP"],
            )
            note = (
                f"{label}: the {variant.replace('_', ' ')} mAP {100 * row[variant]['mAP']:.2f} is above the clean mAP "
                f"{100 * clean_mAP:.2f}: " + "; ".join(reasons)
            )
            if log:
                logger.warning(note)
            notes.append(note)
    row["notes"] = notes
    return row
