"""The defense leaderboard: one base model undefended, defended by the paper's metric-preserving
network and by the methods after it, each evaluated adaptively.

Every model is attacked itself (the attacker knows the defended model) with the robust
evaluation of :func:`metricattack.defense.evaluation.robust_evaluations` at the ε of
``experiments.defenses.epsilons``: per query, the worst AP of the robustness protocol
(``experiments.defenses.version``, ``fast`` by default; its masking checks become the
leaderboard's flags) and of the query attack transferred from the undefended base model (so no
defense is reported more robust than the transfer attack shows it to be); the gallery-side
attacks give a second figure.
Intervals are the run's bootstrap over queries (:class:`~..evidence.Bootstrap`). The cost of a
defense is the CPU time of the stage that made it (training-set attack and retraining for the
metric-preserving model, the adversarial training for the others) over the base model's training stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file

from ...config import validate
from ...stages import StageSpec
from ..evidence import Bootstrap, ap_key
from ..resources import add_model, extract_clean, progress, save_tensors, train_config
from ..schema import DefenseEntry, Defenses, Results, RobustPoint
from ..tables import Table, fmt
from .base import Experiment
from .table5 import CODE_DEFENSE, metric_preserving_model

if TYPE_CHECKING:
    from ...defense.evaluation import RobustEvaluation
    from ..context import RunContext

PAPER_METHOD = "metric-preserving"
MAX_CLEAN_DROP = 0.10  # the criterion: at most a 10 % relative clean-mAP drop


def defended_name(base: str, method: str) -> str:
    """The leaderboard's name of ``base`` defended by ``method`` (Table 5's ``B1#M`` for the paper's)."""
    from .table5 import defended_name as paper_name

    return paper_name(base) if method == PAPER_METHOD else f"{base}#{method}"


def train_defense(ctx: RunContext, base: str, method: str) -> str:
    """Train (or reuse: a cached stage) ``base`` defended by ``method``; registers and returns its name."""
    if method == PAPER_METHOD:
        return metric_preserving_model(ctx, base)
    from ...defense.config import DefenseConfig
    from ...defense.methods import DEFENSES
    from ...defense.pipeline import run_defense

    section = ctx.cfg.experiments.defenses
    recipe = train_config(ctx, next(m for m in ctx.cfg.models if m.name == base))
    if section.batch is not None:
        recipe = recipe.model_copy(update={"batch": section.batch})
    settings = section.settings_of(method).model_dump(mode="json")
    dcfg = validate(
        DefenseConfig,
        {
            "train": recipe.model_dump(mode="json"),
            "base_checkpoint": ctx.records[base].checkpoint,
            "method": method,
            DEFENSES.get(method).section: settings,
            "retrain": section.retrain.model_dump(mode="json"),
            "evaluation": {"enabled": False},
        },
        f"{method} defense of {base}",
    )
    spec = StageSpec(
        "defended",
        f"{base}:{method}",
        {"method": method, "settings": settings, "retrain": section.retrain.model_dump(mode="json"), "batch": recipe.batch.model_dump()},
        upstream=(ctx.keys["dataset"], ctx.keys[f"model:{base}"]),
        code=CODE_DEFENSE,
    )

    def work(folder: Path) -> dict[str, Any]:
        summary = run_defense(dcfg, folder / "defense", log=lambda _msg: None)
        return {"checkpoint": summary["defended"]["checkpoint"], "sha256": summary["defended"]["sha256"]}

    name = defended_name(base, method)
    add_model(ctx, name, spec, ctx.cache.run(spec, work), f"{base} defended by {method}", ctx.records[base].train_seed)
    return name


def transfer_images(ctx: RunContext, base: str, eps: float) -> tuple[str, dict[int, torch.Tensor]]:
    """The query images attacked against ``base`` with the transfer attack at ``eps`` (a cached stage): ``(key, index -> uint8)``."""
    from ...attacks.threats import SplitFeatures
    from ...defense.evaluation import TRANSFER, attacked_images, robust_spec

    spec = robust_spec(TRANSFER.method, eps)
    stage = StageSpec(
        "robust_transfer",
        f"{base}@{eps:g}",
        {"side": TRANSFER.side, "spec": spec.resolved(), "batch_size": ctx.cfg.experiments.defenses.batch_size},
        upstream=(ctx.keys["dataset"], ctx.keys[f"model:{base}"]),
        code=CODE_DEFENSE,
    )

    def work(folder: Path) -> dict[str, Any]:
        clean = SplitFeatures(ctx.clean[base].query, ctx.clean[base].gallery)
        size = ctx.cfg.experiments.defenses.batch_size
        images = attacked_images(
            ctx.models[base], ctx.metric(base, "euclidean"), ctx.dataset, TRANSFER.side, spec, clean, batch_size=size, device=ctx.device
        )
        save_tensors(folder / "images.safetensors", {str(i): image for i, image in images.items()})
        return {"file": "images.safetensors", "count": len(images)}

    ctx.cache.run(stage, work)
    stored = load_file(str(ctx.cache.folder(stage) / "images.safetensors"))
    return stage.key, {int(i): image for i, image in stored.items()}


def evaluate_robustly(
    ctx: RunContext, name: str, transfers: dict[float, tuple[str, dict[int, torch.Tensor]]] | None
) -> list[RobustEvaluation]:
    """``name``'s robust evaluation at every ε of the section (a cached stage holding its per-query APs and checks;
    the protocol's finished runs are kept in the stage folder, so a killed evaluation resumes)."""
    from ...attacks.threats import SplitFeatures
    from ...defense.evaluation import GALLERY_ATTACKS, RobustEvaluation, robust_evaluations
    from ...robustness.protocol import VERSIONS

    section = ctx.cfg.experiments.defenses
    size, epsilons = section.batch_size, list(section.epsilons)
    stage = StageSpec(
        "robust",
        name,
        {
            "epsilons": epsilons,
            "protocol": VERSIONS.get(section.version).model_dump(mode="json"),
            "gallery_attacks": [a.key for a in GALLERY_ATTACKS],
            "batch_size": size,
            "ap": ctx.cfg.evaluation.ap,
        },
        upstream=(ctx.keys["dataset"], ctx.keys[f"model:{name}"], *(t[0] for t in (transfers or {}).values())),
        code=CODE_DEFENSE,
    )

    def work(folder: Path) -> dict[str, Any]:
        results = robust_evaluations(
            ctx.models[name],
            ctx.dataset,
            ctx.metric(name, "euclidean"),
            epsilons,
            version=section.version,
            transfers={eps: t[1] for eps, t in transfers.items()} if transfers else None,
            clean=SplitFeatures(ctx.clean[name].query, ctx.clean[name].gallery),
            batch_size=size,
            device=ctx.device,
            ap=ctx.cfg.evaluation.ap,
            records=folder / "runs",
            model_record={"name": name, "stage": ctx.keys[f"model:{name}"]},
        )
        vectors = {f"{r.epsilon:g}|{k}": v for r in results for k, v in {"clean": r.clean, **r.attacks}.items()}
        save_tensors(folder / "ap.safetensors", {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in vectors.items()})
        return {"file": "ap.safetensors", "attacks": list(results[0].attacks), "checks": results[0].checks}

    out = ctx.cache.run(stage, work)
    stored = {k: v.numpy() for k, v in load_file(str(ctx.cache.folder(stage) / "ap.safetensors")).items()}
    return [
        RobustEvaluation(eps, stored[f"{eps:g}|clean"], {k: stored[f"{eps:g}|{k}"] for k in out["attacks"]}, dict(out["checks"]))
        for eps in epsilons
    ]


def robust_key(name: str, side: str, eps: float) -> str:
    """Evidence key of ``name``'s robust per-query APs on ``side`` at ``eps``."""
    return ap_key(name, f"robust-{side}-eps{eps:g}", "euclidean")


def cpu_per_image(checkpoint: str | None) -> float | None:
    """CPU seconds per training image of the run that wrote ``checkpoint`` (None when its history lacks them)."""
    if checkpoint is None:
        return None
    history = json.loads(Path(checkpoint).with_suffix(".json").read_text(encoding="utf-8"))["meta"].get("history", [])
    if not history or any("cpu_seconds" not in h for h in history):
        return None
    images = sum(h["images"] for h in history)
    return sum(h["cpu_seconds"] for h in history) / images if images else None


class DefensesExperiment(Experiment):
    name = "defenses"
    title = "Defense leaderboard — adaptive robustness"

    def _enabled(self, cfg: Any) -> bool:
        return bool(cfg.experiments.defenses.enabled)

    def prepare(self, ctx: RunContext) -> None:
        if not self._enabled(ctx.cfg):
            return
        base = ctx.cfg.defense_base()
        names = [train_defense(ctx, base, m) for m in progress(ctx.cfg.experiments.defenses.methods, "defenses")]
        extract_clean(ctx, [n for n in names if n not in ctx.clean], [], "defended features")

    def compute(self, ctx: RunContext) -> Defenses:
        from ...defense.evaluation import GALLERY_ATTACKS, TRANSFER_KEY
        from ...defense.methods import DEFENSES

        section = ctx.cfg.experiments.defenses
        if not section.enabled:
            return Defenses(status="not run", reason="disabled in the config (experiments.defenses.enabled: false)")
        base = ctx.cfg.defense_base()
        models = [(base, None), *((defended_name(base, m), m) for m in section.methods)]
        evaluations: dict[tuple[str, float], RobustEvaluation] = {}
        transfers = {eps: transfer_images(ctx, base, eps) for eps in section.epsilons}
        for name, method in progress(models, "robust evaluation", lambda pair: pair[0]):
            for result in evaluate_robustly(ctx, name, None if method is None else transfers):
                evaluations[(name, result.epsilon)] = result
                for side in ("query", "gallery"):
                    ctx.evidence[robust_key(name, side, result.epsilon)] = result.worst(side)
        for name, _ in models:
            ctx.result(name)  # clean per-query APs into the evidence
        c = ctx.cfg.confidence
        boot = Bootstrap(ctx.evidence, c.resamples, c.seed, c.level)
        base_clean = boot.mAP(ap_key(base, None, "euclidean"))
        paper = defended_name(base, PAPER_METHOD) if PAPER_METHOD in section.methods else None
        base_cost = cpu_per_image(ctx.records[base].checkpoint)
        entries = []
        for name, method in models:
            clean = boot.mAP(ap_key(name, None, "euclidean"))
            drop = float((base_clean[0] - clean[0]) / base_clean[0])
            points = []
            for eps in section.epsilons:
                result, query, gallery = (
                    evaluations[(name, eps)],
                    boot.mAP(robust_key(name, "query", eps)),
                    boot.mAP(robust_key(name, "gallery", eps)),
                )
                beats = None
                if paper is not None and method not in (None, PAPER_METHOD):
                    paper_high = boot.interval(boot.mAP(robust_key(paper, "query", eps)))[1]
                    beats = bool(boot.interval(query)[0] > paper_high and drop <= MAX_CLEAN_DROP)
                points.append(
                    RobustPoint(
                        epsilon=eps,
                        robust_mAP=float(query[0]),
                        robust_interval=boot.interval(query),
                        gallery_robust_mAP=float(gallery[0]),
                        gallery_interval=boot.interval(gallery),
                        attacks={k: result.mAP(v) for k, v in result.attacks.items()},
                        flags=result.flags(),
                        beats_paper=beats,
                    )
                )
            record = ctx.records[name]
            own_cost = cpu_per_image(record.checkpoint)
            base_cpu = ctx.records[base].train_cpu_seconds
            entries.append(
                DefenseEntry(
                    model=name,
                    base_model=base,
                    method=method,
                    label="none" if method is None else DEFENSES.get(method).label,
                    source="" if method is None else DEFENSES.get(method).source,
                    paper=method == PAPER_METHOD,
                    initialisation=None
                    if method is None
                    else (ctx.cfg.experiments.table5.settings.retrain.init if method == PAPER_METHOD else section.retrain.init),
                    clean_mAP=float(clean[0]),
                    clean_interval=boot.interval(clean),
                    clean_drop=drop,
                    points=points,
                    train_seconds=record.train_seconds,
                    train_cpu_seconds=record.train_cpu_seconds,
                    cost_multiple=record.train_cpu_seconds / base_cpu if record.train_cpu_seconds and base_cpu else None,
                    cost_per_image=own_cost / base_cost if own_cost is not None and base_cost else None,
                )
            )
        top = max(section.epsilons)
        entries.sort(key=lambda e: -next(p.robust_mAP for p in e.points if p.epsilon == top))
        protocol = (
            f"per query, the lowest AP of the robustness protocol '{section.version}' (metricattack robustness) made against "
            f"the model itself and of {TRANSFER_KEY.removeprefix('transfer/')} made against {base}; its checks at "
            f"ε = {max(section.epsilons):g} (gallery-side figure: the lowest over " + ", ".join(a.key for a in GALLERY_ATTACKS) + ")"
        )
        return Defenses(status="ok", base_model=base, epsilons=list(section.epsilons), protocol=protocol, entries=entries)

    def not_run(self, res: Results) -> str | None:
        if res.defenses is not None and res.defenses.status != "ok":
            return f"not run: {res.defenses.reason}"
        return super().not_run(res)

    def tables(self, res: Results) -> list[Table]:
        board = res.defenses
        if board is None or board.status != "ok":
            return []
        epsilons, top = board.epsilons, max(board.epsilons)
        rows = []
        for rank, e in enumerate(board.entries, 1):
            by_eps = {p.epsilon: p for p in e.points}
            flags = sorted({f for p in e.points for f, on in p.flags.items() if on})
            rows.append(
                [
                    str(rank),
                    e.model,
                    e.label,
                    e.source or "–",
                    _with_interval(e.clean_mAP, e.clean_interval),
                    *(_with_interval(by_eps[eps].robust_mAP, by_eps[eps].robust_interval) for eps in epsilons),
                    fmt(by_eps[top].gallery_robust_mAP),
                    ", ".join(flags) or "none",
                    "–" if e.cost_multiple is None else f"{e.cost_multiple:.2g}×",
                ]
            )
        beating = [e.model for e in board.entries if any(p.beats_paper for p in e.points)]
        verdict = (
            f"Beyond the paper, {', '.join(beating)} beat{'s' if len(beating) == 1 else ''} the metric-preserving model "
            f"(robust-mAP interval above its interval at a clean-mAP drop of at most {MAX_CLEAN_DROP:.0%})."
            if beating
            else "No defense beyond the paper beats the metric-preserving model with non-overlapping intervals at a clean-mAP "
            f"drop of at most {MAX_CLEAN_DROP:.0%}."
        )
        return [
            Table(
                "defenses",
                "Defense leaderboard",
                f"Models ranked by robust mAP at ε = {top:g} (adaptive: {board.protocol}); 95 % bootstrap intervals over "
                f"queries in brackets; cost = CPU time of the stage that made the model over {board.base_model}'s training (fine-tuned defenses: on top of it). {verdict}",
                ["#", "Model", "Defense", "Source", "Clean mAP"]
                + [f"Robust mAP ε={eps:g}" for eps in epsilons]
                + [f"Gallery-side ε={top:g}", "Masking flags", "Cost"],
                rows,
                heading=self.title,
                text_columns=4,
            )
        ]


def _with_interval(value: float, interval: tuple[float, float]) -> str:
    return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"


EXPERIMENT = DefensesExperiment()
