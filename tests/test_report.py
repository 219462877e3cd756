"""The benchmark's human-facing output on hand-made results: figures readable at the report's
width, table marks and alignment, the paper's numbers beside ours (only where they apply),
the attack's parameters, seeds and grammar of generated sentences."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest

from metricattack.benchmark import paper_numbers as paper
from metricattack.benchmark import schema
from metricattack.benchmark.experiments import EXPERIMENTS
from metricattack.benchmark.experiments import fig3 as fig3_module
from metricattack.benchmark.figures import DISPLAY_WIDTH_PX, DPI, UnreadableFigure, check_readable, figure, png_size
from metricattack.benchmark.report import attack_setup, render_report, seeds_text, summary_line
from metricattack.benchmark.runner import write_outputs
from metricattack.wording import agree, counted
from test_benchmark_framework import make_results

MODELS = ["B1", "B2", "B3", "B4", "HACNN", "Mancs"]
METHODS = ["fgsm", "ifgsm", "mifgsm"]


def _rank(m: float) -> dict[str, Any]:
    return {"rank1": min(100.0, m + 10), "rank5": min(100.0, m + 15), "rank10": min(100.0, m + 20), "mAP": m, "num_queries": 10}


def paper_like_results(dataset: str = "market1501", eps: float = 5, ap: str = "market") -> schema.Results:
    """Six models as in the paper (HACNN, Mancs test-only); our mAP = half the paper's Table 2 value,
    so ours and the paper's differ in every cell; HACNN's ratio on (B4, I-FGSM) is 1.23."""
    clean = {m: paper.table1(paper.MARKET)[m]["mAP"] / 2 for m in MODELS}
    table2 = paper.table2(paper.MARKET)
    rows = [
        {
            "attacked": a,
            "method": m,
            "attack_id": f"nontargeted-{m}-eps{eps:g}-euclidean-{a}",
            "cells": [
                {"tested": t, "ranking": _rank(table2[(a, m)][t] / 2), "white_box": t == a, "worst_in_column": False} for t in MODELS
            ],
        }
        for a in MODELS[:4]
        for m in METHODS
    ]
    points = [
        {
            "tested": c["tested"],
            "attacked": r["attacked"],
            "method": r["method"],
            "white_box": c["white_box"],
            "ratio": c["ranking"]["mAP"] / clean[c["tested"]],
        }
        for r in rows
        for c in r["cells"]
    ]
    next(p for p in points if (p["tested"], p["attacked"], p["method"]) == ("HACNN", "B4", "ifgsm"))["ratio"] = 1.23
    attacks = [
        {
            "id": r["attack_id"],
            "sources": [r["attacked"]],
            "threat_model": "gallery",
            "mode": "nontargeted",
            "method": r["method"],
            "epsilon": eps,
            "options": {} if r["method"] == "fgsm" else {"alpha": 1.0, "steps": 6, **({"mu": 1.0} if r["method"] == "mifgsm" else {})},
            "metric": "euclidean",
            "seed": 0,
            "linf": eps,
            "dataset_dir": "/x",
        }
        for r in rows
    ]
    data = {
        "provenance": {
            "config": {
                "name": "paper-like",
                "attack": {"eps": eps, "methods": METHODS, "options": {"mifgsm": {"alpha": 1.0, "mu": 1.0}}, "metric": "euclidean"},
            },
            "config_path": "x.yaml",
            "seeds": {"run": 0, "dataset": None, "models": {m: 0 for m in MODELS}},
            "versions": {"metricattack": "0"},
            "ap_convention": ap,
            "created": "now",
            "experiments": ["table1", "table2", "table4", "table5", "fig3"],
            "wall_seconds": 1.0,
        },
        "dataset": {"name": dataset, "root": "/x", "fingerprint": "f", "counts": {"query": 1, "gallery": 20, "train": 40}},
        "models": [],
        "attacks": attacks,
        "table1": [
            {"model": m, "description": "d", "metric": "euclidean", "clean": _rank(clean[m]), "test_only": m in MODELS[4:]} for m in MODELS
        ],
        "table2": {"title": "Table 2", "epsilon": eps, "clean_mAP": clean, "rows": rows, "test_only": MODELS[4:]},
        "fig3": {"points": points, "test_only": MODELS[4:]},
        "table4": {
            "epsilon": eps,
            "rows": [  # -B1: the paper's ensemble (B2+B3+B4); -B2: a two-model ensemble the paper does not have
                {
                    "holdout": "B1",
                    "ensemble": ["B2", "B3", "B4"],
                    "method": "ifgsm",
                    "attack_id": "e1",
                    "ensemble_mAP": 1.5,
                    "holdout_mAP": 7.5,
                    "test_only_mAP": {"HACNN": 17.5, "Mancs": 13.5},
                },
                {
                    "holdout": "B2",
                    "ensemble": ["B1", "B3"],
                    "method": "ifgsm",
                    "attack_id": "e2",
                    "ensemble_mAP": 2.5,
                    "holdout_mAP": 8.5,
                    "test_only_mAP": {"HACNN": 18.5, "Mancs": 14.5},
                },
            ],
        },
        "table5": {
            "status": "ok",
            "cells": [
                {"base_model": "B1", "gallery": "original", "normal_mAP": 38.76, "defended_mAP": 37.0, "improvement": -0.045},
                {
                    "base_model": "B1",
                    "gallery": "adv(B3)",
                    "attack_id": "a3",
                    "normal_mAP": 12.36,
                    "defended_mAP": 35.0,
                    "improvement": 1.83,
                },
            ],
        },
        "findings": [],
    }
    return schema.validate_results(data)


class _Tables(HTMLParser):
    """Each ``<table data-table=NAME>`` as rows of (tag, class, text) cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str, str]]]] = {}
        self._table: list[list[tuple[str, str, str]]] | None = None
        self._cell: list[str] | None = None
        self._tag, self._class = "", ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("data-table") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell, self._tag, self._class = [], tag, a.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self._table[-1].append((self._tag, self._class, " ".join("".join(self._cell).split())))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data + " ")


def render(res: schema.Results) -> tuple[str, dict[str, list[list[tuple[str, str, str]]]], dict[str, str]]:
    """The report's HTML without figures (drawing them is what costs time), its tables, and their Markdown."""
    tables = {e: EXPERIMENTS.get(e).tables(res) for e in EXPERIMENTS}
    html = render_report(res, tables, {})
    parser = _Tables()
    parser.feed(html)
    return html, parser.tables, {t.name: t.markdown() for ts in tables.values() for t in ts}


# ----------------------------------------------------------------- figures
def test_every_figure_is_shown_at_the_size_it_was_drawn(tmp_path: Path) -> None:
    html = write_outputs(make_results(tmp_path, whitebox=0.5, blackbox=30.0), tmp_path)["report"].read_text(encoding="utf-8")
    images = re.findall(r'<img class="figure" data-figure="(\w+)"[^>]* width="(\d+)" height="(\d+)"', html)
    assert {name for name, *_ in images} == {"fig1", "fig3_base", "fig4", "fig5"}
    for name, width, height in images:
        size = png_size(tmp_path / "figures" / f"{name}.png")
        assert size == (int(width), int(height)) and size[0] <= DISPLAY_WIDTH_PX, name
    assert f"max-width: {DISPLAY_WIDTH_PX}px" in html  # the text column the figures are drawn for


def test_fig3_of_six_models_fits_the_page_with_limits_from_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: dict[str, tuple[float, float]] = {}
    save = fig3_module.save

    def spy(fig: plt.Figure, path: Path) -> Path:
        drawn[path.stem] = fig.axes[0].get_ylim()
        return save(fig, path)  # check_readable: width, fonts, legends off the axes, nothing cut off

    monkeypatch.setattr(fig3_module, "save", spy)
    figures = EXPERIMENTS.get("fig3").figures(paper_like_results(), tmp_path)
    assert [f.name for f in figures] == ["fig3", "fig3_base"]
    for f in figures:
        assert png_size(f.path)[0] == DISPLAY_WIDTH_PX
    assert drawn["fig3"][0] == 0 and drawn["fig3"][1] > 1.23  # the 1.23 bar is not cut


def test_unreadable_figures_are_refused() -> None:
    wide, _ = figure(DISPLAY_WIDTH_PX / DPI + 1, 3)
    with pytest.raises(UnreadableFigure, match="px wide"):
        check_readable(wide)
    tiny_text, axes = figure(6, 3)
    axes[0][0].set_title("unreadable", fontsize=6)
    with pytest.raises(UnreadableFigure, match="below 8 pt"):
        check_readable(tiny_text)
    covered, axes = figure(6, 3)
    axes[0][0].bar([0, 1, 2], [1, 2, 3], label="bars")
    axes[0][0].legend(loc="center")
    with pytest.raises(UnreadableFigure, match="covers an axes"):
        check_readable(covered)
    cut, axes = figure(3, 3)
    axes[0][0].plot([0, 1])
    cut.suptitle("a title far too long for a figure three inches wide, so its ends are cut off")
    with pytest.raises(UnreadableFigure, match="cut off"):
        check_readable(cut)
    ok, axes = figure(6, 3)
    axes[0][0].bar([0, 1], [1, 2], label="bars")
    ok.legend(loc="outside lower center")
    check_readable(ok)
    plt.close("all")


# ----------------------------------------------------------------- tables
def test_table2_marks_white_box_cells_and_aligns_headers_like_cells() -> None:
    html, tables, _ = render(paper_like_results())
    header, *rows = tables["table2"]
    assert [cls.split() for _, cls, _ in header[:3]] == [["text", "word"], ["text", "word"], []]  # text left, numbers right (CSS)
    assert all("text" in cell[1].split() for row in rows for cell in row[:2])
    assert all(cell[1].split()[-1] == "num" for row in rows for cell in row[2:])
    # one-word cells never break at their hyphen (MI-FGSM), and a table wider than the column scrolls
    assert all("word" in cell[1].split() for row in rows for cell in row[:2])
    assert html.count('<div class="scroll"><table data-table=') == html.count("<table data-table=") > 1
    white = [cell for row in rows for cell in row if "white-box" in cell[1]]
    assert len(white) == 12 and all("†" in text for _, _, text in white)  # the caption's † is rendered
    assert sum("†" in text for row in rows for _, _, text in row) == 12


def test_table1_says_test_only_once() -> None:
    res = paper_like_results()
    res.table1[4].description = "HACNN (test only, as in the paper)"
    _, tables, _ = render(res)
    descriptions = {row[0][2]: row[1][2] for row in tables["table1"][1:]}
    assert descriptions["HACNN"] == "HACNN (test only, as in the paper)" and descriptions["Mancs"] == "d (test only)"
    assert descriptions["B1"] == "d"


def test_rank1_table_beside_table2() -> None:
    html, tables, markdown = render(paper_like_results())
    header, *rows = tables["table2_rank1"]
    assert [text for _, _, text in header[:3]] == ["Model", "Attack", "B1 (48.76)"]  # clean rank-1 from Table 1
    b1_ifgsm = next(r for r in rows if r[0][2] == "B1" and r[1][2] == "I-FGSM")
    assert b1_ifgsm[2][2] == "10.18†"  # rank-1 of the hand-made ranking (mAP 0.1835 + 10)
    assert "supplementary material" in html
    assert "| B1 | I-FGSM | **10.18†** |" in markdown["table2_rank1"]  # the worst of its column


@pytest.mark.parametrize(
    ("dataset", "eps", "ap", "cell", "note", "reference"),
    [
        ("market1501", 5, "market", "paper 0.367", "Table 2 on Market-1501, measured in the same setting as this run", False),
        ("dukemtmc", 5, "market", "paper 0.178", "Table 3 on DukeMTMC-reID, measured in the same setting as this run", False),
        (
            "synthetic",
            5,
            "market",
            "paper 0.367",
            "a reference for scale only, not the same measurement as ours: this run is on synthetic data",
            True,
        ),
        ("market1501", 8, "market", "paper 0.367", "this run attacks with ε = 8 (the paper: 5)", True),
        ("market1501", 5, "noninterp", "paper 0.367", "this run&#39;s AP convention is &#39;noninterp&#39;", True),
        ("msmt17", 5, "market", None, None, False),
    ],
)
def test_paper_numbers_are_shown_only_where_they_apply(
    dataset: str, eps: float, ap: str, cell: str | None, note: str | None, reference: bool
) -> None:
    html, tables, markdown = render(paper_like_results(dataset, eps, ap))
    header, *rows = tables["table2"]
    b1_ifgsm = next(r for r in rows if r[0][2] == "B1" and r[1][2] == "I-FGSM")
    ours = f"{paper.table2(paper.MARKET)[('B1', 'ifgsm')]['B1'] / 2:.3f}"
    if cell is None:
        assert b1_ifgsm[2][2] == f"{ours}†" and "paper" not in html.split('<section id="table1"')[1].split("</section>")[0]
        return
    assert b1_ifgsm[2][2] == f"{ours}† {cell}"
    assert header[2][2].startswith("B1 (38.76) paper ")  # the paper's clean mAP in the header
    assert note in html
    assert ("paper-note reference" in html) == reference  # a highlighted warning when not the same measurement
    assert f"{ours}† ({cell})" in markdown["table2"]


def _last_digit(printed: str) -> float:
    """One unit of the last digit the paper printed ("+180%" → 1, "-1.07%" → 0.01, "+2.0e4%" → 1000);
    the paper truncates its relative improvements (+180% for 180.8%)."""
    mantissa, _, exponent = printed.strip("+-%").partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def test_paper_numbers_of_tables_4_and_5_only_for_the_paper_s_galleries() -> None:
    _, tables, _ = render(paper_like_results())
    header, minus_b1, minus_b2 = tables["table4"]
    assert [text for _, _, text in header][3:] == ["Ensemble mAP", "Hold-out mAP", "Best single-model transfer", "HACNN mAP", "Mancs mAP"]
    assert [text for _, _, text in minus_b1][3:] == [
        "1.500† paper 3.839",
        "7.500 paper 14.55",
        "–",
        "17.50 paper 35.62",
        "13.50 paper 26.35",
    ]
    assert "paper" not in " ".join(text for _, _, text in minus_b2)  # B1+B3 is not the paper's ensemble
    header, original, adv_b3 = tables["table5"]
    assert [text for _, _, text in original] == ["original", "38.76 paper 77.52", "37.00 paper 76.69", "-4.5% paper -1.07%"]
    assert [text for _, _, text in adv_b3] == ["adv(B3)", "12.36 paper 24.72", "35.00 paper 70.46", "+183% paper +185%"]


def test_table4_bolds_the_worst_attack_per_hold_out_only_when_it_has_several() -> None:
    res = paper_like_results()
    (one_method,) = EXPERIMENTS.get("table4").tables(res)
    assert one_method.bold == set() and "in bold" not in one_method.caption  # one row per hold-out model: nothing to rank
    second = res.table4.rows[0].model_copy(update={"method": "mifgsm", "attack_id": "e3", "ensemble_mAP": 0.5, "holdout_mAP": 9.5})
    res.table4.rows.insert(1, second)
    (two_methods,) = EXPERIMENTS.get("table4").tables(res)
    assert "the worst attack per hold-out model in bold" in two_methods.caption
    # -B1 has I-FGSM (row 0) and MI-FGSM (row 1): MI-FGSM's ensemble mAP is lower, I-FGSM's hold-out mAP; -B2 has one row
    assert {(0, 4), (1, 3)} <= two_methods.bold and not any(row == 2 for row, _ in two_methods.bold)


def test_paper_numbers_are_complete_and_consistent() -> None:
    for dataset in (paper.MARKET, paper.DUKE):
        assert set(paper.table1(dataset)) == set(paper.MODELS)
        t2 = paper.table2(dataset)  # Table 2 / Table 3: 12 rows x 6 columns
        assert sorted(t2) == sorted((a, m) for a in paper.BASE_MODELS for m in paper.PAPER_METHODS)
        assert all(list(row) == list(paper.MODELS) for row in t2.values())
        assert paper.table2_clean(dataset) == {m: v["mAP"] for m, v in paper.table1(dataset).items()}  # header = Table 1
        t4 = paper.table4(dataset)
        assert sorted(t4) == sorted(t2) and all(tuple(row) == paper.TABLE4_COLUMNS for row in t4.values())
    market = paper.table2(paper.MARKET)
    for (gallery, base), (normal, defended, improvement) in paper.table5().items():
        # Table 5's #N repeats Table 1 (original) and Table 2's I-FGSM rows; #I = (#M - #N) / #N as printed
        expected = paper.table1(paper.MARKET)[base]["mAP"] if gallery == "original" else market[(gallery[4:-1], "ifgsm")][base]
        assert normal == expected, (gallery, base)
        assert abs(float(improvement.rstrip("%")) - 100 * (defended - normal) / normal) < _last_digit(improvement), (gallery, base)
    assert len(paper.table5()) == 5 * 4
    assert paper.CLASSIFICATION["clean_mAP"] == paper.table1(paper.MARKET)["B1"]["mAP"]
    assert paper.CLASSIFICATION["metric_attack_mAP"] == market[("B1", "ifgsm")]["B1"]


# ----------------------------------------------------------------- words
def test_paper_values_name_a_method_option_that_differs_from_the_paper() -> None:
    attack = {"eps": 5, "metric": "euclidean", "options": {"mifgsm": {"mu": 0.5}, "ifgsm": {"alpha": 1}}}
    values = paper.paper_values("market1501", "market", attack)
    assert values is not None and values.differences == ("this run attacks with μ = 0.5 for mifgsm (the paper: 1)",)


def test_the_page_states_the_attack_parameters_and_seeds() -> None:
    res = paper_like_results()
    setup = dict(attack_setup(res))
    assert setup["ε (L∞ bound)"].startswith("5 in 0..255 pixel units")
    assert setup["α (step size)"].startswith("1 per iteration")
    assert setup["μ (momentum decay)"].startswith("1 for MI-FGSM")
    assert "min(ε + 4, 1.25 ε)" in setup["n (iterations)"] and "6 at ε = 5" in setup["n (iterations)"]
    assert "FGSM (Eq. 5): one step of size ε" in setup["n (iterations)"] and "other method options" not in setup
    assert setup["threat models"].startswith("non-targeted: push gallery images away")
    assert setup["attacked side"].startswith("the gallery images")
    assert setup["metric"].startswith("attacks and tests use Euclidean")
    assert "official Market-1501" in setup["evaluation"]
    seeds = seeds_text(
        res.model_copy(
            update={"provenance": res.provenance.model_copy(update={"seeds": {"run": 3, "dataset": 0, "models": {"B1": 0, "X": None}}})}
        )
    )
    assert seeds.startswith("run seed 3 (") and "synthetic dataset seed 0" in seeds
    assert "B1 0" in seeds and "X none (given as a checkpoint" in seeds and "None" not in seeds and "{" not in seeds
    html, _, _ = render(res)
    assert "n (iterations)" in html and "run seed 0" in html and "{&#39;run&#39;" not in html
    assert "1 query," in html  # "1 query", not "1 queries"


def _finding(status: str) -> schema.Finding:
    return schema.Finding(id=1, title="t", status=status, summary="s")  # type: ignore[arg-type]


def test_generated_sentences_agree_with_their_counts() -> None:
    assert counted(1, "image") == "1 image" and counted(2, "query", "queries") == "2 queries" and counted(0, "cell") == "0 cells"
    assert agree(1, "holds", "hold") == "holds" and agree(3, "holds", "hold") == "hold"
    one_each = summary_line([_finding(s) for s in ("holds", "does not hold", "inconclusive", "not measured")])
    assert "4 findings, on this run: 1 holds, 1 does not hold, 1 is inconclusive, 1 was not measured." in one_each
    two_each = summary_line([_finding(s) for s in ("holds", "holds", "does not hold", "does not hold", "not measured", "not measured")])
    assert "6 findings, on this run: 2 hold, 2 do not hold, 0 are inconclusive, 2 were not measured." in two_each
