"""``report.html``: one self-contained page (figures embedded as base64 PNG data URIs).

The page announces its sections in a table of contents; every announced section exists
(``<section id=...>``) and every announced figure is an embedded ``<img>``. Sections of
experiments that were not run say so instead of disappearing, so a reader sees what was
left out (Table 5 reads "not run" until the defence has results).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ..io import atomic_write_text
from .schema import Results
from .tables import Table, adaptive_table, classification_table, table1, table2, table4, table5, targeted_table

FIGURE_CAPTIONS = {
    "fig1": "Clean gallery image, the perturbation rescaled to [0, 1] for display, and the adversarial image, with the "
    "cosine similarity to the probe before and after the attack.",
    "fig3": "Ratio of adversarial to clean mAP for every tested model and attack setting (a large ratio = robust).",
    "fig4": "Ranking lists of chosen probes on the clean gallery, after the non-targeted and after the targeted attack; "
    "rank positions above each image; blue = true match, red = wrong match.",
    "fig5": "mAP against the perturbation bound ε; the legend reads attack metric / test metric; the dashed line is the chance level (a random ranking).",
}


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


def build_sections(res: Results, figures: dict[str, Path]) -> list[Section]:
    """The sections of the page, in paper order (tables from ``res``, figures from ``figures``)."""
    sections = [Section("summary", "Summary of findings")]
    table_specs = [
        ("table1", "Table 1 — clean accuracy of the base models", table1, 2),
        ("table2", f"{res.table2.title if res.table2 else 'Table 2'} — white-box and black-box attacks", table2, 2),
        ("table4", "Table 4 — multi-model (ensemble) attacks", table4, 3),
        ("classification", "Metric attack vs classification attack", classification_table, 1),
        ("targeted", "Targeted attack success", targeted_table, 1),
        ("table5", "Table 5 — metric-preserving defence", table5, 1),
        ("table5_adaptive", "Table 5 (adaptive) — white-box attacks on the defended models", adaptive_table, 3),
    ]
    for sid, title, fn, text_cols in table_specs:
        table = fn(res)
        if table is None and sid == "table5_adaptive":
            continue
        if table is None:
            sections.append(Section(sid, title, note="not run in this run (not selected).", not_run=True))
        elif sid == "table5" and res.table5 is not None and res.table5.status != "ok":
            sections.append(Section(sid, title, note=f"not run: {res.table5.reason}", not_run=True))
        else:
            sections.append(Section(sid, title, table=table, text_columns=text_cols))
    fig_titles = {
        "fig1": "Fig. 1 — what the attack does to an image",
        "fig3": "Fig. 3 — mAP ratio",
        "fig4": "Fig. 4 — ranking lists",
        "fig5": "Fig. 5 — mAP against ε",
    }
    for fid, title in fig_titles.items():
        if fid in figures:
            sections.append(Section(fid, title, image=_embed(figures[fid]), caption=FIGURE_CAPTIONS[fid]))
        else:
            sections.append(Section(fid, title, note="not run in this run (not selected or no data).", not_run=True))
    sections.append(Section("provenance", "How this run was made"))
    return sections


def render_report(res: Results, figures: dict[str, Path]) -> str:
    """The HTML text of the report."""
    env = Environment(loader=PackageLoader("metricattack.benchmark", "templates"), autoescape=select_autoescape(["html", "j2"]))
    counts = {s: sum(1 for f in res.findings if f.status == s) for s in ("holds", "does not hold", "not measured")}
    summary_line = (
        f"Of the paper's six findings, {counts['holds']} hold on this run, {counts['does not hold']} do not, "
        f"and {counts['not measured']} were not measured. Each verdict below is computed from the numbers "
        "in this run with the stated criterion."
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
        sections=build_sections(res, figures),
        findings=res.findings,
        further=res.further_findings,
        summary_line=summary_line,
        seeds=prov.seeds,
        versions=", ".join(f"{k} {v}" for k, v in sorted(prov.versions.items())),
    )


def write_report(res: Results, figures: dict[str, Path], path: Path) -> Path:
    """Write ``report.html`` atomically."""
    atomic_write_text(path, render_report(res, figures))
    return path
