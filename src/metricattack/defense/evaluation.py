"""Measuring a defense: Table 5 cells (transfer) and white-box adaptive attacks.

* :func:`table5_cells` -- the paper's Table 5 layout: per base model, the mAP of the normal
  model (#N) and of its metric-preserving model (#M) on the clean gallery and on each
  adversarial gallery, with ``#I = (#M − #N) / #N``. The adversarial galleries are made
  against the *normal* models only, so #M measures transfer robustness.
* :func:`adaptive_attack_rows` -- the honest numbers: each model attacked white-box (the
  non-targeted gallery attack against the model itself) with every configured method and ε;
  adversarial images are rounded to the 1/255 grid as when saved, then evaluated.

mAP values are percentages (0..100), as in the paper's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..attacks.engine import FeatureModel, attack_split, clean_features, plan_attack
from ..attacks.spec import AttackSpec
from ..attacks.threats import SplitFeatures
from ..data.types import ImageRecord, ReIDDataset
from ..distributed import rank_and_world
from ..errors import MetricAttackError
from ..evaluation.features import evaluate_split_features, extract_features
from ..evaluation.ranking import APConvention
from ..metrics.distance import Metric

ORIGINAL = "original"


def adversarial_gallery_name(attacked_model: str) -> str:
    """Row label of the gallery attacked against ``attacked_model`` (``adv(B1)``)."""
    return f"adv({attacked_model})"


def relative_improvement(normal: float, defended: float) -> float:
    """``(#M − #N) / #N``; a zero #N (no valid query) is an error, not a silent infinity."""
    if normal <= 0:
        raise MetricAttackError(f"relative improvement undefined: the normal model's mAP is {normal} (no valid query?)")
    return (defended - normal) / normal


def table5_cells(
    bases: Sequence[str], galleries: Sequence[str], normal_map: Callable[[str, str], float], defended_map: Callable[[str, str], float]
) -> list[dict[str, Any]]:
    """Every cell ``(base, gallery)``: ``{"base_model", "gallery", "normal_mAP", "defended_mAP", "improvement"}``.

    ``normal_map(base, gallery)`` / ``defended_map(base, gallery)`` give the mAP (0..100) of
    base model ``base`` / of its metric-preserving model on ``gallery``. Order: galleries
    outer, bases inner (the paper's rows and column groups).
    """
    cells = []
    for gallery in galleries:
        for base in bases:
            n, m = float(normal_map(base, gallery)), float(defended_map(base, gallery))
            cells.append(
                {"base_model": base, "gallery": gallery, "normal_mAP": n, "defended_mAP": m, "improvement": relative_improvement(n, m)}
            )
    return cells


def gallery_mAP(
    model: nn.Module,
    dataset: ReIDDataset,
    gallery: Sequence[ImageRecord],
    metric: Metric,
    *,
    query_features: torch.Tensor | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    ap: APConvention = "market",
) -> float:
    """mAP (0..100) of ``model`` with ``dataset``'s clean queries against ``gallery`` (same identities and order)."""
    if len(gallery) != len(dataset.gallery):
        raise MetricAttackError(f"adversarial gallery has {len(gallery)} images, the clean gallery {len(dataset.gallery)}")
    model.eval()
    if query_features is None:
        query_features = extract_features(model, dataset.query, batch_size=batch_size, device=device, progress=False)
    g = extract_features(model, gallery, batch_size=batch_size, device=device, progress=False)
    return 100.0 * evaluate_split_features(query_features, g, dataset, metric, ap=ap).mAP


def white_box_gallery_features(
    model: nn.Module,
    metric: Metric,
    dataset: ReIDDataset,
    spec: AttackSpec,
    clean_gallery: torch.Tensor,
    query: torch.Tensor,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Gallery features ``[G, D]`` after the non-targeted gallery attack ``spec`` against ``model`` itself,
    of the images rounded to 8 bits as when saved (images the attack leaves alone keep their clean features)."""
    if rank_and_world()[1] > 1:
        raise MetricAttackError("the adaptive evaluation runs in one process; start it without torchrun")
    plan = plan_attack([model], metric, dataset, "gallery", spec, [SplitFeatures(query, clean_gallery)])
    done = attack_split(plan, spec, [FeatureModel(model, clean_gallery)], batch_size=batch_size, device=device, saved=True)
    return done.features[0]


def adaptive_attack_rows(
    models: Mapping[str, nn.Module],
    dataset: ReIDDataset,
    metric: Metric,
    specs: Sequence[AttackSpec],
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    ap: APConvention = "market",
    roles: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (model, spec): clean and white-box adversarial mAP / rank-1 (0..100) of the model attacked itself."""
    rows = []
    for name, model in models.items():
        model.eval()
        feats = clean_features([model], dataset, batch_size=batch_size, device=device)[0]
        clean = evaluate_split_features(feats.query, feats.gallery, dataset, metric, ap=ap)
        for spec in specs:
            adv = white_box_gallery_features(model, metric, dataset, spec, feats.gallery, feats.query, batch_size=batch_size, device=device)
            result = evaluate_split_features(feats.query, adv, dataset, metric, ap=ap)
            rows.append(
                {
                    "model": name,
                    "role": (roles or {}).get(name, ""),
                    "attack": spec.resolved(),
                    "method": spec.method,
                    "epsilon": spec.eps,
                    "white_box": True,
                    "metric": metric.name,
                    "clean_mAP": 100.0 * clean.mAP,
                    "clean_rank1": 100.0 * clean.cmc[1],
                    "adversarial_mAP": 100.0 * result.mAP,
                    "adversarial_rank1": 100.0 * result.cmc[1],
                    "ap_convention": ap,
                }
            )
    return rows
