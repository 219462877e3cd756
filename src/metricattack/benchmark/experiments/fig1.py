"""Fig. 1: adversarial gallery images with the probe's similarity before and after the attack."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..figures import figure, image, save
from ..jobs import AttackJob, Needs, single
from ..schema import Fig1, Fig1Example, Results
from .base import Experiment, Figure

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext

METHOD = "ifgsm"  # the paper's default attack (Sec. 5: I-FGSM, ε = 5)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a[None], b[None])[0])


class Fig1Experiment(Experiment):
    name = "fig1"
    title = "Fig. 1 — what the attack does to an image"

    def _jobs(self, cfg: BenchmarkConfig) -> tuple[str, AttackJob, AttackJob]:
        m = cfg.chosen_model("fig1")
        return m, single(cfg, m, METHOD), single(cfg, m, METHOD, threat="targeted")

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        m, nontargeted, targeted = self._jobs(cfg)
        return Needs.tested_on(m, nontargeted, targeted)

    def compute(self, ctx: RunContext) -> Fig1:
        from ...data.loading import read_image

        m, nontargeted, targeted = self._jobs(ctx.cfg)
        rng = random.Random(ctx.cfg.seed + 1)
        queries, clean = ctx.clean[m].query, ctx.clean[m].gallery

        def example(qi: int, gi: int, job: AttackJob) -> Fig1Example:
            clean_rec, adv_rec = ctx.dataset.gallery[gi], ctx.adversarial_gallery(job)[gi]
            linf = float((read_image(adv_rec.path) - read_image(clean_rec.path)).abs().max() * 255)
            return Fig1Example(
                query_path=str(ctx.dataset.query[qi].path),
                gallery_path=str(clean_rec.path),
                adversarial_path=str(adv_rec.path),
                true_match=clean_rec.pid == ctx.dataset.query[qi].pid,
                similarity_before=_cosine(queries[qi], clean[gi]),
                similarity_after=_cosine(queries[qi], ctx.gallery(m, job)[gi]),
                linf=round(linf, 3),
            )

        good = ctx.well_ranked_probes(m)
        targets = ctx.targets().tolist()
        examples = []
        for qi in sorted(rng.sample(good, min(ctx.cfg.experiments.fig1.examples, len(good)))):
            examples.append(example(qi, ctx.top(m, clean, qi, 1)[0], nontargeted))
            pulled = [g for g, t in enumerate(targets) if t == qi]
            if pulled:
                examples.append(example(qi, pulled[0], targeted))
        return Fig1(model=m, attack_id=nontargeted.id, examples=examples)

    def figures(self, res: Results, folder: Path) -> list[Figure]:
        """Clean gallery image, perturbation rescaled to [0, 1], adversarial image; similarity to the probe."""
        f = res.fig1
        if f is None or not f.examples:
            return []
        n = len(f.examples)
        fig, axes = figure(6.4, 0.5 + 2.6 * n, n, 4)
        for row, ex in enumerate(f.examples):
            clean, adv = image(ex.gallery_path), image(ex.adversarial_path)
            delta = adv - clean
            span = delta.max() - delta.min()
            shown = (delta - delta.min()) / span if span > 0 else np.zeros_like(delta)
            kind = "true match" if ex.true_match else "wrong match"
            panels = [
                (image(ex.query_path), "probe"),
                (clean, f"gallery ({kind})\nsim {ex.similarity_before:.3f}"),
                (shown, f"perturbation\n(L∞ {ex.linf:.0f}/255, rescaled)"),
                (adv, f"adversarial\nsim {ex.similarity_after:.3f}"),
            ]
            for ax, (img, title) in zip(axes[row], panels, strict=True):
                ax.imshow(img, interpolation="nearest")
                ax.set_title(title, fontsize=9)
                ax.axis("off")
        fig.suptitle(f"Fig. 1 — adversarial gallery images against {f.model}")
        caption = (
            "Clean gallery image, the perturbation rescaled to [0, 1] for display, and the adversarial image, with the "
            "cosine similarity to the probe before and after the attack."
        )
        return [Figure("fig1", save(fig, folder / "fig1.png"), self.title, caption)]


EXPERIMENT = Fig1Experiment()
