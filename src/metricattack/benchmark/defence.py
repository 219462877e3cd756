"""Table 5 in the benchmark: metric-preserving models (issue #6) next to the normal ones.

For every base model B the defence pipeline (:func:`metricattack.defense.metric_preserving.run_defense`)
attacks B's training set, merges it with the clean one and retrains B's recipe, giving
``B#M`` (a cached stage). Table 5 then evaluates B and ``B#M`` on the clean gallery and
on the adversarial galleries made against each *normal* base model (the Table 2 galleries
of ``experiments.table5.settings.method``), and adds white-box (adaptive) attacks on the
defended models themselves, so transfer robustness is not mistaken for robustness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import validate
from .config import BenchmarkConfig, Table5Settings
from .jobs import single
from .schema import Table5, Table5Cell
from .stages import StageSpec, progress

if TYPE_CHECKING:
    from .runner import Run

CODE_DEFENCE = ("data", "models", "training", "attacks", "metrics", "defense")
SUFFIX = "#M"


def settings_of(run: Run) -> Table5Settings:
    return run.cfg.experiments.table5.settings


def method_of(cfg: BenchmarkConfig) -> str:
    """The attack method of Table 5's adversarial galleries."""
    return cfg.experiments.table5.settings.method


def defended_name(base: str) -> str:
    return f"{base}{SUFFIX}"


def train_defended(run: Run) -> list[str]:
    """Train (or reuse) ``B#M`` for every base model; registers them as models of ``run``."""
    from ..defense.config import DefenseConfig
    from ..defense.metric_preserving import run_defense
    from . import backend

    settings = settings_of(run)
    names = []
    chosen = run.cfg.defended_models()
    for section in progress([m for m in run.cfg.models if m.name in chosen], "defended models"):
        base = section.name
        train_cfg = backend.train_config(section, run.cfg.dataset, run.dataset_root, run.device)
        dcfg = validate(
            DefenseConfig,
            {
                "train": train_cfg.model_dump(mode="json"),
                "base_checkpoint": run.checkpoints[base]["checkpoint"],
                "strategy": "metric_preserving",
                "training_attack": settings.training_attack.model_dump(mode="json"),
                "retrain": settings.retrain.model_dump(mode="json"),
                "evaluation": {"enabled": False},
            },
            f"defence of {base}",
        )
        spec = StageSpec(
            "defended",
            base,
            {"training_attack": settings.training_attack.model_dump(mode="json"), "retrain": settings.retrain.model_dump(mode="json")},
            upstream=(run.keys["dataset"], run.keys[f"model:{base}"]),
            code=CODE_DEFENCE,
        )

        def work(folder: Any, dcfg: Any = dcfg) -> dict[str, Any]:
            summary = run_defense(dcfg, folder / "defence", log=lambda _msg: None)
            return {"checkpoint": summary["defended"]["checkpoint"], "sha256": summary["defended"]["sha256"]}

        out = run.cache.run(spec, work)
        name = defended_name(base)
        run.keys[f"model:{name}"] = spec.key
        run.checkpoints[name] = out
        run.models[name] = backend.load_model(out["checkpoint"], run.device)
        names.append(name)
    return names


def adaptive_rows(run: Run, defended: list[str]) -> list[dict[str, Any]]:
    """White-box attacks on each defended (and, if configured, normal) model itself (cached stage)."""
    from ..defense.evaluation import adaptive_attack_rows

    settings = settings_of(run)
    names = defended + (run.cfg.defended_models() if settings.adaptive_normal else [])
    spec = StageSpec(
        "adaptive",
        ",".join(names),
        {"adaptive": settings.adaptive.model_dump(mode="json"), "ap": run.cfg.evaluation.ap},
        upstream=tuple(run.keys[f"model:{n}"] for n in names),
        code=CODE_DEFENCE,
    )

    def work(_folder: Any) -> dict[str, Any]:
        rows = adaptive_attack_rows(
            {n: run.models[n] for n in names},
            run.ds,
            run.metric(names[0], "euclidean"),
            settings.adaptive.specs(),
            batch_size=settings.adaptive.batch_size,
            device=run.device,
            ap=run.cfg.evaluation.ap,
            roles={n: "defended" if n.endswith(SUFFIX) else "normal" for n in names},
        )
        return {"rows": rows}

    return run.cache.run(spec, work)["rows"]


def table5(run: Run, evaluate: Any, adv: Any) -> Table5:
    """The Table 5 section from the cached features (``evaluate``/``adv`` from :mod:`.experiments`)."""
    from ..defense.evaluation import ORIGINAL, adversarial_gallery_name, table5_cells

    attacked, bases = run.cfg.model_names(), run.cfg.defended_models()
    method = method_of(run.cfg)
    jobs = {adversarial_gallery_name(a): single(run.cfg, a, method) for a in attacked}

    def mAP(model: str, gallery: str) -> float:
        feats = run.clean[model]["gallery"] if gallery == ORIGINAL else adv(run, jobs[gallery], model)
        return evaluate(run, model, feats).mAP

    cells = table5_cells(bases, [ORIGINAL, *jobs], mAP, lambda b, g: mAP(defended_name(b), g))
    adaptive = adaptive_rows(run, [defended_name(n) for n in bases])
    return Table5(status="ok", cells=[Table5Cell(**c) for c in cells], adaptive=adaptive)
