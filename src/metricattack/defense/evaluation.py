"""Measuring a defense: Table 5 cells (transfer) and white-box adaptive attacks.

* :func:`table5_cells` -- the paper's Table 5 layout: per base model, the mAP of the normal
  model (#N) and of its metric-preserving model (#M) on the clean gallery and on each
  adversarial gallery, with ``#I = (#M − #N) / #N``. The adversarial galleries are made
  against the *normal* models only, so #M measures transfer robustness.
* :func:`adaptive_attack_rows` -- each model attacked white-box (the non-targeted gallery
  attack against the model itself) with every configured method and ε (Table 5's rows);
* :func:`robust_evaluations` -- the robustness number of a defended model at each ε: per query,
  the worst AP of the robustness protocol (:mod:`metricattack.robustness`, issue 21: APGD on the
  metric loss, the targeted ranking margin and the self objective, then Square) made against
  the model itself and of the query attack transferred from the normal model (so it is never
  above what the transfer attack shows), the protocol's masking checks plus the ``transfer``
  flag when the transfer attack beats the white-box ones; the gallery-side attacks give a
  second figure.

Adversarial images are rounded to the 1/255 grid as when saved, then evaluated.

mAP values are percentages (0..100), as in the paper's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..attacks.engine import FeatureModel, attack_split, clean_features, plan_attack
from ..attacks.ops import quantize
from ..attacks.perturb import perturb
from ..attacks.spec import AttackSpec
from ..attacks.threats import THREATS, SplitFeatures
from ..data.loading import make_loader
from ..data.types import ImageRecord, ReIDDataset
from ..distributed import rank_and_world
from ..errors import MetricAttackError
from ..evaluation.features import evaluate_split_features, extract_features
from ..evaluation.ranking import APConvention
from ..metrics.distance import Metric
from ..robustness.flags import black_box

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


# ------------------------------------------------------------------ the robustness number
Side = Literal["query", "gallery"]


@dataclass(frozen=True)
class RobustAttack:
    """One white-box attack beside the protocol: the attacked ``side`` (``query``: each probe pushed
    away from its true matches in the clean gallery; ``gallery``: each gallery image pushed away
    from its identity's probes) and the stepper ``method``."""

    side: Side
    method: str

    @property
    def key(self) -> str:
        return f"{self.side}/{self.method}"


GALLERY_ATTACKS: tuple[RobustAttack, ...] = (RobustAttack("gallery", "ifgsm"), RobustAttack("gallery", "pgd"))
"""The gallery-side figure (the robustness protocol attacks queries only): white-box attacks made
against the tested model itself at every ε (α = 1, the paper's iteration count, PGD from a seeded
random start)."""

TRANSFER = RobustAttack("query", "ifgsm")
"""The query attack made against the normal model and evaluated on the tested one."""
TRANSFER_KEY = f"transfer/{TRANSFER.key}"


def protocol_key(version: str) -> str:
    """Key of the robustness protocol's per-query robust APs among :attr:`RobustEvaluation.attacks`."""
    return f"query/protocol-{version}"


def robust_spec(method: str, eps: float) -> AttackSpec:
    """The spec of a gallery-side or transfer attack at ``eps`` (0..255 units)."""
    return AttackSpec.model_validate({"method": method, "eps": eps, "alpha": min(1.0, eps), "seed": 0})


def attacked_images(
    model: nn.Module,
    metric: Metric,
    dataset: ReIDDataset,
    side: Side,
    spec: AttackSpec,
    clean: SplitFeatures,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> dict[int, torch.Tensor]:
    """Adversarial images of ``side``'s split made against ``model``: ``index -> uint8 [3,H,W]`` for
    every image the attack perturbs (rounded to the 1/255 grid and inside ε, as when saved)."""
    if rank_and_world()[1] > 1:
        raise MetricAttackError("the robust evaluation runs in one process; start it without torchrun")
    threat = "query" if side == "query" else "gallery"
    assert THREATS.get(threat).split == side
    plan = plan_attack([model], metric, dataset, threat, spec, [clean])
    active = torch.nonzero(plan.active).flatten().tolist()  # only these are read and attacked (a gallery is mostly distractors)
    out: dict[int, torch.Tensor] = {}
    for images, positions in make_loader([plan.records[i] for i in active], batch_size):
        indices = torch.tensor([active[j] for j in positions.tolist()])
        images = images.to(device)
        plan.objective.prepare(images, indices)
        result = perturb(images, plan.objective, spec, indices=indices, minimise=plan.threat.minimise, models=plan.models)
        saved = quantize(result.images, images, spec.eps).cpu()
        out.update(zip(indices.tolist(), saved, strict=True))
    return out


@torch.no_grad()
def replaced_features(
    model: nn.Module, clean: torch.Tensor, images: Mapping[int, torch.Tensor], *, batch_size: int = 32, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """``clean [N,D]`` features of a split with the rows of ``images`` (uint8, any sizes) replaced by ``model``'s features of them."""
    model.eval()
    out = clean.clone()
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in images.items():
        by_size.setdefault(tuple(image.shape), []).append(index)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            x = torch.stack([images[i] for i in chunk]).float().div_(255.0).to(device)
            out[torch.tensor(chunk)] = model(x).float().cpu()
    return out


@dataclass(frozen=True)
class RobustEvaluation:
    """Per-query APs (``[Q]`` in 0..1, NaN for a query without a valid match) of one model at one ε.

    Attributes:
        epsilon: ε in 0..255 units.
        clean: on the clean query and gallery.
        attacks: :func:`protocol_key` (the robustness protocol's worst case per query, clean AP
            included), ``"gallery/ifgsm"``, ``"gallery/pgd"`` (:data:`GALLERY_ATTACKS`) and
            ``"transfer/query/ifgsm"`` (:data:`TRANSFER`, when a transfer attack was given).
        checks: the protocol's checks (:mod:`metricattack.robustness.flags`, made at its headline
            ε): name → ``ok`` / ``flagged`` / ``not measured``.
    """

    epsilon: float
    clean: np.ndarray
    attacks: dict[str, np.ndarray]
    checks: dict[str, str] = field(default_factory=dict)

    def worst(self, side: Side) -> np.ndarray:
        """Per query, the lowest AP over the attacks on ``side`` (transfer included): the robust APs."""
        vectors = [v for key, v in self.attacks.items() if key.split("/")[-2] == side]
        return np.minimum.reduce(vectors)

    def mAP(self, vector: np.ndarray) -> float:
        """Mean over the valid queries, in percent."""
        return float(100.0 * np.nanmean(vector))

    def flags(self) -> dict[str, bool]:
        """Masking flags (True = tripped): the protocol's checks that were measured, and
        ``transfer``: the query attack transferred from the normal model lowers the white-box
        worst case by :data:`~metricattack.robustness.flags.BLACK_BOX_POINTS` or more (gradients of
        the defended model are then likely masked; the robust mAP already counts the transfer attack)."""
        out = {name: status == "flagged" for name, status in self.checks.items() if status != "not measured"}
        if TRANSFER_KEY in self.attacks:
            white = np.minimum.reduce([v for key, v in self.attacks.items() if key.startswith("query/")])
            out["transfer"] = black_box(self.mAP(white), self.mAP(self.worst("query"))).status == "flagged"
        return out


def robust_evaluations(
    model: nn.Module,
    dataset: ReIDDataset,
    metric: Metric,
    epsilons: Sequence[float],
    *,
    version: str = "fast",
    transfers: Mapping[float, Mapping[int, torch.Tensor]] | None = None,
    clean: SplitFeatures | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    ap: APConvention = "market",
    records: Path | None = None,
    model_record: dict[str, Any] | None = None,
) -> list[RobustEvaluation]:
    """``model`` attacked adaptively at each of ``epsilons``: the robustness protocol ``version``
    (:func:`metricattack.robustness.evaluate.run_protocol`, headline ε = the largest, its checks
    made there; finished runs kept in ``records`` to resume), the :data:`GALLERY_ATTACKS`, and the
    query images of ``transfers[eps]`` (made against the normal model with :data:`TRANSFER`,
    :func:`attacked_images`) evaluated on ``model`` too."""
    from ..robustness.evaluate import evidence_key, run_protocol
    from ..robustness.protocol import VERSIONS

    model.eval()
    clean = clean or clean_features([model], dataset, batch_size=batch_size, device=device)[0]
    top = max(epsilons)
    protocol = VERSIONS.get(version)
    # the gallery side is measured here at every ε by GALLERY_ATTACKS, not by the protocol's own gallery-side figure
    epsilon_list = [top, *sorted({float(e) for e in epsilons} - {top}, reverse=True)]
    protocol = protocol.model_copy(update={"epsilons": epsilon_list, "gallery": None})
    result, evidence = run_protocol(
        model,
        dataset,
        eps=top,
        metric=metric,
        ap=ap,
        batch_size=batch_size,
        device=device,
        records=records,
        model_record=model_record,
        protocol=protocol,
    )
    checks: dict[str, str] = {flag.name: flag.status for flag in result.flags}

    def per_query(q: torch.Tensor, g: torch.Tensor) -> np.ndarray:
        return np.asarray(evaluate_split_features(q, g, dataset, metric, ap=ap).per_query_ap, dtype=np.float64)

    def evaluated(side: Side, images: Mapping[int, torch.Tensor]) -> np.ndarray:
        split = clean.query if side == "query" else clean.gallery
        replaced = replaced_features(model, split, images, batch_size=batch_size, device=device)
        return per_query(replaced, clean.gallery) if side == "query" else per_query(clean.query, replaced)

    out = []
    for eps in epsilons:
        attacks = {protocol_key(version): np.asarray(evidence[evidence_key(float(eps))], dtype=np.float64)}
        for attack in GALLERY_ATTACKS:
            spec = robust_spec(attack.method, eps)
            attacks[attack.key] = evaluated(
                attack.side, attacked_images(model, metric, dataset, attack.side, spec, clean, batch_size=batch_size, device=device)
            )
        if transfers is not None:
            attacks[TRANSFER_KEY] = evaluated(TRANSFER.side, transfers[eps])
        out.append(RobustEvaluation(float(eps), per_query(clean.query, clean.gallery), attacks, checks))
    return out
