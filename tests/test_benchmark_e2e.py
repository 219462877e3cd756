"""End to end: `metricattack benchmark --config configs/tiny.yaml` on tiny synthetic data.

One run of the whole pipeline (train → attack → evaluate → results/tables/figures/report),
then a re-run that must do no work, then an `--only` selection.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
import torch

from metricattack.benchmark.compare import results_differences
from metricattack.benchmark.evidence import Bootstrap, load_evidence
from metricattack.benchmark.findings import compute_findings
from metricattack.benchmark.schema import validate_results
from metricattack.cli import main
from metricattack.io import sha256_file
from metricattack.stages import read_stage_log
from test_benchmark_framework import check_report

REPO = Path(__file__).resolve().parents[1]
LOG = "stderr.log"  # the run's stderr, beside its folder
HEAVY = {
    "dataset",
    "model",
    "features",
    "learned_metric",
    "attack",
    "adv_features",
    "defended",
    "adaptive",
    "robust_transfer",
    "robust",
    "robustness",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny"
    with (out.parent / LOG).open("w", encoding="utf-8") as log, contextlib.redirect_stderr(log):  # not a terminal, as under nohup
        assert main(["benchmark", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(out)]) == 0
    return out


# the stage groups of the run and the kind of stage each item is (the defenses' groups share their stages with table5's)
GROUP_KINDS = {
    "base models": "model",
    "clean features": "features",
    "defended features": "features",
    "learned metrics": "learned_metric",
    "adversarial sets": "attack",
    "adversarial features": "adv_features",
    "robust evaluation": "robust",
    "robustness": "robustness",
}
GROUP_LINE = re.compile(
    r"metricattack: (?P<group>[a-z ]+) (?P<k>\d+)/(?P<n>\d+): \S+( on \S+| of \S+)?( \(\d+:\d+ so far, ~\d+:\d+ left\))?"
)
OTHER_LINES = re.compile(
    r"metricattack: (epoch \d+/\d+: loss .*|\S+: \d+ queries attacked in .*|warning: .*"
    r"|[^:]+: \d+/\d+ \w+ \(\d+ %\)(, \d+:\d+ so far, ~\d+:\d+ left| in \d+:\d+).*)"  # a long loop's bounded lines
)


@pytest.mark.slow
def test_log_without_a_terminal_has_a_line_per_stage_and_no_bars(tiny_run: Path) -> None:
    """stderr redirected to a file (nohup, CI): no progress bar, one line as each stage of a group starts."""
    log = (tiny_run.parent / LOG).read_text(encoding="utf-8")
    assert "\r" not in log and "|" not in log
    groups: list[list[re.Match[str]]] = []
    for line in log.splitlines():
        match = GROUP_LINE.fullmatch(line)
        if match is None:
            assert OTHER_LINES.fullmatch(line), line
        elif match["k"] == "1":
            groups.append([match])
        else:
            groups[-1].append(match)
    for group in groups:  # each stage of a group once, in order
        assert [(int(m["k"]), int(m["n"]), m["group"]) for m in group] == [
            (k, len(group), group[0]["group"]) for k in range(1, len(group) + 1)
        ]
    lines = {kind: sum(len(g) for g in groups if GROUP_KINDS.get(g[0]["group"]) == kind) for kind in set(GROUP_KINDS.values())}
    stages = {(e["kind"], e["label"]) for e in read_stage_log(tiny_run)}
    assert lines == {kind: sum(k == kind for k, _ in stages) for kind in lines}
    assert {g[0]["group"] for g in groups} == {*GROUP_KINDS, "defenses", "defended models"}


@pytest.mark.slow
def test_results_validate_and_cover_every_experiment(tiny_run: Path) -> None:
    data = json.loads((tiny_run / "results.json").read_text())
    res = validate_results(data)
    assert res.provenance.ap_convention in ("market", "noninterp")
    assert res.provenance.seeds["run"] == 0 and res.provenance.versions["torch"]
    for section in (
        "table1",
        "table2",
        "table4",
        "table5",
        "defenses",
        "beyond",
        "fig1",
        "fig3",
        "fig4",
        "fig5",
        "classification",
        "targeted",
    ):
        assert getattr(res, section) is not None, section
    assert [f.id for f in res.findings] == [1, 2, 3, 4, 5, 6]
    # every white-box cell is the attacked model itself, and the matrix is complete
    names = [r.model for r in res.table1]
    attacked = [r.model for r in res.table1 if not r.test_only]
    assert len(res.table2.rows) == len(attacked) * len(res.provenance.config["attack"]["methods"])
    assert all(c.white_box == (c.tested == r.attacked) for r in res.table2.rows for c in r.cells)
    # the test-only model is trained, in Table 1, tested in every Table 2 / Table 4 column, never attacked
    assert res.table2.test_only == ["T1"] and "T1" in names and "T1" not in attacked
    assert all([c.tested for c in r.cells] == names for r in res.table2.rows)
    assert all(a.sources != ["T1"] and "T1" not in a.sources for a in res.attacks)
    assert all(set(r.test_only_mAP) == {"T1"} and "T1" not in r.ensemble and r.holdout != "T1" for r in res.table4.rows)
    assert res.fig3.test_only == ["T1"] and {p.tested for p in res.fig3.points} == set(names)
    # beyond the paper: every method x attacked model x eps, tested on every model, each mAP with its interval
    beyond = res.beyond
    assert [(r.attacked, r.method, r.epsilon) for r in beyond.rows] == [(m, "difgsm", 2.0) for m in attacked]
    assert all(
        [c.tested for c in r.cells] == names and [c.white_box for c in r.cells] == [t == r.attacked for t in names] for r in beyond.rows
    )
    assert all(c.interval[0] <= c.interval[1] for r in beyond.rows for c in [*r.cells, *beyond.clean])
    assert all(r.options["diversity_prob"] == 0.5 for r in beyond.rows) and [c.mAP for c in beyond.clean] == [
        r.clean.mAP for r in res.table1
    ]
    # the saved adversarial images respect the ε bound
    assert all(a.linf is None or a.linf <= a.epsilon + 1e-6 for a in res.attacks)
    # the chance level of the test split is reported, listed in Table 1 and quoted by finding 1
    assert res.dataset.chance is not None and 0 < res.dataset.chance.mAP < 100
    assert "| chance | a random ranking (expected) |" in (tiny_run / "tables" / "table1.md").read_text()
    assert f"mAP {res.dataset.chance.mAP:.2f}" in res.findings[0].summary
    # every measured finding reports its numbers with a bootstrap interval over the run's saved per-query APs
    assert res.evidence is not None and sha256_file(tiny_run / res.evidence.file) == res.evidence.sha256
    for finding in [*res.findings, *res.further_findings]:
        if finding.status != "not measured":
            assert finding.checks and set(finding.intervals) == set(finding.numbers), finding.id
            assert all(low <= high for low, high in finding.intervals.values())
    recomputed = compute_findings(res, Bootstrap(load_evidence(tiny_run / res.evidence.file), res.evidence.resamples, res.evidence.seed))
    assert recomputed == res.findings


@pytest.mark.slow
def test_defense_leaderboard_is_adaptive_and_never_above_the_transfer_attack(tiny_run: Path) -> None:
    res = validate_results(json.loads((tiny_run / "results.json").read_text()))
    board = res.defenses
    assert board is not None and board.status == "ok" and board.base_model == "B1" and board.epsilons == [2.0]
    assert {e.model for e in board.entries} == {"B1", "B1#M", "B1#pgd-at"}
    evidence = load_evidence(tiny_run / res.evidence.file)
    for e in board.entries:
        assert e.clean_interval[0] <= e.clean_mAP <= e.clean_interval[1]
        assert (e.method is None) == (e.model == "B1") and e.paper == (e.model == "B1#M")
        (point,) = e.points
        query = [v for k, v in point.attacks.items() if k.split("/")[-2] == "query"]
        assert point.robust_mAP <= min(query) + 1e-9 and point.robust_interval[0] <= point.robust_mAP <= point.robust_interval[1]
        assert ("transfer/query/ifgsm" in point.attacks) == (e.method is not None)  # defended models: also B1's attack, transferred
        assert "query/protocol-smoke" in point.attacks and "never-weaker" in point.flags  # the robustness protocol and its checks
        assert point.beats_paper is None if e.model in ("B1", "B1#M") else isinstance(point.beats_paper, bool)
        assert f"ap|{e.model}|robust-query-eps2|euclidean" in evidence
    pgd = next(e for e in board.entries if e.method == "pgd-at")
    assert pgd.initialisation == "finetune" and pgd.cost_multiple is not None and pgd.cost_per_image is not None
    assert "Defense leaderboard" in (tiny_run / "tables" / "defenses.md").read_text()


@pytest.mark.slow
def test_robustness_leaderboard(tiny_run: Path) -> None:
    """configs/tiny.yaml evaluates B1 with the smoke protocol (the plumbing: its budgets are too small for a number)."""
    res = validate_results(json.loads((tiny_run / "results.json").read_text()))
    board = res.robustness
    assert board is not None and board.version == "smoke" and [r.model for r in board.rows] == ["B1"]
    (row,) = board.rows
    assert row.robust_mAP.low <= row.robust_mAP.value <= row.robust_mAP.high and row.robust_mAP.value <= row.clean_mAP
    assert row.forwards_per_query > row.backwards_per_query > 0
    assert row.gallery_mAP is not None and row.gallery_mAP.value <= row.clean_mAP  # the gallery-side figure, reported apart
    detail = json.loads(Path(row.file).read_text())
    assert detail["gallery"]["mAP"]["value"] == row.gallery_mAP.value
    assert detail["protocol"]["version"] == "smoke" and detail["robust"][0]["mAP"]["value"] == row.robust_mAP.value
    assert "Robustness leaderboard" in (tiny_run / "tables" / "robustness.md").read_text()


@pytest.mark.slow
def test_outputs_tables_figures_report(tiny_run: Path) -> None:
    for name in ("table1", "table2", "table4", "classification", "targeted", "table5", "defenses", "beyond_eps2"):
        assert (tiny_run / "tables" / f"{name}.md").is_file() and (tiny_run / "tables" / f"{name}.csv").is_file()
    figures = {p.stem for p in (tiny_run / "figures").glob("*.png")}
    assert figures == {"fig1", "fig3", "fig3_base", "fig4", "fig5"}
    html = (tiny_run / "report.html").read_text(encoding="utf-8")
    check_report(html, figures)
    assert "The intervals cover the choice of queries, not training" in html  # and say what they do not cover


@pytest.mark.slow
def test_rerun_does_no_work_and_only_selects(tiny_run: Path) -> None:
    before = len(read_stage_log(tiny_run))
    first = json.loads((tiny_run / "results.json").read_text())
    assert main(["benchmark", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(tiny_run)]) == 0
    rerun = read_stage_log(tiny_run)[before:]
    assert rerun and {e["kind"] for e in rerun} <= HEAVY
    assert [e for e in rerun if e["status"] != "cached"] == []
    # the re-run gives the same results.json, timings aside (and records the thread counts it ran with)
    second = json.loads((tiny_run / "results.json").read_text())
    assert results_differences(first, second) == [] and first["provenance"]["stage_seconds"] != second["provenance"]["stage_seconds"]
    assert second["provenance"]["threads"]["torch"] == torch.get_num_threads()
    assert main(["benchmark", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(tiny_run), "--only", "table1"]) == 0
    res = validate_results(json.loads((tiny_run / "results.json").read_text()))
    assert res.table1 is not None and res.table2 is None
    assert {f.status for f in res.findings} == {"not measured"}
