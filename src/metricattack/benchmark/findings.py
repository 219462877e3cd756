"""The paper's findings, checked against the numbers of one run, with confidence.

Each check reads :class:`~.schema.Results` sections to know what was compared and takes the
compared quantities from the run's evidence (per-query APs, per-image targeted hits) through a
seeded :class:`~.evidence.Bootstrap`, so every number comes with its interval. A criterion is a
list of inequalities (:class:`~.schema.Check`); a finding ``holds`` when every inequality holds
over its whole interval, ``does not hold`` when one is violated over its whole interval, and is
``inconclusive`` otherwise (``not measured`` when the run lacks the experiment). The thresholds
(what "near zero" or "far above" means) are the module constants below, stated in every summary
so a reader can disagree with them; docs/results-schema.md describes the method.
"""

from __future__ import annotations

import numpy as np

from ..attacks.methods import METHODS
from ..metrics.learned import LEARNED_METRICS
from ..wording import agree, counted
from .evidence import Bootstrap, ap_key, hits_key
from .experiments.table5 import defended_name
from .schema import Check, Finding, MatrixRow, Results, Status, Verdict

NEAR_ZERO_RATIO = 0.10  # white-box I-FGSM mAP at most 10% of clean mAP
FAR_ABOVE_FACTOR = 3.0  # mean black-box mAP at least 3x mean white-box mAP
CLASSIFICATION_FACTOR = 2.0  # metric attack's mAP drop at least 2x the classification attack's
TARGETED_TOP10 = 0.5  # at least half of the targeted images reach their probe's top-10
DEFENSE_CLEAN_DROP = 0.10  # metric-preserving models lose at most 10% of clean mAP

# The names the paper's claims are about (checked against the registries at import).
FGSM, IFGSM, MIFGSM = (METHODS.check(m) for m in ("fgsm", "ifgsm", "mifgsm"))
EUCLIDEAN, XQDA = "euclidean", LEARNED_METRICS.check("xqda")

TITLES = {
    1: "White-box I-FGSM drives mAP near zero",
    2: "Black-box mAP is far above white-box mAP",
    3: "I-FGSM is the strongest white-box method; MI-FGSM transfers best",
    4: "Ensemble attacks lower the hold-out model's mAP below the best single-model transfer",
    5: "Metric attack hurts retrieval far more than classification attack",
    6: "Targeted attacks put adversarial gallery images at the top of their target probe's ranking",
    7: "XQDA on deep features is slightly below the Euclidean distance on clean data (paper: mAP 75.86 vs 77.52)",
    8: "Changing the metric between attack and test helps the defender (Fig. 5)",
    9: "Metric-preserving models keep clean mAP (drop ≤ 10%) and raise mAP on adversarial galleries (Table 5)",
}


class Measured:
    """A finding under construction: its numbers (with intervals) and the checks of its criterion."""

    def __init__(self, fid: int, boot: Bootstrap) -> None:
        self.fid, self.boot = fid, boot
        self.numbers: dict[str, float] = {}
        self.intervals: dict[str, tuple[float, float]] = {}
        self.checks: list[Check] = []

    def number(self, name: str, values: np.ndarray) -> np.ndarray:
        """Record ``values`` (``[1 + B]``: full sample, then resamples) as number ``name``; returns them."""
        self.numbers[name] = float(values[0])
        self.intervals[name] = self.boot.interval(values)
        return values

    def text(self, name: str, scale: float = 1.0, digits: int = 2) -> str:
        """``value [low, high]`` of number ``name`` (times ``scale``)."""
        low, high = self.intervals[name]
        return f"{scale * self.numbers[name]:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"

    def check(self, name: str, margin: np.ndarray, strict: bool) -> Verdict:
        """Add the inequality ``margin > 0`` (``strict``) or ``margin ≥ 0``; returns its verdict."""
        low, high = self.boot.interval(margin)
        met = (lambda v: v > 0) if strict else (lambda v: v >= 0)
        status: Verdict = "holds" if met(low) else "does not hold" if not met(high) else "inconclusive"
        self.checks.append(Check(name=name, margin=float(margin[0]), low=low, high=high, strict=strict, status=status))
        return status

    def finding(self, summary: str) -> Finding:
        verdicts = {c.status for c in self.checks}
        status: Status = "does not hold" if "does not hold" in verdicts else "inconclusive" if "inconclusive" in verdicts else "holds"
        held = sum(c.status == "holds" for c in self.checks)
        tally = (
            f" {held} of {counted(len(self.checks), 'check')} {agree(held, 'holds', 'hold')} over {agree(held, 'its', 'their')} whole {100 * self.boot.confidence:g}% interval."
            if len(self.checks) > 1
            else ""
        )
        return Finding(
            id=self.fid,
            title=TITLES[self.fid],
            status=status,
            summary=summary + tally,
            numbers=self.numbers,
            intervals=self.intervals,
            checks=self.checks,
        )


def _not_measured(fid: int, why: str) -> Finding:
    return Finding(id=fid, title=TITLES[fid], status="not measured", summary=why)


def _cells(rows: list[MatrixRow], method: str | None, white_box: bool) -> list[tuple[MatrixRow, str]]:
    """(row, tested model) of the white-box or black-box cells of Table 2, of one method or all."""
    return [(r, c.tested) for r in rows if method is None or r.method == method for c in r.cells if c.white_box == white_box]


def _clean(boot: Bootstrap, model: str, metric: str = EUCLIDEAN) -> np.ndarray:
    return boot.mAP(ap_key(model, None, metric))


def _adv(boot: Bootstrap, model: str, attack_id: str, metric: str = EUCLIDEAN) -> np.ndarray:
    return boot.mAP(ap_key(model, attack_id, metric))


def finding1(res: Results, boot: Bootstrap) -> Finding:
    t = res.table2
    cells = _cells(t.rows, IFGSM, True) if t else []
    if t is None or not cells:
        return _not_measured(1, "No white-box I-FGSM attack in this run (Table 2 not selected or I-FGSM not configured).")
    m = Measured(1, boot)
    parts = []
    for row, model in cells:
        clean = m.number(f"{model}.clean_mAP", _clean(boot, model))
        white = m.number(f"{model}.whitebox_ifgsm_mAP", _adv(boot, model, row.attack_id))
        m.check(f"{model}: white-box I-FGSM mAP ≤ {NEAR_ZERO_RATIO:.0%} of clean mAP", NEAR_ZERO_RATIO * clean - white, strict=False)
        parts.append(f"{model}: {m.text(f'{model}.clean_mAP')} → {m.text(f'{model}.whitebox_ifgsm_mAP')}")
    chance = f" Chance level (a random ranking): mAP {res.dataset.chance.mAP:.2f}." if res.dataset.chance else ""
    return m.finding(
        f"White-box I-FGSM mAP (clean → attacked, 95% interval): {'; '.join(parts)}. Criterion: every model "
        f"ends at ≤ {NEAR_ZERO_RATIO:.0%} of its clean mAP (paper: 77.52 → 0.367).{chance}"
    )


def finding2(res: Results, boot: Bootstrap) -> Finding:
    t = res.table2
    if t is None or len(t.clean_mAP) < 2 or not _cells(t.rows, None, False):
        return _not_measured(2, "Needs Table 2 with at least two models (white-box and black-box cells).")
    m = Measured(2, boot)
    cell = {(r.attack_id, tested): _adv(boot, tested, r.attack_id) for r in t.rows for c in r.cells for tested in [c.tested]}
    white = [cell[(r.attack_id, tested)] for r, tested in _cells(t.rows, None, True)]
    black = [cell[(r.attack_id, tested)] for r, tested in _cells(t.rows, None, False)]
    mw = m.number("mean_whitebox_mAP", np.mean(white, axis=0))
    mb = m.number("mean_blackbox_mAP", np.mean(black, axis=0))
    rows_held = 0
    for r in t.rows:
        lowest_black = np.min([cell[(r.attack_id, c.tested)] for c in r.cells if not c.white_box], axis=0)
        highest_white = np.max([cell[(r.attack_id, c.tested)] for c in r.cells if c.white_box], axis=0)
        rows_held += (
            m.check(f"{r.attacked} {r.method}: every black-box cell above the white-box cell", lowest_black - highest_white, strict=True)
            == "holds"
        )
    m.check(f"mean black-box mAP ≥ {FAR_ABOVE_FACTOR:g}× mean white-box mAP", mb - FAR_ABOVE_FACTOR * mw, strict=False)
    return m.finding(
        f"Mean black-box mAP {m.text('mean_blackbox_mAP')} vs mean white-box mAP {m.text('mean_whitebox_mAP')}; "
        f"in {rows_held} of {counted(len(t.rows), 'attack row')} every black-box cell is above the white-box cell over the whole interval. "
        f"Criterion: every row, and mean black-box ≥ {FAR_ABOVE_FACTOR:g}× mean white-box."
    )


def finding3(res: Results, boot: Bootstrap) -> Finding:
    t = res.table2
    paper = (FGSM, IFGSM, MIFGSM)
    if t is None or not set(paper) <= {r.method for r in t.rows} or len(t.clean_mAP) < 2:
        return _not_measured(3, "Needs Table 2 with FGSM, I-FGSM and MI-FGSM and at least two models.")
    m = Measured(3, boot)
    white = {
        p: m.number(f"whitebox_mean_mAP.{p}", np.mean([_adv(boot, x, r.attack_id) for r, x in _cells(t.rows, p, True)], axis=0))
        for p in paper
    }
    black = {
        p: m.number(f"blackbox_mean_mAP.{p}", np.mean([_adv(boot, x, r.attack_id) for r, x in _cells(t.rows, p, False)], axis=0))
        for p in paper
    }
    for p in paper:
        if p != IFGSM:
            m.check(f"white-box: I-FGSM below {p}", white[p] - white[IFGSM], strict=True)
        if p != MIFGSM:
            m.check(f"black-box: MI-FGSM below {p}", black[p] - black[MIFGSM], strict=True)
    wtxt = ", ".join(f"{p} {m.text(f'whitebox_mean_mAP.{p}')}" for p in paper)
    btxt = ", ".join(f"{p} {m.text(f'blackbox_mean_mAP.{p}')}" for p in paper)
    return m.finding(
        f"Mean white-box mAP: {wtxt}. Mean black-box mAP: {btxt}. "
        "Holds when I-FGSM has the lowest white-box and MI-FGSM the lowest black-box mAP."
    )


def finding4(res: Results, boot: Bootstrap) -> Finding:
    t = res.table4
    rows = [r for r in (t.rows if t else []) if r.single_attack_ids]
    if not rows:
        return _not_measured(4, "Needs Table 4 (ensembles of ≥ 2 models) and Table 2 for the single-model transfers.")
    m = Measured(4, boot)
    parts = []
    for r in rows:
        name = f"{r.holdout}.{r.method}"
        holdout = m.number(f"{name}.ensemble_holdout_mAP", _adv(boot, r.holdout, r.attack_id))
        best = m.number(f"{name}.best_single_mAP", np.min([_adv(boot, r.holdout, a) for a in r.single_attack_ids], axis=0))
        m.check(f"-{r.holdout} {r.method}: hold-out mAP below the best single-model transfer", best - holdout, strict=True)
        parts.append(f"-{r.holdout} {r.method}: {m.text(f'{name}.ensemble_holdout_mAP')} vs {m.text(f'{name}.best_single_mAP')}")
    return m.finding(f"Hold-out mAP after the ensemble attack vs best single-model transfer: {'; '.join(parts)}. Holds when lower in all.")


def finding5(res: Results, boot: Bootstrap) -> Finding:
    c = res.classification
    if c is None or c.classification_attack is None or c.metric_attack_id is None or c.classification_attack_id is None:
        why = c.classification_missing if c is not None and c.classification_missing else "classification experiment not selected"
        return _not_measured(5, f"No classification-attack measurement ({why}).")
    m = Measured(5, boot)
    clean = m.number("clean_mAP", _clean(boot, c.model))
    metric = m.number("metric_attack_mAP", _adv(boot, c.model, c.metric_attack_id))
    cls = m.number("classification_attack_mAP", _adv(boot, c.model, c.classification_attack_id))
    m.check(
        f"metric-attack drop ≥ {CLASSIFICATION_FACTOR:g}× classification-attack drop",
        (clean - metric) - CLASSIFICATION_FACTOR * (clean - cls),
        strict=False,
    )
    return m.finding(
        f"On {c.model}: clean mAP {m.text('clean_mAP')}, after metric attack {m.text('metric_attack_mAP')}, after classification "
        f"attack {m.text('classification_attack_mAP')}. Criterion: metric drop ≥ {CLASSIFICATION_FACTOR:g}× classification drop "
        "(paper: 77.52 → 0.367 vs 52.93)."
    )


def finding6(res: Results, boot: Bootstrap) -> Finding:
    t = res.targeted
    if t is None or hits_key(t.attack_id) not in boot:
        return _not_measured(6, "Targeted experiment not selected.")
    m = Measured(6, boot)
    after = m.number("top10_rate", boot.mean(hits_key(t.attack_id)))
    before = m.number("clean_top10_rate", boot.mean(hits_key(t.attack_id, clean=True)))
    m.check(f"≥ {TARGETED_TOP10:.0%} of the attacked images in their target's top-10", after - TARGETED_TOP10, strict=False)
    m.check("more of them in the top-10 than before the attack", after - before, strict=True)
    return m.finding(
        f"{m.text('top10_rate', 100, 1)}% of the {counted(t.num_images, 'targeted image')} reach the top-10 of "
        f"{agree(t.num_images, 'its', 'their')} target probe "
        f"({100 * t.top1_rate:.1f}% the top-1), vs {m.text('clean_top10_rate', 100, 1)}% before the attack (intervals: "
        f"bootstrap over the attacked images). Criterion: ≥ {TARGETED_TOP10:.0%} in the top-10, more than before."
    )


def compute_findings(res: Results, boot: Bootstrap) -> list[Finding]:
    """The six findings of the paper for ``res`` (its ``findings`` field is ignored)."""
    return [f(res, boot) for f in (finding1, finding2, finding3, finding4, finding5, finding6)]


def finding7(res: Results, boot: Bootstrap) -> Finding:
    f = res.fig5
    if f is None or XQDA not in f.clean or EUCLIDEAN not in f.clean:
        return _not_measured(7, "Needs Fig. 5 with both the Euclidean and the XQDA metric.")
    m = Measured(7, boot)
    e = m.number("euclidean_mAP", _clean(boot, f.model, EUCLIDEAN))
    x = m.number("xqda_mAP", _clean(boot, f.model, XQDA))
    m.check("XQDA's clean mAP below the Euclidean distance's", e - x, strict=True)
    return m.finding(
        f"On {f.model}, clean: Euclidean rank-1 {f.clean[EUCLIDEAN].rank1:.2f} / mAP {m.text('euclidean_mAP')}, XQDA rank-1 "
        f"{f.clean[XQDA].rank1:.2f} / mAP {m.text('xqda_mAP')}. Holds when XQDA's mAP is below Euclidean's."
    )


def finding8(res: Results, boot: Bootstrap) -> Finding:
    f = res.fig5
    metrics = {c.attack_metric for c in f.curves} if f else set()
    if f is None or not {EUCLIDEAN, XQDA} <= metrics:
        return _not_measured(8, "Needs Fig. 5 curves attacking and testing with both Euclidean and XQDA.")
    m = Measured(8, boot)
    curves = {(c.method, c.attack_metric, c.test_metric): {p.epsilon: p for p in c.points} for c in f.curves}
    other = {EUCLIDEAN: XQDA, XQDA: EUCLIDEAN}
    for (method, am, tm), points in curves.items():
        swapped = curves.get((method, am, other.get(am, am)))
        if am != tm or am not in other or swapped is None:
            continue
        for eps, point in points.items():
            if point.attack_id is None or eps not in swapped:
                continue
            same = m.number(f"{method}.{am}/{am}.eps{eps:g}", _adv(boot, f.model, point.attack_id, am))
            changed = m.number(f"{method}.{am}/{other[am]}.eps{eps:g}", _adv(boot, f.model, point.attack_id, other[am]))
            m.check(f"{method} ε={eps:g}, attacked with {am}: testing with {other[am]} gives a higher mAP", changed - same, strict=True)
    if not m.checks:
        return _not_measured(8, "No matching attack/test metric pairs in Fig. 5.")
    return m.finding(
        "Testing with a different metric than the attack's, per (method, attack metric, ε): holds when the mAP is higher in all."
    )


def finding9(res: Results, boot: Bootstrap) -> Finding:
    t = res.table5
    if t is None or t.status != "ok" or not t.cells:
        return _not_measured(9, f"Table 5 not run{': ' + t.reason if t is not None and t.reason else ''}.")
    m = Measured(9, boot)

    def gallery(model: str, attack_id: str | None) -> np.ndarray:
        return _clean(boot, model) if attack_id is None else _adv(boot, model, attack_id)

    for c in t.cells:
        normal, defended = gallery(c.base_model, c.attack_id), gallery(defended_name(c.base_model), c.attack_id)
        change = m.number(f"{c.base_model}.{c.gallery}.improvement", (defended - normal) / np.maximum(normal, 1e-12))
        if c.attack_id is None:
            m.check(
                f"{c.base_model} on the original gallery: clean mAP drops by ≤ {DEFENSE_CLEAN_DROP:.0%}",
                change + DEFENSE_CLEAN_DROP,
                strict=False,
            )
        else:
            m.check(f"{c.base_model} on {c.gallery}: the metric-preserving model's mAP is higher", change, strict=True)
    worst = min(t.cells, key=lambda c: c.improvement if c.attack_id is None else np.inf)
    return m.finding(
        f"Largest clean-mAP change {m.text(f'{worst.base_model}.{worst.gallery}.improvement', 100, 1)}% (allowed ≥ "
        f"{-100 * DEFENSE_CLEAN_DROP:.0f}%); relative improvements on the adversarial galleries in the checks. These are transfer "
        "attacks made against the normal models; see the adaptive rows for attacks on the defended models themselves."
    )


def compute_further_findings(res: Results, boot: Bootstrap) -> list[Finding]:
    """Checks beyond the six findings: XQDA (issue #5) and the defense (issue #6)."""
    return [f(res, boot) for f in (finding7, finding8, finding9)]
