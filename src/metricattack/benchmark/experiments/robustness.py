"""The robustness leaderboard: ``metricattack robustness``'s protocol on every model of the run.

Each model (the base and test-only models, and Table 5's defended ones when it ran: this
experiment comes last, so they exist) is evaluated by :func:`~metricattack.robustness.evaluate.run_protocol`
in a cached stage of its own (``robustness.json`` and the per-query evidence in the stage folder,
the finished attack runs beside them, so a killed evaluation resumes at its first unfinished run).
The leaderboard ranks them by robust mAP at the headline ε, with bootstrap intervals, clean mAP,
chance, the checks that flagged and the evaluation's cost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...io import atomic_write_json
from ...robustness.evaluate import evidence_key, query_subset, run_protocol
from ...robustness.protocol import VERSIONS
from ...robustness.result import RobustnessResult
from ...stages import StageSpec
from ..evidence import ap_key, load_evidence, save_evidence
from ..resources import progress, stage_seconds
from ..schema import Interval, Leaderboard, LeaderboardRow, Results
from ..tables import Table, fmt
from .base import Experiment

if TYPE_CHECKING:
    from ..context import RunContext

CODE = ("attacks", "robustness", "evaluation", "metrics", "models", "data", "benchmark/evidence", "compute")
RESULT_FILE, EVIDENCE_FILE = "robustness.json", "evidence.safetensors"


def robust_key(version: str, eps: float) -> str:
    """The evidence name of a model's robust per-query APs (``ap_key(model, robust_key(...), metric)``)."""
    return f"robust-{version}-eps{eps:g}"


def evaluate(
    ctx: RunContext, name: str, version: str, eps: float, queries: int | None, batch_size: int
) -> tuple[RobustnessResult, Path, float]:
    """Model ``name`` of the run under the protocol ``version`` at ``eps`` (on ``queries`` evenly spaced
    queries; None: all), in a cached stage: its result, its ``robustness.json`` and the seconds it took.
    The robust per-query APs join the run's evidence when every query was evaluated."""
    spec = StageSpec(
        "robustness",
        name,
        {"version": version, "eps": eps, "queries": queries, "ap": ctx.cfg.evaluation.ap, "metric": "euclidean"},
        upstream=(ctx.keys["dataset"], ctx.keys[f"model:{name}"]),
        code=CODE,
    )

    def work(folder: Path) -> dict[str, Any]:
        result, evidence = run_protocol(
            ctx.models[name],
            query_subset(ctx.dataset, queries),
            eps=eps,
            version=version,
            ap=ctx.cfg.evaluation.ap,
            batch_size=batch_size,
            device=ctx.device,
            records=folder / "runs",
            model_record=ctx.records[name].attack_record(name),
        )
        atomic_write_json(folder / RESULT_FILE, result.model_dump(mode="json"))
        save_evidence(folder / EVIDENCE_FILE, evidence)
        return {"result": RESULT_FILE, "evidence": EVIDENCE_FILE}

    outputs = ctx.cache.run(spec, work)
    folder = ctx.cache.folder(spec)
    result = RobustnessResult.model_validate(json.loads((folder / outputs["result"]).read_text(encoding="utf-8")))
    robust = load_evidence(folder / outputs["evidence"])[evidence_key(eps)]
    if len(robust) == len(ctx.dataset.query):  # beside the run's other per-query APs (a subset has other queries)
        ctx.evidence[ap_key(name, robust_key(version, eps), "euclidean")] = robust
    return result, folder / outputs["result"], round(stage_seconds(ctx, spec) or result.cost.seconds, 3)


def gallery_budget(version: str) -> str:
    """The gallery-side figure's budget in protocol ``version``, for a caption ("" when it attacks every eligible image)."""
    side = VERSIONS.get(version).gallery
    return "" if side is None or side.top_k is None else f" (only those in the clean top {side.top_k} of a query of their identity)"


class RobustnessExperiment(Experiment):
    name = "robustness"
    title = "Robustness leaderboard — worst case over an attack cascade"

    def compute(self, ctx: RunContext) -> Leaderboard | None:
        section = ctx.cfg.experiments.robustness
        if not section.enabled:
            return None
        rows = []
        for name in progress(section.models or list(ctx.models), "robustness"):
            result, file, seconds = evaluate(ctx, name, section.version, section.eps, section.queries, section.batch_size)
            head = result.headline
            rows.append(
                LeaderboardRow(
                    model=name,
                    robust_mAP=Interval(**head.mAP.model_dump()),
                    robust_rank1=Interval(**head.rank1.model_dump()),
                    clean_mAP=result.clean.value,
                    chance_mAP=result.chance_mAP,
                    gallery_mAP=Interval(**result.gallery.mAP.model_dump()) if result.gallery else None,
                    flagged=[f.name for f in result.flagged()],
                    forwards_per_query=result.cost.per_query_forwards,
                    backwards_per_query=result.cost.per_query_backwards,
                    seconds=seconds,
                    file=str(file),
                )
            )
        rows.sort(key=lambda r: (-r.robust_mAP.value, r.model))
        return Leaderboard(version=section.version, eps=section.eps, queries=section.queries, rows=rows)

    def tables(self, res: Results) -> list[Table]:
        board = res.robustness
        if board is None:
            return []
        rows = [
            [
                r.model,
                f"{fmt(r.robust_mAP.value)} [{fmt(r.robust_mAP.low)}, {fmt(r.robust_mAP.high)}]",
                f"{fmt(r.robust_rank1.value)} [{fmt(r.robust_rank1.low)}, {fmt(r.robust_rank1.high)}]",
                fmt(r.clean_mAP),
                fmt(r.chance_mAP),
                f"{fmt(r.gallery_mAP.value)} [{fmt(r.gallery_mAP.low)}, {fmt(r.gallery_mAP.high)}]" if r.gallery_mAP else "—",
                ", ".join(r.flagged) or "none",
                f"{r.forwards_per_query:.0f} + {r.backwards_per_query:.0f}",
            ]
            for r in board.rows
        ]
        return [
            Table(
                "robustness",
                "Robustness leaderboard",
                f"Robust mAP and rank-1 at ε = {board.eps:g}/255 (protocol '{board.version}'): per query, the lowest AP and rank-1 "
                "over a cascade of APGD (metric loss, targeted ranking margin, self-referenced) and Square attacks on the query "
                "image, against the clean gallery; 95% bootstrap intervals over queries. Most robust first. Gallery-side mAP "
                "(reported apart, not in the ranking): the paper's threat model, the gallery images of the queries' identities "
                f"attacked by APGD on the paper's metric loss{gallery_budget(board.version)}, every query clean. Flags: checks that "
                "may mean the number overstates robustness (see each model's robustness.json). Cost: forward + backward passes "
                "of one image per query."
                + (f" Evaluated on {board.queries} queries evenly spaced over the query list." if board.queries else ""),
                ["Model", "Robust mAP", "Robust rank-1", "Clean mAP", "Chance mAP", "Gallery-side mAP", "Flags", "Cost / query"],
                rows,
                heading=self.title,
                text_columns=1,
            )
        ]

    def not_run(self, res: Results) -> str | None:
        if res.robustness is not None:
            return None
        return "not run in this run (not selected, or experiments.robustness.enabled is false)."


EXPERIMENT = RobustnessExperiment()
