"""One function per paper table / figure, computed from the cached features of a run.

Every function reads clean and adversarial features from a :class:`~.runner.Run`
(already computed by the stages) and returns one section of ``results.json``.
Distances: ``metric.pairwise`` (squared Euclidean for ``euclidean``); similarity in
Fig. 1 is the cosine similarity of the L2-normalised features.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.types import JUNK_PID
from ..evaluation.chance import dataset_chance
from ..evaluation.ranking import RankingResult, evaluate_distances
from . import backend, defence
from .jobs import AttackJob, ensembles, single
from .schema import (
    ClassificationVsMetric,
    Curve,
    CurvePoint,
    EnsembleRow,
    Fig1,
    Fig1Example,
    Fig3,
    Fig4,
    Fig5,
    MatrixCell,
    MatrixRow,
    ProbeLists,
    RankedImage,
    Ranking,
    RankingList,
    RatioPoint,
    Table1Row,
    Table2,
    Table4,
    Table5,
    Targeted,
)

if TYPE_CHECKING:
    from .runner import Run


# ----------------------------------------------------------------- helpers
def _ids(records: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def distances(run: Run, model: str, metric: str, gallery: torch.Tensor) -> torch.Tensor:
    """``[Q, G]`` distances between ``model``'s clean query features and ``gallery``."""
    m = run.metric(model, metric)
    with torch.no_grad():
        return m.pairwise(run.clean[model]["query"], gallery).float()


def _percent(r: RankingResult) -> Ranking:
    return Ranking(
        rank1=100 * r.cmc[1], rank5=100 * r.cmc[5], rank10=100 * r.cmc[10], mAP=100 * r.mAP, mINP=100 * r.mINP, num_queries=r.num_queries
    )


def ranking_of(run: Run, dist: torch.Tensor) -> Ranking:
    q_pids, q_cams = _ids(run.ds.query)
    g_pids, g_cams = _ids(run.ds.gallery)
    return _percent(evaluate_distances(dist, q_pids, g_pids, q_cams, g_cams, ap=run.cfg.evaluation.ap))


def chance(run: Run) -> Ranking:
    """Expected accuracy of a uniformly random ranking of the test split (the attacks' floor)."""
    return _percent(dataset_chance(run.ds, run.cfg.evaluation.ap))


def adv(run: Run, job: AttackJob, tested: str) -> torch.Tensor:
    return run.adv_features[(job, tested)]


def evaluate(run: Run, tested: str, gallery: torch.Tensor, metric: str = "euclidean") -> Ranking:
    return ranking_of(run, distances(run, tested, metric, gallery))


def tp_distance(run: Run, model: str, gallery: torch.Tensor) -> float:
    """Mean squared-Euclidean distance between queries and their true positives (other camera)."""
    return backend.mean_true_positive_distance(run.metric(model, "euclidean"), run.clean[model]["query"], gallery, run.ds)


# ----------------------------------------------------------------- tables
def table1(run: Run) -> list[Table1Row]:
    desc = {m.name: m.description for m in run.cfg.models}
    return [
        Table1Row(model=n, description=desc[n], metric="euclidean", clean=evaluate(run, n, run.clean[n]["gallery"]))
        for n in run.cfg.model_names()
    ]


def table2(run: Run) -> Table2:
    names = run.cfg.model_names()
    clean = {n: evaluate(run, n, run.clean[n]["gallery"]).mAP for n in names}
    rows = []
    for attacked in names:
        for method in run.cfg.attack.methods:
            job = single(run.cfg, attacked, method)
            cells = [
                MatrixCell(tested=t, ranking=evaluate(run, t, adv(run, job, t)), white_box=t == attacked, worst_in_column=False)
                for t in names
            ]
            rows.append(MatrixRow(attacked=attacked, method=method, attack_id=job.id, cells=cells))
    for j in range(len(names)):
        worst = min(range(len(rows)), key=lambda i: rows[i].cells[j].ranking.mAP)
        rows[worst].cells[j].worst_in_column = True
    return Table2(title=run.cfg.experiments.table2_title, epsilon=run.cfg.attack.eps, clean_mAP=clean, rows=rows)


def fig3(t2: Table2) -> Fig3:
    points = [
        RatioPoint(
            tested=c.tested,
            attacked=r.attacked,
            method=r.method,
            white_box=c.white_box,
            ratio=c.ranking.mAP / t2.clean_mAP[c.tested] if t2.clean_mAP[c.tested] > 0 else 0.0,
        )
        for r in t2.rows
        for c in r.cells
    ]
    return Fig3(points=points)


def table4(run: Run, t2: Table2) -> Table4:
    rows = []
    for holdout, members in ensembles(run.cfg):
        for method in run.cfg.attack.methods:
            job = AttackJob(members, "nontargeted", method, run.cfg.attack.eps, run.cfg.attack.metric)
            mean_dist = torch.stack([distances(run, m, "euclidean", adv(run, job, m)) for m in members]).mean(0)
            singles = [
                c.ranking.mAP for r in t2.rows if r.method == method and r.attacked in members for c in r.cells if c.tested == holdout
            ]
            rows.append(
                EnsembleRow(
                    holdout=holdout,
                    ensemble=list(members),
                    method=method,
                    attack_id=job.id,
                    ensemble_mAP=ranking_of(run, mean_dist).mAP,
                    holdout_mAP=evaluate(run, holdout, adv(run, job, holdout)).mAP,
                    best_single_transfer_mAP=min(singles) if singles else None,
                )
            )
    return Table4(epsilon=run.cfg.attack.eps, rows=rows)


def classification(run: Run) -> ClassificationVsMetric:
    m, method = run.cfg.chosen_model("classification"), run.cfg.experiments.classification.method
    metric_job, cls_job = single(run.cfg, m, method), single(run.cfg, m, method, mode="classification")
    clean_g = run.clean[m]["gallery"]
    return ClassificationVsMetric(
        model=m,
        method=method,
        clean=evaluate(run, m, clean_g),
        metric_attack=evaluate(run, m, adv(run, metric_job, m)),
        classification_attack=evaluate(run, m, adv(run, cls_job, m)),
        mean_tp_distance={
            "clean": tp_distance(run, m, clean_g),
            "metric_attack": tp_distance(run, m, adv(run, metric_job, m)),
            "classification_attack": tp_distance(run, m, adv(run, cls_job, m)),
        },
    )


def targeted(run: Run) -> Targeted:
    m, method = run.cfg.chosen_model("targeted"), run.cfg.experiments.targeted.method
    job = single(run.cfg, m, method, mode="targeted")
    targets = backend.target_assignment(run.ds, run.cfg.seed)
    metric, q = run.metric(m, "euclidean"), run.clean[m]["query"]
    after = backend.targeted_success(metric, q, adv(run, job, m), run.ds, targets)
    before = backend.targeted_success(metric, q, run.clean[m]["gallery"], run.ds, targets)
    return Targeted(
        model=m,
        method=method,
        attack_id=job.id,
        num_images=int(after["num_targets"]),
        top1_rate=after["top1"],
        top10_rate=after["top10"],
        clean_top1_rate=before["top1"],
        clean_top10_rate=before["top10"],
        after=evaluate(run, m, adv(run, job, m)),
    )


def target_map(run: Run) -> dict[int, int]:
    """Gallery index → target query index of the targeted attack (the attack module's seeded rule)."""
    targets = backend.target_assignment(run.ds, run.cfg.seed)
    return {g: int(t) for g, t in enumerate(targets.tolist()) if t >= 0}


# ----------------------------------------------------------------- figures
def _top(run: Run, model: str, gallery: torch.Tensor, q_index: int, k: int) -> list[int]:
    """Indices of the ``k`` gallery items closest to query ``q_index`` (junk excluded, ties by index)."""
    q = run.clean[model]["query"][q_index : q_index + 1]
    with torch.no_grad():
        d = run.metric(model, "euclidean").pairwise(q, gallery)[0].float()
    g_pids, _ = _ids(run.ds.gallery)
    d[torch.from_numpy(g_pids == JUNK_PID)] = float("inf")
    return torch.argsort(d, stable=True)[:k].tolist()


def _ranked(run: Run, model: str, q_index: int, k: int, job: AttackJob | None, setting: str) -> RankingList:
    records = run.ds.gallery if job is None else run.adversarial_gallery(job)
    attacked = None if job is None else backend.attacked_mask(run.ds, job.mode, run.cfg.seed)
    gallery = run.clean[model]["gallery"] if job is None else adv(run, job, model)
    q_pid = run.ds.query[q_index].pid
    top = []
    for rank, g in enumerate(_top(run, model, gallery, q_index, k), start=1):
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
    return RankingList(setting=setting, attack_id=None if job is None else job.id, top=top)


def _good_probes(run: Run, model: str) -> list[int]:
    """Queries whose clean top-1 (junk excluded) is a true match."""
    d = distances(run, model, "euclidean", run.clean[model]["gallery"])
    g_pids, _ = _ids(run.ds.gallery)
    d[:, torch.from_numpy(g_pids == JUNK_PID)] = float("inf")
    first = torch.argmin(d, dim=1).tolist()
    return [qi for qi, q in enumerate(run.ds.query) if q.pid > 0 and g_pids[first[qi]] == q.pid]


def fig4(run: Run) -> Fig4:
    m, f = run.cfg.chosen_model("fig4"), run.cfg.experiments.fig4
    rng = random.Random(run.cfg.seed)
    nt, tg = single(run.cfg, m, f.method), single(run.cfg, m, f.method, mode="targeted")
    good = _good_probes(run, m)
    probes = []
    for qi in sorted(rng.sample(good, min(f.probes, len(good)))):
        probes.append(_probe(run, m, qi, f.top_k, [(None, "clean"), (nt, "nontargeted")]))
    targeted_probes = sorted(set(target_map(run).values()))
    for qi in sorted(rng.sample(targeted_probes, min(f.probes, len(targeted_probes)))):
        probes.append(_probe(run, m, qi, f.top_k, [(None, "clean"), (tg, "targeted")]))
    return Fig4(model=m, top_k=f.top_k, probes=probes)


def _probe(run: Run, model: str, qi: int, k: int, settings: list) -> ProbeLists:
    q = run.ds.query[qi]
    return ProbeLists(
        query_index=qi, path=str(q.path), pid=q.pid, camid=q.camid, lists=[_ranked(run, model, qi, k, job, name) for job, name in settings]
    )


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a[None], b[None])[0])


def fig1(run: Run) -> Fig1:
    m = run.cfg.chosen_model("fig1")
    nt, tg = single(run.cfg, m, "ifgsm"), single(run.cfg, m, "ifgsm", mode="targeted")
    rng = random.Random(run.cfg.seed + 1)
    q_feat, g_clean = run.clean[m]["query"], run.clean[m]["gallery"]
    examples = []

    def example(qi: int, gi: int, job: AttackJob) -> Fig1Example:
        clean_rec, adv_rec = run.ds.gallery[gi], run.adversarial_gallery(job)[gi]
        from ..data.loading import read_image

        linf = float((read_image(adv_rec.path) - read_image(clean_rec.path)).abs().max() * 255)
        return Fig1Example(
            query_path=str(run.ds.query[qi].path),
            gallery_path=str(clean_rec.path),
            adversarial_path=str(adv_rec.path),
            true_match=clean_rec.pid == run.ds.query[qi].pid,
            similarity_before=_cosine(q_feat[qi], g_clean[gi]),
            similarity_after=_cosine(q_feat[qi], adv(run, job, m)[gi]),
            linf=round(linf, 3),
        )

    good = _good_probes(run, m)
    count = run.cfg.experiments.fig1.examples
    for qi in sorted(rng.sample(good, min(count, len(good)))):
        gi = _top(run, m, g_clean, qi, 1)[0]
        examples.append(example(qi, gi, nt))
        pulled = [g for g, q in target_map(run).items() if q == qi]
        if pulled:
            examples.append(example(qi, pulled[0], tg))
    return Fig1(model=m, attack_id=nt.id, examples=examples)


def fig5(run: Run) -> Fig5:
    m, f = run.cfg.chosen_model("fig5"), run.cfg.experiments.fig5
    clean = {t: evaluate(run, m, run.clean[m]["gallery"], t) for t in f.metrics}
    curves = []
    for method in f.methods:
        for am in f.metrics:
            for tm in f.metrics:
                points = [CurvePoint(epsilon=0.0, mAP=clean[tm].mAP)]
                for eps in f.epsilons:
                    job = single(run.cfg, m, method, epsilon=eps, metric=am)
                    points.append(CurvePoint(epsilon=eps, mAP=evaluate(run, m, adv(run, job, m), tm).mAP, attack_id=job.id))
                curves.append(Curve(method=method, attack_metric=am, test_metric=tm, points=points))
    return Fig5(model=m, curves=curves, clean=clean)


def table5(run: Run) -> Table5:
    if not run.cfg.experiments.table5.enabled:
        return Table5(status="not run", reason="disabled in the config (experiments.table5.enabled: false)")
    return defence.table5(run, evaluate, adv)


def compute_all(run: Run) -> dict[str, Any]:
    """Every selected section (plus the sections they depend on, e.g. Table 2 for Fig. 3)."""
    sel = set(run.cfg.selected())
    out: dict[str, Any] = {}
    if "table1" in sel:
        out["table1"] = table1(run)
    if sel & {"table2", "fig3", "table4"}:
        t2 = table2(run)
        if "table2" in sel:
            out["table2"] = t2
        if "fig3" in sel:
            out["fig3"] = fig3(t2)
        if "table4" in sel:
            out["table4"] = table4(run, t2)
    if "classification" in sel:
        out["classification"] = classification(run)
    if "targeted" in sel:
        out["targeted"] = targeted(run)
    if "fig4" in sel:
        out["fig4"] = fig4(run)
    if "fig1" in sel:
        out["fig1"] = fig1(run)
    if "fig5" in sel:
        out["fig5"] = fig5(run)
    if "table5" in sel:
        out["table5"] = table5(run)
    return out


__all__ = ["compute_all", "backend"]
