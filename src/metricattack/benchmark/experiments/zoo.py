"""Model zoo (not in the paper): the re-ID models users deploy, clean and under white-box attack.

``experiments.zoo.models`` lists models of any source (``torchreid:<name>`` with weights, a
recipe on a ``timm:<name>`` backbone, ``python:MODULE:FUNCTION``, a checkpoint). Each is attacked
white-box on its own query side (the probes pushed away from their true gallery matches) and
gallery side (gallery images pushed away from their identity's probes) with every method × ε of
the section (default I-FGSM and PGD at ε = 5 and 8, the strongest attacks of the package today;
the section is the one place that choice is made), on images saved as 8-bit PNG and read back.
A table cell is the lowest mAP over the methods: the robustness the strongest attack leaves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...models.foreign import FORMATS
from ..jobs import AttackJob
from ..resources import extract_adversarial, extract_clean, run_attacks, train_models
from ..schema import Results, Zoo, ZooAttack, ZooRow
from ..tables import Table, fmt, method_label
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
            rows.append(ZooRow(model=m.name, source=source(m), paper=paper(m), clean=ctx.evaluate(m.name, None, METRIC), attacks=attacks))
        return Zoo(metric=METRIC, methods=list(zoo.methods), sides=list(zoo.sides), epsilons=list(zoo.epsilons), rows=rows)

    def tables(self, res: Results) -> list[Table]:
        z = res.zoo
        if z is None:
            return []
        cells = [(side, eps) for side in z.sides for eps in z.epsilons]
        header = ["Model", "Source", "Paper", "Clean"] + [f"{side} ε={eps:g}" for side, eps in cells]
        rows = []
        for r in z.rows:
            row = [r.model, r.source, r.paper, fmt(r.clean.mAP)]
            for side, eps in cells:
                worst = min((a for a in r.attacks if a.side == side and a.epsilon == eps), key=lambda a: a.ranking.mAP)
                row.append(fmt(worst.ranking.mAP) + (f" ({method_label(worst.method)})" if len(z.methods) > 1 else ""))
            rows.append(row)
        methods = ", ".join(method_label(m) for m in z.methods)
        caption = (
            f"mAP (%, AP convention '{res.provenance.ap_convention}', {z.metric} distance) of each model clean and under "
            f"white-box attack on its own query side (probes perturbed) or gallery side (gallery images perturbed), "
            f"ε in 0..255 units, images saved as 8-bit PNG; "
            + (f"each cell is the lowest mAP over {methods} (the method in brackets)." if len(z.methods) > 1 else f"attack: {methods}.")
        )
        return [Table("zoo", "Model zoo", caption, header, rows, heading=self.title, text_columns=3)]

    def not_run(self, res: Results) -> str | None:
        if res.zoo is not None:
            return None
        return "not run in this run: experiments.zoo.models is empty (or the experiment was not selected)."


EXPERIMENT = ZooExperiment()
