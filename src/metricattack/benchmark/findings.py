"""The six findings of the paper, checked against the numbers of one run.

Each check reads only :class:`~.schema.Results` sections and returns a
:class:`~.schema.Finding` with ``holds`` / ``does not hold`` / ``not measured``, a
plain-language sentence with the numbers, and the numbers themselves. The thresholds
(what "near zero" or "far above" means) are the module constants below, stated in
every summary so a reader can disagree with them.
"""

from __future__ import annotations

from statistics import mean

from .schema import Finding, Results, Status, Table2

NEAR_ZERO_RATIO = 0.10  # white-box I-FGSM mAP at most 10% of clean mAP
FAR_ABOVE_FACTOR = 3.0  # mean black-box mAP at least 3x mean white-box mAP
CLASSIFICATION_FACTOR = 2.0  # metric attack's mAP drop at least 2x the classification attack's
TARGETED_TOP10 = 0.5  # at least half of the targeted images reach their probe's top-10

FURTHER_TITLES = {
    7: "XQDA on deep features is slightly below the Euclidean distance on clean data (paper: mAP 75.86 vs 77.52)",
    8: "Changing the metric between attack and test helps the defender (Fig. 5)",
    9: "Metric-preserving models keep clean mAP (drop ≤ 10%) and raise mAP on adversarial galleries (Table 5)",
}
DEFENSE_CLEAN_DROP = 0.10

TITLES = {
    1: "White-box I-FGSM drives mAP near zero",
    2: "Black-box mAP is far above white-box mAP",
    3: "I-FGSM is the strongest white-box method; MI-FGSM transfers best",
    4: "Ensemble attacks lower the hold-out model's mAP below the best single-model transfer",
    5: "Metric attack hurts retrieval far more than classification attack",
    6: "Targeted attacks put adversarial gallery images at the top of their target probe's ranking",
}


def _not_measured(fid: int, why: str) -> Finding:
    return Finding(id=fid, title=TITLES[fid], status="not measured", summary=why)


def _verdict(ok: bool) -> Status:
    return "holds" if ok else "does not hold"


def _cells(t: Table2, method: str, white_box: bool) -> list[tuple[str, str, float]]:
    return [(r.attacked, c.tested, c.ranking.mAP) for r in t.rows if r.method == method for c in r.cells if c.white_box == white_box]


def finding1(res: Results) -> Finding:
    t = res.table2
    if t is None or not _cells(t, "ifgsm", True):
        return _not_measured(1, "No white-box I-FGSM attack in this run (Table 2 not selected or I-FGSM not configured).")
    numbers, ok = {}, True
    for attacked, _, value in _cells(t, "ifgsm", True):
        clean = t.clean_mAP[attacked]
        numbers[f"{attacked}.clean_mAP"] = clean
        numbers[f"{attacked}.whitebox_ifgsm_mAP"] = value
        ok &= value <= NEAR_ZERO_RATIO * clean
    parts = [
        f"{a}: {numbers[f'{a}.clean_mAP']:.2f} → {numbers[f'{a}.whitebox_ifgsm_mAP']:.2f}"
        for a in dict.fromkeys(k.split(".")[0] for k in numbers)
    ]
    return Finding(
        id=1,
        title=TITLES[1],
        status=_verdict(ok),
        numbers=numbers,
        summary=f"White-box I-FGSM mAP (clean → attacked): {'; '.join(parts)}. Criterion: every model "
        f"ends at ≤ {NEAR_ZERO_RATIO:.0%} of its clean mAP (paper: 77.52 → 0.367)."
        + (f" Chance level (a random ranking): mAP {res.dataset.chance.mAP:.2f}." if res.dataset.chance else ""),
    )


def finding2(res: Results) -> Finding:
    t = res.table2
    if t is None or len(t.clean_mAP) < 2:
        return _not_measured(2, "Needs Table 2 with at least two models (white-box and black-box cells).")
    white = [v for r in t.rows for c in r.cells if c.white_box for v in [c.ranking.mAP]]
    black = [v for r in t.rows for c in r.cells if not c.white_box for v in [c.ranking.mAP]]
    rows_ok = all(
        min(c.ranking.mAP for c in r.cells if not c.white_box) > max(c.ranking.mAP for c in r.cells if c.white_box) for r in t.rows
    )
    mw, mb = mean(white), mean(black)
    ok = rows_ok and mb >= FAR_ABOVE_FACTOR * max(mw, 1e-9)
    return Finding(
        id=2,
        title=TITLES[2],
        status=_verdict(ok),
        numbers={"mean_whitebox_mAP": mw, "mean_blackbox_mAP": mb, "every_row_blackbox_above": float(rows_ok)},
        summary=f"Mean black-box mAP {mb:.2f} vs mean white-box mAP {mw:.2f}; in "
        f"{'every' if rows_ok else 'not every'} attack row each black-box cell is above the white-box cell. "
        f"Criterion: every row, and mean black-box ≥ {FAR_ABOVE_FACTOR:g}× mean white-box.",
    )


def finding3(res: Results) -> Finding:
    t = res.table2
    methods = sorted({r.method for r in t.rows}) if t else []
    if t is None or not {"fgsm", "ifgsm", "mifgsm"} <= set(methods) or len(t.clean_mAP) < 2:
        return _not_measured(3, "Needs Table 2 with FGSM, I-FGSM and MI-FGSM and at least two models.")
    white = {m: mean(v for *_, v in _cells(t, m, True)) for m in methods}
    black = {m: mean(v for *_, v in _cells(t, m, False)) for m in methods}
    strongest = min(white, key=white.__getitem__)
    transfers = min(black, key=black.__getitem__)
    ok = strongest == "ifgsm" and transfers == "mifgsm"
    numbers = {f"whitebox_mean_mAP.{m}": v for m, v in white.items()} | {f"blackbox_mean_mAP.{m}": v for m, v in black.items()}
    wtxt = ", ".join(f"{m} {v:.2f}" for m, v in white.items())
    btxt = ", ".join(f"{m} {v:.2f}" for m, v in black.items())
    return Finding(
        id=3,
        title=TITLES[3],
        status=_verdict(ok),
        numbers=numbers,
        summary=f"Mean white-box mAP: {wtxt} (lowest: {strongest}). Mean black-box mAP: {btxt} "
        f"(lowest: {transfers}). Holds when I-FGSM has the lowest white-box and MI-FGSM the lowest black-box mAP.",
    )


def finding4(res: Results) -> Finding:
    t = res.table4
    rows = [(r, best) for r in (t.rows if t else []) if (best := r.best_single_transfer_mAP) is not None]
    if not rows:
        return _not_measured(4, "Needs Table 4 (ensembles of ≥ 2 models) and Table 2 for the single-model transfers.")
    wins = [r for r, best in rows if r.holdout_mAP < best]
    numbers = {f"{r.holdout}.{r.method}.ensemble_holdout_mAP": r.holdout_mAP for r, _ in rows}
    numbers |= {f"{r.holdout}.{r.method}.best_single_mAP": best for r, best in rows}
    detail = "; ".join(f"-{r.holdout} {r.method}: {r.holdout_mAP:.2f} vs {best:.2f}" for r, best in rows)
    return Finding(
        id=4,
        title=TITLES[4],
        status=_verdict(len(wins) == len(rows)),
        numbers=numbers,
        summary=f"Hold-out mAP after the ensemble attack vs best single-model transfer: {detail}. "
        f"Lower in {len(wins)} of {len(rows)} cases; holds when lower in all.",
    )


def finding5(res: Results) -> Finding:
    c = res.classification
    if c is None or c.classification_attack is None:
        why = c.classification_missing if c is not None and c.classification_missing else "classification experiment not selected"
        return _not_measured(5, f"No classification-attack measurement ({why}).")
    clean, metric, cls = c.clean.mAP, c.metric_attack.mAP, c.classification_attack.mAP
    drop_metric, drop_cls = clean - metric, clean - cls
    ok = drop_metric >= CLASSIFICATION_FACTOR * max(drop_cls, 1e-9)
    return Finding(
        id=5,
        title=TITLES[5],
        status=_verdict(ok),
        numbers={"clean_mAP": clean, "metric_attack_mAP": metric, "classification_attack_mAP": cls},
        summary=f"On {c.model}: clean mAP {clean:.2f}, after metric attack {metric:.2f}, after classification "
        f"attack {cls:.2f} (drops {drop_metric:.2f} vs {drop_cls:.2f}). Criterion: metric drop ≥ "
        f"{CLASSIFICATION_FACTOR:g}× classification drop (paper: 77.52 → 0.367 vs 52.93).",
    )


def finding6(res: Results) -> Finding:
    t = res.targeted
    if t is None:
        return _not_measured(6, "Targeted experiment not selected.")
    ok = t.top10_rate >= TARGETED_TOP10 and t.top10_rate > t.clean_top10_rate
    return Finding(
        id=6,
        title=TITLES[6],
        status=_verdict(ok),
        numbers={
            "top1_rate": t.top1_rate,
            "top10_rate": t.top10_rate,
            "clean_top1_rate": t.clean_top1_rate,
            "clean_top10_rate": t.clean_top10_rate,
        },
        summary=f"{100 * t.top10_rate:.1f}% of the {t.num_images} targeted images reach the top-10 of their target "
        f"probe ({100 * t.top1_rate:.1f}% the top-1), vs {100 * t.clean_top10_rate:.1f}% before the attack. "
        f"Criterion: ≥ {TARGETED_TOP10:.0%} in the top-10.",
    )


def compute_findings(res: Results) -> list[Finding]:
    """All six findings for ``res`` (its ``findings`` field is ignored)."""
    return [finding1(res), finding2(res), finding3(res), finding4(res), finding5(res), finding6(res)]


def _further_not_measured(fid: int, why: str) -> Finding:
    return Finding(id=fid, title=FURTHER_TITLES[fid], status="not measured", summary=why)


def finding7(res: Results) -> Finding:
    f = res.fig5
    if f is None or "xqda" not in f.clean or "euclidean" not in f.clean:
        return _further_not_measured(7, "Needs Fig. 5 with both the Euclidean and the XQDA metric.")
    e, x = f.clean["euclidean"], f.clean["xqda"]
    return Finding(
        id=7,
        title=FURTHER_TITLES[7],
        status=_verdict(x.mAP < e.mAP),
        numbers={"euclidean_rank1": e.rank1, "euclidean_mAP": e.mAP, "xqda_rank1": x.rank1, "xqda_mAP": x.mAP},
        summary=f"On {f.model}, clean: Euclidean rank-1 {e.rank1:.2f} / mAP {e.mAP:.2f}, XQDA rank-1 {x.rank1:.2f} / "
        f"mAP {x.mAP:.2f}. Holds when XQDA's mAP is below Euclidean's.",
    )


def finding8(res: Results) -> Finding:
    f = res.fig5
    metrics = {c.attack_metric for c in f.curves} if f else set()
    if f is None or not {"euclidean", "xqda"} <= metrics:
        return _further_not_measured(8, "Needs Fig. 5 curves attacking and testing with both Euclidean and XQDA.")
    curves = {(c.method, c.attack_metric, c.test_metric): {p.epsilon: p.mAP for p in c.points} for c in f.curves}
    numbers, wins, total = {}, 0, 0
    for (method, am, tm), pts in curves.items():
        if am != tm:
            continue
        other = "xqda" if am == "euclidean" else "euclidean"
        swapped = curves.get((method, am, other))
        if swapped is None:
            continue
        for eps, same in pts.items():
            if eps == 0 or eps not in swapped:
                continue
            total += 1
            wins += swapped[eps] > same
            numbers[f"{method}.{am}/{am}.eps{eps:g}"] = same
            numbers[f"{method}.{am}/{other}.eps{eps:g}"] = swapped[eps]
    if total == 0:
        return _further_not_measured(8, "No matching attack/test metric pairs in Fig. 5.")
    return Finding(
        id=8,
        title=FURTHER_TITLES[8],
        status=_verdict(wins == total),
        numbers=numbers,
        summary=f"Testing with a different metric than the attack gave a higher mAP in {wins} of {total} "
        "(method, attack metric, ε) cases; holds when higher in all.",
    )


def finding9(res: Results) -> Finding:
    t = res.table5
    if t is None or t.status != "ok" or not t.cells:
        return _further_not_measured(9, f"Table 5 not run{': ' + t.reason if t is not None and t.reason else ''}.")
    clean = [c for c in t.cells if c.gallery == "original"]
    adv = [c for c in t.cells if c.gallery != "original"]
    worst_clean = min(c.improvement for c in clean)
    rising = sum(c.improvement > 0 for c in adv)
    ok = worst_clean >= -DEFENSE_CLEAN_DROP and rising == len(adv)
    numbers = {f"{c.base_model}.{c.gallery}.improvement": c.improvement for c in t.cells}
    return Finding(
        id=9,
        title=FURTHER_TITLES[9],
        status=_verdict(ok),
        numbers=numbers,
        summary=f"Largest clean-mAP change {100 * worst_clean:+.1f}% (allowed ≥ {-100 * DEFENSE_CLEAN_DROP:.0f}%); "
        f"mAP on adversarial galleries rose in {rising} of {len(adv)} cells. These are transfer attacks "
        "made against the normal models; see the adaptive rows for attacks on the defended models themselves.",
    )


def compute_further_findings(res: Results) -> list[Finding]:
    """Checks beyond the six findings: XQDA (issue #5) and the defense (issue #6)."""
    return [finding7(res), finding8(res), finding9(res)]
