"""Fig. 4: top-k ranking lists of chosen probes on the clean, non-targeted and targeted galleries."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from ..figures import FALSE_COLOUR, FULL_WIDTH_IN, TRUE_COLOUR, figure, image, save
from ..jobs import AttackJob, Needs, single
from ..schema import Fig4, ProbeLists, RankedImage, RankingList, Results
from .base import Experiment, Figure

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext


def _ranked(ctx: RunContext, model: str, q_index: int, k: int, job: AttackJob | None) -> RankingList:
    records = ctx.dataset.gallery if job is None else ctx.adversarial_gallery(job)
    attacked = None if job is None else ctx.attacked(job.threat)
    q_pid = ctx.dataset.query[q_index].pid
    top = []
    for rank, g in enumerate(ctx.top(model, ctx.gallery(model, job), q_index, k), start=1):
        rec = records[g]
        top.append(
            RankedImage(
                rank=rank,
                path=str(rec.path),
                pid=rec.pid,
                camid=rec.camid,
                correct=rec.pid == q_pid and rec.pid > 0,
                adversarial=attacked is not None and bool(attacked[g]),
            )
        )
    return RankingList(setting="clean" if job is None else job.mode, attack_id=None if job is None else job.id, top=top)


def _probe(ctx: RunContext, model: str, qi: int, k: int, jobs: list[AttackJob | None]) -> ProbeLists:
    q = ctx.dataset.query[qi]
    return ProbeLists(query_index=qi, path=str(q.path), pid=q.pid, camid=q.camid, lists=[_ranked(ctx, model, qi, k, job) for job in jobs])


CELL_WIDTH_IN = 0.85  # one ranked image (81 px), its rank above it
ROW_HEIGHT_IN = 1.9  # one ranking list
LABEL_PT = 9.0
MIN_WIDTH_IN = 7.0  # room for the two-line title


class Fig4Experiment(Experiment):
    name = "fig4"
    title = "Fig. 4 — ranking lists"

    def _jobs(self, cfg: BenchmarkConfig) -> tuple[str, AttackJob, AttackJob]:
        m, method = cfg.chosen_model("fig4"), cfg.experiments.fig4.method
        return m, single(cfg, m, method), single(cfg, m, method, threat="targeted")

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        m, nontargeted, targeted = self._jobs(cfg)
        return Needs.tested_on(m, nontargeted, targeted)

    def compute(self, ctx: RunContext) -> Fig4:
        m, nontargeted, targeted = self._jobs(ctx.cfg)
        f = ctx.cfg.experiments.fig4
        rng = random.Random(ctx.cfg.seed)
        good = ctx.well_ranked_probes(m)
        probes = [_probe(ctx, m, qi, f.top_k, [None, nontargeted]) for qi in sorted(rng.sample(good, min(f.probes, len(good))))]
        targeted_probes = sorted({t for t in ctx.targets().tolist() if t >= 0})
        for qi in sorted(rng.sample(targeted_probes, min(f.probes, len(targeted_probes)))):
            probes.append(_probe(ctx, m, qi, f.top_k, [None, targeted]))
        return Fig4(model=m, top_k=f.top_k, probes=probes)

    def figures(self, res: Results, folder: Path) -> list[Figure]:
        f = res.fig4
        if f is None or not f.probes:
            return []
        rows = [(p, lst) for p in f.probes for lst in p.lists]
        cols = f.top_k + 1
        fig, axes = figure(min(FULL_WIDTH_IN, max(MIN_WIDTH_IN, CELL_WIDTH_IN * cols)), 0.5 + ROW_HEIGHT_IN * len(rows), len(rows), cols)
        for r, (probe, lst) in enumerate(rows):
            ax = axes[r][0]
            ax.imshow(image(probe.path), interpolation="nearest")
            ax.set_title(f"probe {probe.pid}\n{lst.setting}", fontsize=LABEL_PT)
            ax.axis("off")
            for c in range(1, cols):
                ax = axes[r][c]
                ax.axis("off")
                if c - 1 >= len(lst.top):
                    continue
                item = lst.top[c - 1]
                ax.imshow(image(item.path), interpolation="nearest")
                colour = TRUE_COLOUR if item.correct else FALSE_COLOUR
                ax.set_title(f"#{item.rank}{' adv' if item.adversarial else ''}", fontsize=LABEL_PT, color=colour)
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2.5)
        fig.suptitle(f"Fig. 4 — top-{f.top_k} ranking lists on {f.model}\nblue = true match, red = wrong match, adv = adversarial image")
        caption = (
            "Ranking lists of chosen probes on the clean gallery, after the non-targeted and after the targeted attack; "
            "rank positions above each image; blue = true match, red = wrong match."
        )
        return [Figure("fig4", save(fig, folder / "fig4.png"), self.title, caption)]


EXPERIMENT = Fig4Experiment()
