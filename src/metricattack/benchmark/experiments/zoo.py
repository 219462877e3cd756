"""Model zoo (not in the paper): the re-ID models users deploy, clean and under white-box attack.

``experiments.zoo.models`` lists models of any source (``torchreid:<name>`` with weights, a
recipe on a ``timm:<name>`` backbone, ``python:MODULE:FUNCTION``, a checkpoint). Each is attacked
white-box on its own query side (the probes pushed away from their true gallery matches) and
gallery side (gallery images pushed away from their identity's probes) with every method × ε of
the section (default I-FGSM and PGD at ε = 5 and 8, the strongest attacks of the package today;
the section is the one place that choice is made), on images saved as 8-bit PNG and read back.
A table cell is the lowest mAP over the methods: the robustness the strongest attack leaves.
Beside them, each model's robust mAP under the robustness protocol (``experiments.zoo.robustness``:
version, default ``fast``, ε, queries), by the robustness leaderboard's cached stage
(:func:`~.robustness.evaluate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...models.foreign import FORMATS
from ..jobs import AttackJob
from ..resources import extract_adversarial, extract_clean, run_attacks, train_models
from ..schema import Interval, Results, Zoo, ZooAttack, ZooRow
from ..tables import Table, fmt, method_label
from . import robustness
from .base import Experiment

if TYPE_CHECKING:
    from ..config import BenchmarkConfig, ZooModel
    from ..context import RunContext

METRIC = "euclidean"  # the attacks' and the tests' metric: squared Euclidean, what torchreid ranks with
SETTING_OF_SIDE = {"query": "query", "gallery": "gallery"}  # the attack setting that perturbs each side


def jobs(cfg: BenchmarkConfig, model: str) -> list[AttackJob]:
    """Every attack of the zoo on ``model`` (side × ε × method, in the section's order)."""
    zoo = cfg.experiments.zoo
    return [
        AttackJob((model,), SETTING_OF_SIDE[side], method, eps, METRIC)
        for side in zoo.sides
        for eps in zoo.epsilons
        for method in zoo.methods
    ]


def source(m: ZooModel) -> str:
    """Where a zoo model comes from, for the table: its spec, its recipe's backbone, or its checkpoint."""
    if m.model is not None:
        return m.model
    if m.train is not None:
        return f"trained: {m.train.model.label}"
    return f"checkpoint {m.checkpoint.name if m.checkpoint else ''}"


def paper(m: ZooModel) -> str:
    """The paper of a zoo model: given in the config, else its format's, else its description."""
    if m.paper:
        return m.paper
    if m.model is not None and m.model in FORMATS and FORMATS.get(m.model).paper:
        return FORMATS.get(m.model).paper
    return m.description or "—"


class ZooExperiment(Experiment):
    name = "zoo"
    title = "Model zoo — clean and under white-box attack"

    def prepare(self, ctx: RunContext) -> None:
        models = ctx.cfg.experiments.zoo.models
        if not models:
            return
        train_models(ctx, models, "zoo models")
        names = [m.name for m in models]
        extract_clean(ctx, names, [], "zoo clean features")
        run_attacks(ctx, [job for name in names for job in jobs(ctx.cfg, name)])
        extract_adversarial(ctx, [(job, name) for name in names for job in jobs(ctx.cfg, name)], "zoo adversarial features")

    def compute(self, ctx: RunContext) -> Zoo | None:
        zoo = ctx.cfg.experiments.zoo
        if not zoo.models:
            return None
        robust = zoo.robustness
        rows = []
        for m in zoo.models:
            attacks = [
                ZooAttack(
                    attack_id=job.id,
                    side="query" if job.split == "query" else "gallery",
                    method=job.method,
                    epsilon=job.epsilon,
                    linf=ctx.attacks[job].linf,
                    dataset_dir=ctx.attacks[job].dataset_dir,
                    ranking=ctx.evaluate(m.name, job, METRIC),
                )
                for job in jobs(ctx.cfg, m.name)
            ]
            row = ZooRow(model=m.name, source=source(m), paper=paper(m), clean=ctx.evaluate(m.name, None, METRIC), attacks=attacks)
            if robust.enabled:
                result, file, _ = robustness.evaluate(ctx, m.name, robust.version, robust.eps, robust.queries, robust.batch_size)
                row.robust_mAP = Interval(**result.headline.mAP.model_dump())
                row.robust_flagged, row.robust_file = [f.name for f in result.flagged()], str(file)
            rows.append(row)
        on = robust.enabled
        return Zoo(
            metric=METRIC,
            methods=list(zoo.methods),
            sides=list(zoo.sides),
            epsilons=list(zoo.epsilons),
            rows=rows,
            robustness_version=robust.version if on else None,
            robustness_eps=robust.eps if on else None,
            robustness_queries=robust.queries if on else None,
        )

    def tables(self, res: Results) -> list[Table]:
        z = res.zoo
        if z is None:
            return []
        cells = [(side, eps) for side in z.sides for eps in z.epsilons]
        header = ["Model", "Source", "Paper", "Clean"] + [f"{side} ε={eps:g}" for side, eps in cells]
        if z.robustness_version is not None:
            header.append(f"Robust mAP ({z.robustness_version}, ε={z.robustness_eps:g})")
        rows = []
        for r in z.rows:
            row = [r.model, r.source, r.paper, fmt(r.clean.mAP)]
            for side, eps in cells:
                worst = min((a for a in r.attacks if a.side == side and a.epsilon == eps), key=lambda a: a.ranking.mAP)
                row.append(fmt(worst.ranking.mAP) + (f" ({method_label(worst.method)})" if len(z.methods) > 1 else ""))
            if z.robustness_version is not None:
                m = r.robust_mAP
                flagged = f" (flagged: {', '.join(r.robust_flagged)})" if r.robust_flagged else ""
                row.append("—" if m is None else f"{fmt(m.value)} [{fmt(m.low)}, {fmt(m.high)}]{flagged}")
            rows.append(row)
        methods = ", ".join(method_label(m) for m in z.methods)
        caption = (
            f"mAP (%, AP convention '{res.provenance.ap_convention}', {z.metric} distance) of each model clean and under "
            f"white-box attack on its own query side (probes perturbed) or gallery side (gallery images perturbed), "
            f"ε in 0..255 units, images saved as 8-bit PNG; "
            + (f"each cell is the lowest mAP over {methods} (the method in brackets)." if len(z.methods) > 1 else f"attack: {methods}.")
            + (
                f" Robust mAP: the robustness protocol '{z.robustness_version}' (metricattack robustness: per query the lowest AP "
                "over a cascade of APGD and Square attacks on the query image, 8-bit images), 95% bootstrap interval over queries"
                + (f", on {z.robustness_queries} queries evenly spaced" if z.robustness_queries else "")
                + "; flagged: the protocol's checks that may mean the number overstates robustness (the model's robustness.json)."
                if z.robustness_version is not None
                else ""
            )
        )
        return [Table("zoo", "Model zoo", caption, header, rows, heading=self.title, text_columns=3)]

    def not_run(self, res: Results) -> str | None:
        if res.zoo is not None:
            return None
        return "not run in this run: experiments.zoo.models is empty (or the experiment was not selected)."


EXPERIMENT = ZooExperiment()
