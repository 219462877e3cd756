"""``report.html``: one self-contained page (figures embedded as base64 PNG data URIs).

The page announces its sections in a table of contents; every announced section exists
(``<section id=...>``) and every announced figure is an embedded ``<img>``. Sections of
experiments that were not run say so instead of disappearing, so a reader sees what was
left out (Table 5 reads "not run" until the defense has results).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ..io import atomic_write_text
from .experiments import EXPERIMENTS, Figure
from .schema import Results
from .tables import Table


@dataclass
class Section:
    id: str
    title: str
    table: Table | None = None
    image: str | None = None
    caption: str = ""
    note: str = ""
    not_run: bool = False
    text_columns: int = 1


def _embed(png: Path) -> str:
    return base64.b64encode(png.read_bytes()).decode("ascii")


def build_sections(res: Results, tables: dict[str, list[Table]], figures: dict[str, list[Figure]]) -> list[Section]:
    """The sections of the page: every experiment in paper order, with its tables and figures
    (``tables`` / ``figures``: experiment name → what it drew), or a note saying why it has none."""
    sections = [Section("summary", "Summary of findings")]
    for name in EXPERIMENTS:
        experiment = EXPERIMENTS.get(name)
        reason = experiment.not_run(res)
        drawn = tables.get(name, []), figures.get(name, [])
        if reason is None and not any(drawn):
            reason = "nothing to show in this run (no data)."
        if reason is not None:
            sections.append(Section(name, experiment.title, note=reason, not_run=True))
            continue
        sections += [Section(t.name, t.heading or t.title, table=t, text_columns=t.text_columns) for t in drawn[0]]
        sections += [Section(f.name, f.title, image=_embed(f.path), caption=f.caption) for f in drawn[1]]
    sections.append(Section("provenance", "How this run was made"))
    return sections


def render_report(res: Results, tables: dict[str, list[Table]], figures: dict[str, list[Figure]]) -> str:
    """The HTML text of the report."""
    env = Environment(loader=PackageLoader("metricattack.benchmark", "templates"), autoescape=select_autoescape(["html", "j2"]))
    counts = {s: sum(1 for f in res.findings if f.status == s) for s in ("holds", "does not hold", "inconclusive", "not measured")}
    verbs = {
        "holds": ("holds", "hold"),
        "does not hold": ("does not hold", "do not hold"),
        "inconclusive": ("is inconclusive", "are inconclusive"),
    }
    verbs["not measured"] = ("was not measured", "were not measured")
    tally = ", ".join(f"{n} {verbs[s][n != 1]}" for s, n in counts.items())
    summary_line = f"Of the paper's six findings, on this run: {tally}. Each verdict is computed from the numbers of this run with the stated criterion."
    e = res.evidence
    method_line = (
        ""
        if e is None
        else f"Numbers in brackets are {100 * e.confidence:g}% intervals from a bootstrap over queries: the queries are "
        f"resampled with replacement {e.resamples} times (seed {e.seed}) and every compared mAP is recomputed on the same "
        "resampled queries (the targeted attack's share: over the attacked images). A finding holds when every inequality "
        "of its criterion holds over its whole interval, does not hold when one is violated over its whole interval, and "
        "is inconclusive when an interval straddles the criterion."
    )
    prov = res.provenance
    minutes, seconds = divmod(int(prov.wall_seconds), 60)
    return env.get_template("report.html.j2").render(
        title=prov.config.get("name", "benchmark"),
        dataset=res.dataset,
        models=[m.name for m in res.models],
        epsilon=prov.config.get("attack", {}).get("eps"),
        ap=prov.ap_convention,
        version=prov.versions.get("metricattack", "?"),
        created=prov.created,
        wall=f"{minutes} min {seconds} s",
        sections=build_sections(res, tables, figures),
        findings=res.findings,
        further=res.further_findings,
        summary_line=summary_line,
        method_line=method_line,
        seeds=prov.seeds,
        versions=", ".join(f"{k} {v}" for k, v in sorted(prov.versions.items())),
    )


def write_report(res: Results, tables: dict[str, list[Table]], figures: dict[str, list[Figure]], path: Path) -> Path:
    """Write ``report.html`` atomically."""
    atomic_write_text(path, render_report(res, tables, figures))
    return path
