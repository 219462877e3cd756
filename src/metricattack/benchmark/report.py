"""``report.html``: one self-contained page (figures embedded as base64 PNG data URIs).

The page announces its sections in a table of contents; every announced section exists
(``<section id=...>``) and every announced figure is an embedded ``<img>`` shown at its own
pixel size (figures are drawn at the width the page shows them, :mod:`.figures`). It states
how the run was made: the attack's parameters (ε, α, μ, n, the attacked side, the metric), the
AP convention and the seeds. Sections of experiments that were not run say so instead of
disappearing, so a reader sees what was left out (Table 5 reads "not run" until the defense
has results).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..attacks.methods import METHODS, paper_steps
from ..attacks.threats import THREATS
from ..io import atomic_write_text
from ..wording import agree, counted
from .experiments import EXPERIMENTS, Figure
from .figures import DISPLAY_WIDTH_PX, png_size
from .schema import Finding, Results, Threads
from .tables import Table, method_label


@dataclass
class Image:
    """An embedded PNG and the pixel size it is shown at (its own: never scaled)."""

    data: str
    width: int
    height: int


@dataclass
class Section:
    id: str
    title: str
    table: Table | None = None
    image: Image | None = None
    caption: str = ""
    note: str = ""
    not_run: bool = False


def _embed(png: Path) -> Image:
    width, height = png_size(png)
    return Image(base64.b64encode(png.read_bytes()).decode("ascii"), width, height)


def build_sections(res: Results, tables: dict[str, list[Table]], figures: dict[str, list[Figure]]) -> list[Section]:
    """The sections of the page: what was run, every experiment in paper order with its tables
    and figures (``tables`` / ``figures``: experiment name → what it drew) or a note saying why
    it has none, and how the run was made."""
    sections = [Section("summary", "Summary of findings"), Section("setup", "What was run: data, models, attack")]
    for name in EXPERIMENTS:
        experiment = EXPERIMENTS.get(name)
        reason = experiment.not_run(res)
        drawn = tables.get(name, []), figures.get(name, [])
        if reason is None and not any(drawn):
            reason = "nothing to show in this run (no data)."
        if reason is not None:
            sections.append(Section(name, experiment.title, note=reason, not_run=True))
            continue
        sections += [Section(t.name, t.heading or t.title, table=t) for t in drawn[0]]
        sections += [Section(f.name, f.title, image=_embed(f.path), caption=f.caption) for f in drawn[1]]
    sections.append(Section("provenance", "How this run was made"))
    return sections


def summary_line(findings: list[Finding]) -> str:
    """How many of the paper's findings hold, do not, are inconclusive and were not measured, in one sentence."""
    n = {s: sum(1 for f in findings if f.status == s) for s in ("holds", "does not hold", "inconclusive", "not measured")}
    return (
        f"Of the paper's {len(findings)} findings, on this run: {n['holds']} {agree(n['holds'], 'holds', 'hold')}, "
        f"{n['does not hold']} {agree(n['does not hold'], 'does', 'do')} not hold, {n['inconclusive']} "
        f"{agree(n['inconclusive'], 'is', 'are')} inconclusive, {n['not measured']} {agree(n['not measured'], 'was', 'were')} "
        "not measured. Each verdict is computed from the numbers of this run with the stated criterion."
    )


METRIC_TEXT = {
    "euclidean": "Euclidean: squared Euclidean distance of the L2-normalised features (the paper's Eq. 3)",
    "cosine": "cosine distance of the features",
    "xqda": "XQDA: a Mahalanobis distance (the paper's Eq. 4) learned on the model's training features",
    "kissme": "KISSME: a Mahalanobis distance (the paper's Eq. 4) learned on the model's training features",
}
AP_TEXT = {
    "market": "market: the official Market-1501 evaluation's AP (trapezoidal), the one the paper's numbers are compared with "
    "(the paper names no AP code)",
    "noninterp": "noninterp: non-interpolated AP (torchreid / fast-reid), not the one the paper's numbers are compared with",
}


def _number(value: float) -> str:
    return f"{value:g}"


def attack_setup(res: Results) -> list[tuple[str, str]]:
    """(parameter, what this run used) for the attack and the evaluation, from the config and the
    attacks recorded in ``res`` (values the paper uses in parentheses)."""
    cfg = res.provenance.config.get("attack", {})
    attacks = res.attacks
    eps = cfg.get("eps")
    epsilons = sorted({a.epsilon for a in attacks} | ({eps} if eps is not None else set()))
    methods = list(dict.fromkeys([*cfg.get("methods", []), *(a.method for a in attacks)]))
    rows = []
    others = [e for e in epsilons if e != eps]
    rows.append(
        (
            "ε (L∞ bound)",
            f"{_number(eps)} in 0..255 pixel units (the paper: 5)" if eps is not None else "–",
        )
    )
    if others:
        rows[-1] = (rows[-1][0], rows[-1][1] + f"; Fig. 5 also uses ε = {', '.join(_number(e) for e in others)}")
    linf = [a.linf for a in attacks if a.linf is not None]
    if linf:
        rows.append(("measured L∞", f"largest |x_adv − x| over every saved adversarial image: {_number(max(linf))} (0..255 units)"))
    rows.append(("methods", "; ".join(METHODS.get(m).summary if m in METHODS else m for m in methods)))
    table = cfg.get("options") or {}
    alphas = sorted({a.options["alpha"] for a in attacks if "alpha" in a.options})
    if alphas or any(_has_option(m, "alpha") for m in methods):
        rows.append(("α (step size)", f"{', '.join(map(_number, alphas or [1.0]))} per iteration, at most ε (the paper: 1)"))
    mus = sorted({a.options["mu"] for a in attacks if "mu" in a.options})
    if mus or any(_has_option(m, "mu") for m in methods):
        rows.append(("μ (momentum decay)", f"{', '.join(map(_number, mus or [1.0]))} for MI-FGSM (the paper: 1)"))
    steps = {a.epsilon: a.options["steps"] for a in attacks if "steps" in a.options}
    given = sorted({o["steps"] for o in table.values() if o.get("steps") is not None})
    if not given:
        by_eps = ", ".join(f"{steps.get(e, paper_steps(e))} at ε = {_number(e)}" for e in epsilons)
        text = f"min(ε + 4, 1.25 ε) rounded down, the paper's rule (after Kurakin et al.): {by_eps}"
    else:
        text = (
            f"{', '.join(map(str, given))} (set in the config; the paper's rule min(ε + 4, 1.25 ε) gives {paper_steps(eps)} at "
            f"ε = {_number(eps)})"
        )
    for m in methods:
        if m in METHODS and not _has_option(m, "steps"):
            text += f"; {METHODS.get(m).summary}"
    rows.append(("n (iterations)", text))
    extra = [
        f"{method_label(a.method)}: " + ", ".join(f"{k} = {_option(v)}" for k, v in a.options.items() if k not in PAPER_OPTIONS)
        for a in attacks
        if any(k not in PAPER_OPTIONS for k in a.options)
    ]
    if extra:
        rows.append(("other method options", "; ".join(dict.fromkeys(extra))))
    threats = list(dict.fromkeys(a.threat_model for a in attacks))
    sides = list(dict.fromkeys(THREATS.get(t).split for t in threats if t in THREATS))
    side_text = " and ".join(f"the {side} images" for side in sides) or "–"
    if sides == ["gallery"]:
        side_text += " (an adversarial copy of the gallery, as in the paper; the queries stay clean)"
    elif "query" in sides:
        side_text += " (query-side setting: the probes are perturbed)"
    rows.append(("attacked side", side_text))
    rows.append(("threat models", "; ".join(THREATS.get(t).summary for t in threats if t in THREATS) or "–"))
    metric = cfg.get("metric", "euclidean")
    attack_metrics = list(dict.fromkeys([metric, *(a.metric for a in attacks)]))
    rows.append(
        (
            "metric",
            f"attacks and tests use {METRIC_TEXT.get(metric, metric)}"
            + (
                f"; Fig. 5 also attacks and tests with {', '.join(m for m in attack_metrics if m != metric)}"
                if len(attack_metrics) > 1
                else ""
            ),
        )
    )
    rows.append(
        (
            "evaluation",
            f"CMC rank-k and mAP, AP convention {AP_TEXT.get(res.provenance.ap_convention, res.provenance.ap_convention)}; "
            "gallery images of the query's identity from the query's camera and junk images are ignored, distractors count as wrong",
        )
    )
    return rows


PAPER_OPTIONS = ("alpha", "mu", "steps")
"""The method options the paper's attacks have (the report's α, μ and n rows); others get a row of their own."""


def _has_option(method: str, option: str) -> bool:
    return method in METHODS and option in METHODS.get(method).Options.model_fields


def _option(value: Any) -> str:
    return _number(value) if isinstance(value, float) and not isinstance(value, bool) else str(value)


def seeds_text(res: Results) -> str:
    """The seeds of the run in words, naming what each one seeds."""
    seeds = res.provenance.seeds
    parts = []
    if seeds.get("run") is not None:
        parts.append(f"run seed {seeds['run']} (the targeted attack's targets, the probes shown in Fig. 1 and Fig. 4, PGD's random start)")
    if seeds.get("dataset") is not None:
        parts.append(f"synthetic dataset seed {seeds['dataset']}")
    trained = {m.name: m.train_seed for m in res.models}
    for name, seed in (seeds.get("models") or {}).items():
        trained.setdefault(name, seed)
    if trained:
        parts.append(
            "training seeds: "
            + ", ".join(
                f"{name} {seed}" if seed is not None else f"{name} none (given as a checkpoint, not trained here)"
                for name, seed in trained.items()
            )
        )
    return "; ".join(parts) + "."


def threads_text(threads: Threads | None) -> str:
    """``torch 2 (interop 2); MKL_NUM_THREADS=2, OMP_NUM_THREADS=2, OPENBLAS_NUM_THREADS=unset``."""
    if threads is None:
        return "not recorded"
    env = ", ".join(f"{k}={v if v is not None else 'unset'}" for k, v in sorted(threads.env.items()))
    return f"torch {threads.torch} (interop {threads.torch_interop}); {env}"


def render_report(res: Results, tables: dict[str, list[Table]], figures: dict[str, list[Figure]]) -> str:
    """The HTML text of the report."""
    env = Environment(loader=PackageLoader("metricattack.benchmark", "templates"), autoescape=select_autoescape(["html", "j2"]))
    e = res.evidence
    method_line = (
        ""
        if e is None
        else f"Numbers in brackets are {100 * e.confidence:g}% intervals from a bootstrap over queries: the queries are "
        f"resampled with replacement {e.resamples} times (seed {e.seed}) and every compared mAP is recomputed on the same "
        "resampled queries (the targeted attack's share: over the attacked images). A finding holds when every inequality "
        "of its criterion holds over its whole interval, does not hold when one is violated over its whole interval, and "
        "is inconclusive when an interval straddles the criterion. The intervals cover the choice of queries, not "
        'training: each model was trained once (its seed is under "How this run was made"), and another training '
        "seed gives other models, whose verdicts can differ where a margin is small (benchmarks/RESULTS.md measures "
        "the demo's over three seeds)."
    )
    prov = res.provenance
    minutes, seconds = divmod(int(prov.wall_seconds), 60)
    counts = res.dataset.counts
    return env.get_template("report.html.j2").render(
        title=prov.config.get("name", "benchmark"),
        dataset=res.dataset,
        split_counts=", ".join(
            counted(counts.get(split, 0), noun, plural)
            for split, noun, plural in (
                ("query", "query", "queries"),
                ("gallery", "gallery image", None),
                ("train", "training image", None),
            )
        ),
        models=[(m.name, m.description) for m in res.models],
        ap=prov.ap_convention,
        version=prov.versions.get("metricattack", "?"),
        created=prov.created,
        wall=f"{minutes} min {seconds} s",
        display_width=DISPLAY_WIDTH_PX,
        sections=build_sections(res, tables, figures),
        findings=res.findings,
        further=res.further_findings,
        summary_line=summary_line(res.findings),
        method_line=method_line,
        setup=attack_setup(res),
        seeds=seeds_text(res),
        versions=", ".join(f"{k} {v}" for k, v in sorted(prov.versions.items())),
        threads=threads_text(prov.threads),
    )


def write_report(res: Results, tables: dict[str, list[Table]], figures: dict[str, list[Figure]], path: Path) -> Path:
    """Write ``report.html`` atomically."""
    atomic_write_text(path, render_report(res, tables, figures))
    return path
