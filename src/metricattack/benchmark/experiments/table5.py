"""Table 5: metric-preserving models (paper Sec. 4) next to the normal ones.

For every defended base model B the defense pipeline
(:func:`metricattack.defense.pipeline.run_defense`) attacks B's training set, merges
it with the clean one and retrains B's recipe, giving ``B#M`` (a cached stage). Table 5 then
evaluates B and ``B#M`` on the clean gallery and on the adversarial galleries made against
each *normal* base model (``experiments.table5.settings.method``, the benchmark's ε, α, μ),
and adds white-box (adaptive) attacks on the defended models themselves, so transfer
robustness is not mistaken for robustness.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import validate
from ...stages import StageSpec
from ..jobs import Needs, single
from ..paper_numbers import MARKET, paper_model, paper_values, table5
from ..resources import add_model, extract_adversarial, extract_clean, progress, train_config
from ..schema import Results, Table5, Table5Cell
from ..tables import Table, fmt, method_label
from .base import Experiment

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext

CODE_DEFENSE = ("data", "models", "training", "attacks", "metrics", "defense", "evaluation", "robustness", "benchmark/evidence", "compute")
SUFFIX = "#M"


def defended_name(base: str) -> str:
    """The name of ``base``'s metric-preserving model (``B1#M``)."""
    return f"{base}{SUFFIX}"


def train_defended(ctx: RunContext) -> list[str]:
    """Train (or reuse) ``B#M`` for every defended base model; registers them in ``ctx``."""
    chosen = ctx.cfg.defended_models()
    return [
        metric_preserving_model(ctx, m.name)
        for m in progress([m for m in ctx.cfg.models if m.name in chosen], "defended models", lambda m: m.name)
    ]


def metric_preserving_model(ctx: RunContext, base: str) -> str:
    """Train (or reuse: a cached stage) ``base``'s metric-preserving model with Table 5's settings; registers and returns its name."""
    from ...defense.config import DefenseConfig
    from ...defense.pipeline import run_defense

    name = defended_name(base)
    if name in ctx.models:
        return name
    settings = ctx.cfg.experiments.table5.settings
    section = next(m for m in ctx.cfg.models if m.name == base)
    dcfg = validate(
        DefenseConfig,
        {
            "train": train_config(ctx, section).model_dump(mode="json"),
            "base_checkpoint": ctx.records[base].checkpoint,
            "method": "metric-preserving",
            "training_attack": settings.training_attack.model_dump(mode="json"),
            "retrain": settings.retrain.model_dump(mode="json"),
            "evaluation": {"enabled": False},
        },
        f"defense of {base}",
    )
    spec = StageSpec(
        "defended",
        base,
        {"training_attack": settings.training_attack.model_dump(mode="json"), "retrain": settings.retrain.model_dump(mode="json")},
        upstream=(ctx.keys["dataset"], ctx.keys[f"model:{base}"]),
        code=CODE_DEFENSE,
    )

    def work(folder: Path) -> dict[str, Any]:
        summary = run_defense(dcfg, folder / "defense", log=lambda _msg: None)
        return {"checkpoint": summary["defended"]["checkpoint"], "sha256": summary["defended"]["sha256"]}

    add_model(ctx, name, spec, ctx.cache.run(spec, work), f"metric-preserving {base} (Table 5)", ctx.records[base].train_seed)
    return name


def adaptive_rows(ctx: RunContext, defended: list[str]) -> list[dict[str, Any]]:
    """White-box attacks on each defended (and, if configured, normal) model itself (a cached stage)."""
    from ...defense.evaluation import adaptive_attack_rows

    settings = ctx.cfg.experiments.table5.settings
    names = defended + (ctx.cfg.defended_models() if settings.adaptive_normal else [])
    spec = StageSpec(
        "adaptive",
        ",".join(names),
        {"adaptive": settings.adaptive.model_dump(mode="json"), "ap": ctx.cfg.evaluation.ap},
        upstream=tuple(ctx.keys[f"model:{n}"] for n in names),
        code=CODE_DEFENSE,
    )

    def work(_folder: Path) -> dict[str, Any]:
        rows = adaptive_attack_rows(
            {n: ctx.models[n] for n in names},
            ctx.dataset,
            ctx.metric(names[0], "euclidean"),
            settings.adaptive.specs(),
            batch_size=settings.adaptive.batch_size,
            device=ctx.device,
            ap=ctx.cfg.evaluation.ap,
            roles={n: "defended" if n.endswith(SUFFIX) else "normal" for n in names},
        )
        return {"rows": rows}

    rows: list[dict[str, Any]] = ctx.cache.run(spec, work)["rows"]
    return rows


class Table5Experiment(Experiment):
    name = "table5"
    title = "Table 5 — metric-preserving defense"

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        needs = Needs()
        if cfg.experiments.table5.enabled:
            for attacked in cfg.attacked_models():
                needs.add(single(cfg, attacked, cfg.experiments.table5.settings.method), cfg.defended_models())
        return needs

    def prepare(self, ctx: RunContext) -> None:
        if not ctx.cfg.experiments.table5.enabled:
            return
        defended = train_defended(ctx)
        extract_clean(ctx, defended, [], "defended features")
        method = ctx.cfg.experiments.table5.settings.method
        extract_adversarial(ctx, [(single(ctx.cfg, m, method), d) for m in ctx.cfg.attacked_models() for d in defended])

    def compute(self, ctx: RunContext) -> Table5:
        if not ctx.cfg.experiments.table5.enabled:
            return Table5(status="not run", reason="disabled in the config (experiments.table5.enabled: false)")
        from ...defense.evaluation import ORIGINAL, adversarial_gallery_name, table5_cells

        method = ctx.cfg.experiments.table5.settings.method
        jobs = {adversarial_gallery_name(a): single(ctx.cfg, a, method) for a in ctx.cfg.attacked_models()}

        def mAP(model: str, gallery: str) -> float:
            return ctx.evaluate(model, None if gallery == ORIGINAL else jobs[gallery]).mAP

        bases = ctx.cfg.defended_models()
        cells = table5_cells(bases, [ORIGINAL, *jobs], mAP, lambda b, g: mAP(defended_name(b), g))
        adaptive = adaptive_rows(ctx, [defended_name(n) for n in bases])
        attack_ids = {name: job.id for name, job in jobs.items()}
        return Table5(status="ok", cells=[Table5Cell(**c, attack_id=attack_ids.get(c["gallery"])) for c in cells], adaptive=adaptive)

    def not_run(self, res: Results) -> str | None:
        if res.table5 is not None and res.table5.status != "ok":
            return f"not run: {res.table5.reason}"
        return super().not_run(res)

    def tables(self, res: Results) -> list[Table]:
        t = res.table5
        if t is None:
            return []
        if t.status != "ok":
            return [
                Table(
                    "table5", "Table 5", f"Metric-preserving defense: not run ({t.reason}).", ["Status"], [["not run"]], heading=self.title
                )
            ]
        return [self._cells(res, t), *([self._adaptive(t)] if t.adaptive else [])]

    def _cells(self, res: Results, t: Table5) -> Table:
        bases = list(dict.fromkeys(c.base_model for c in t.cells))
        galleries = list(dict.fromkeys(c.gallery for c in t.cells))
        lookup = {(c.base_model, c.gallery): c for c in t.cells}
        rows = []
        for g in galleries:
            row = [g]
            for b in bases:
                c = lookup.get((b, g))
                row += ["–"] * 3 if c is None else [fmt(c.normal_mAP), fmt(c.defended_mAP), f"{100 * c.improvement:+.3g}%"]
            rows.append(row)
        table = Table(
            "table5",
            "Table 5",
            "mAP of normally trained (#N) and metric-preserving (#M) models on the clean gallery and on the adversarial "
            "galleries made against each normal model; #I = relative improvement (#M − #N) / #N.",
            ["Gallery"] + [f"{b} {s}" for b in bases for s in ("#N", "#M", "#I")],
            rows,
            heading=self.title,
        )
        config = res.provenance.config
        attack = config.get("attack", {})
        method = config.get("experiments", {}).get("table5", {}).get("settings", {}).get("method", "ifgsm")
        values = paper_values(res.dataset.name, res.provenance.ap_convention, attack)
        if values is not None and values.dataset == MARKET and method == "ifgsm":  # the paper: Market-1501, I-FGSM galleries
            paper = table5()
            cells: dict[tuple[int, int], float | str] = {}
            for i, g in enumerate(galleries):
                for k, b in enumerate(bases):
                    model = paper_model(b)
                    attacked = paper_model(g[4:-1]) if g.startswith("adv(") else None
                    key = (g if attacked is None else f"adv({attacked})", str(model))
                    if key in paper:
                        normal, defended, improvement = paper[key]
                        cells |= {(i, 1 + 3 * k): normal, (i, 2 + 3 * k): defended, (i, 3 + 3 * k): improvement}
            table.add_paper(values, "Table 5", cells)
        return table

    def _adaptive(self, t: Table5) -> Table:
        rows = [
            [
                str(r.get("model")),
                str(r.get("role", "")),
                method_label(str(r.get("method"))),
                f"{float(r.get('epsilon', 0)):g}",
                fmt(r.get("clean_mAP")),
                fmt(r.get("adversarial_mAP")),
            ]
            for r in t.adaptive
        ]
        return Table(
            "table5_adaptive",
            "Table 5 (adaptive)",
            "White-box attacks made against each model itself "
            "(the honest robustness numbers; Table 5 above only transfers attacks made against the normal models).",
            ["Model", "Role", "Attack", "ε", "Clean mAP", "Adversarial mAP"],
            rows,
            heading="Table 5 (adaptive) — white-box attacks on the defended models",
            text_columns=3,
        )


EXPERIMENT = Table5Experiment()
