"""Benchmark framework without models: config, schema doc, tables, findings, report."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metricattack.benchmark import findings, schema
from metricattack.benchmark.config import load_benchmark_config
from metricattack.benchmark.evidence import Bootstrap, ap_key
from metricattack.benchmark.experiments import EXPERIMENTS
from metricattack.benchmark.runner import write_outputs
from metricattack.errors import ConfigError, MetricAttackError
from metricattack.stages import StageCache

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- config
def test_shipped_configs_validate() -> None:
    for path in ["configs/quickstart.yaml", "configs/tiny.yaml", "configs/paper/market1501.yaml", "configs/paper/dukemtmc.yaml"]:
        cfg = load_benchmark_config(REPO / path)
        assert cfg.models, path
        # the paper's HACNN and Mancs are test-only models of the demo and of the paper's benchmarks
        if path != "configs/tiny.yaml":
            assert cfg.test_only_models() == ["HACNN", "Mancs"], path


MINIMAL = """
dataset: {synthetic: {num_train_ids: 4, num_test_ids: 3}}
models:
  - name: B1
    train: &r {model: {backbone: resnet18}, loss: {cross_entropy: {}}, schedule: {epochs: 1}}
  - {name: B2, train: {<<: *r, seed: 1}}
"""
B2_ENTRY = "{name: B2, train: {<<: *r, seed: 1}}"  # another seed: one recipe under two names is refused


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL.replace("name: B2", "name: B1"))
    with pytest.raises(ConfigError, match="unique"):
        load_benchmark_config(path)
    path.write_text(MINIMAL.replace(B2_ENTRY, "{name: B2}"))
    with pytest.raises(ConfigError, match="exactly one of"):
        load_benchmark_config(path)
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError, match="unknown experiment"):
        load_benchmark_config(path, only=["table9"])
    assert load_benchmark_config(path, only=["table2"]).selected() == ["table2"]


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("attack.metric=eucldean", "attack.metric: Value error, unknown metric 'eucldean'"),
        ("attack.methods=[fgsm,ifgms]", "attack.methods.1"),
        ("experiments.table5.settings.method=bogus", "experiments.table5.settings.method"),
        ("experiments.table5.settings.training_attack.attack.eps=300", "experiments.table5.settings.training_attack.attack.eps"),
        ("experiments.fig5.metrics=[euclidean,xqd]", "experiments.fig5.metrics.1"),
        ("models.B2.train.optimizer.lrr=1", "models.1.train.optimizer.lrr"),
        ("models.1.train.model.backbone=resnet99", "unknown backbone 'resnet99'"),
        ("models.B1.train.loss={triplet: {}}", "loss.triplet needs batch.sampler: pk"),
        ("dataset.synthetic.num_train_id=3", "dataset.synthetic.num_train_id"),
        ("dataset.name=market1502", "unknown dataset 'market1502'"),
        ("experiments.targeted.model=B9", "experiments.targeted.model 'B9' is not one of the attacked"),
        ("experiments.table4.methods=[pgd]", "experiments.table4.methods: ['pgd'] are not in attack.methods ['fgsm', 'ifgsm', 'mifgsm']"),
        ("experiments.table4.methods=[]", "experiments.table4.methods: List should have at least 1 item"),
        ("experiments.table4.methods=[mifgsm,mifgsm]", "experiments.table4.methods lists mifgsm more than once"),
        ("attack.methods=[ifgsm,fgsm,ifgsm]", "attack.methods lists ifgsm more than once"),
        ("attack.alpha=2", "attack.alpha: method options are given per method now, under attack.options.<method>"),
        ("attack.options={ifgsm: {mu: 2}}", "attack.options: Value error, ifgsm has no option 'mu' (its options: alpha, steps)"),
        ("attack.options={fgsn: {}}", "unknown attack method 'fgsn'"),
        ("experiments.fig5.epsilons=[2,5,2]", "experiments.fig5.epsilons lists 2.0 more than once"),
    ],
)
def test_typos_fail_at_load(tmp_path: Path, override: str, where: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError) as caught:
        load_benchmark_config(path, [override])
    assert where in str(caught.value)


def test_overrides_reach_list_entries_by_index_or_name(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    cfg = load_benchmark_config(path, ["models.1.train.seed=3", "models.B1.train.schedule.epochs=7", "attack.methods=[pgd]"])
    assert [m.train.seed for m in cfg.models if m.train] == [0, 3]
    assert cfg.models[0].train is not None and cfg.models[0].train.schedule.epochs == 7
    assert cfg.attack.spec("pgd").resolved()["options"]["random_start"]
    with pytest.raises(ConfigError, match=r"'B3' is not an entry of a list of 2 \(use an index 0..1 or one of the names B1, B2\)"):
        load_benchmark_config(path, ["models.B3.train.seed=1"])


def test_table4_ensembles_use_its_methods_or_every_attack_method(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL + "  - {name: B3, train: {<<: *r, seed: 2}}\n")
    ensembles = {(j.sources, j.method) for j in EXPERIMENTS.get("table4").needs(load_benchmark_config(path)).jobs if len(j.sources) > 1}
    assert ensembles == {(m, method) for m in [("B2", "B3"), ("B1", "B3"), ("B1", "B2")] for method in ("fgsm", "ifgsm", "mifgsm")}
    cfg = load_benchmark_config(path, ["experiments.table4.methods=[mifgsm]"])
    needs = EXPERIMENTS.get("table4").needs(cfg)
    assert {(j.sources, j.method) for j in needs.jobs if len(j.sources) > 1} == {
        (("B2", "B3"), "mifgsm"),
        (("B1", "B3"), "mifgsm"),
        (("B1", "B2"), "mifgsm"),
    }
    # the single-model transfers Table 4 compares with still come from Table 2, every method of it
    assert {j.method for j in needs.jobs if len(j.sources) == 1} == {"fgsm", "ifgsm", "mifgsm"}


def test_test_only_models_are_never_attacked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    cfg = load_benchmark_config(path, ["models.B1.test_only=true"])
    assert (cfg.model_names(), cfg.attacked_models(), cfg.test_only_models()) == (["B1", "B2"], ["B2"], ["B1"])
    assert cfg.chosen_model("fig1") == "B2" and cfg.defended_models() == ["B2"]
    with pytest.raises(ConfigError, match="experiments.fig4.model 'B1' is not one of the attacked \\(not test_only\\) models \\['B2'\\]"):
        load_benchmark_config(path, ["models.B1.test_only=true", "experiments.fig4.model=B1"])
    with pytest.raises(ConfigError, match="at least one model must be attacked"):
        load_benchmark_config(path, ["models.0.test_only=true", "models.1.test_only=true"])
    # the CPU-sized HACNN and Mancs recipes fit a quickstart-like config as test-only models
    sota = f"""
  - {{name: HACNN, test_only: true, train_config: {REPO}/configs/synthetic/hacnn-cpu.yaml}}
  - {{name: Mancs, test_only: true, train_config: {REPO}/configs/synthetic/mancs-cpu.yaml}}
"""
    path.write_text(MINIMAL + sota)
    cfg = load_benchmark_config(path)
    assert cfg.test_only_models() == ["HACNN", "Mancs"] and [m.train.model.architecture for m in cfg.models[2:] if m.train] == [
        "hacnn",
        "mancs",
    ]


def test_train_config_file_is_read_at_load_with_inline_overrides(tmp_path: Path) -> None:
    (tmp_path / "b1.yaml").write_text(
        "data: {dataset: market1501, root: /elsewhere, cache: true}\nmodel: {backbone: resnet18}\nloss: {cross_entropy: {}}\nschedule: {epochs: 60}\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL.replace(B2_ENTRY, "{name: B2, train_config: b1.yaml}"))
    cfg = load_benchmark_config(path, ["models.B2.train.schedule.epochs=2"])
    recipe = cfg.models[1].train
    assert recipe is not None and recipe.schedule.epochs == 2 and recipe.data.cache
    train = recipe.train_config("folder", tmp_path / "data", "cpu", "test")
    assert (train.data.dataset, train.data.root, train.device) == ("folder", tmp_path / "data", "cpu")
    (tmp_path / "b1.yaml").write_text("model: {backbone: resnet18}\nloss: {cross_entropy: {}}\nschedule: {epochs: 60, epocs: 2}\n")
    with pytest.raises(ConfigError, match=r"train_config .*b1.yaml[\s\S]*schedule.epocs"):
        load_benchmark_config(path)


def test_recipes_are_checked_against_the_dataset_before_training(tmp_path: Path) -> None:
    from metricattack.benchmark.context import RunContext
    from metricattack.benchmark.resources import check_trainable
    from metricattack.data.types import ImageRecord, ReIDDataset

    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    train = tuple(ImageRecord(tmp_path / f"{pid}_{k}.jpg", pid, k % 2) for pid in range(1, 6) for k in range(4))  # 5 ids x 4 images
    ds = ReIDDataset("folder", tmp_path, train, train[:1], train[1:2])
    cfg = load_benchmark_config(
        path, ["models.B1.train.batch.batch_size=8", "models.B2.train.batch={batch_size: 24, sampler: pk, images_per_id: 4}"]
    )
    ctx = RunContext(cfg, StageCache(tmp_path), "cpu", ds, str(tmp_path), "fingerprint")
    check_trainable(ctx, cfg.models[0])
    with pytest.raises(ConfigError, match="model B2 cannot train .* 6 identities per batch, but the training set has only 5"):
        check_trainable(ctx, cfg.models[1])
    with pytest.raises(
        ConfigError, match="model B1 cannot train .*batch_size=32 is larger than one epoch's worth of training images \\(20"
    ):
        check_trainable(ctx, load_benchmark_config(path).models[0])


def test_learned_metrics_are_fitted_on_cross_camera_pairs_by_default(tmp_path: Path) -> None:
    import torch

    from metricattack.benchmark.context import Features, RunContext
    from metricattack.benchmark.resources import fit_metrics
    from metricattack.data.types import ImageRecord, ReIDDataset

    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    train = tuple(
        ImageRecord(tmp_path / f"{pid}_{k}.jpg", pid, k % 3) for pid in range(1, 9) for k in range(6)
    )  # 8 ids x 6 images, 3 cameras
    ds = ReIDDataset("folder", tmp_path, train, train[:1], train[1:2])
    features = torch.nn.functional.normalize(
        torch.randn(len(train), 16, generator=torch.Generator().manual_seed(0)) + torch.arange(8).repeat_interleave(6)[:, None] * 0.3, dim=1
    )
    for cross, expected_pairs in ((None, 8 * 12), (False, 8 * 15)):  # 6 images in 3 cameras: 12 cross-camera of 15 pairs
        cfg = load_benchmark_config(path, [] if cross is None else [f"learned_metrics.cross_camera={str(cross).lower()}"])
        ctx = RunContext(cfg, StageCache(tmp_path / str(cross)), "cpu", ds, str(tmp_path), "fp", keys={"features:B1": "k"})
        ctx.clean["B1"] = Features(features[:1], features[:1], features)
        fit_metrics(ctx, [("B1", "xqda")])
        sidecar = json.loads(next((tmp_path / str(cross)).rglob("metric.json")).read_text())
        assert sidecar["meta"]["learned_metric"]["fit"]["num_similar_pairs"] == expected_pairs


def test_models_train_with_the_runs_progress_setting(tmp_path: Path) -> None:
    from metricattack.benchmark.context import RunContext
    from metricattack.benchmark.resources import train_config
    from metricattack.data.types import ImageRecord, ReIDDataset

    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    train = tuple(ImageRecord(tmp_path / f"{pid}_{k}.jpg", pid, k % 2) for pid in range(1, 5) for k in range(4))
    ds = ReIDDataset("folder", tmp_path, train, train[:1], train[1:2])
    for overrides, shown in (([], True), (["progress=false"], False), (["models.B1.train.progress=false"], False)):
        cfg = load_benchmark_config(path, overrides)
        ctx = RunContext(cfg, StageCache(tmp_path), "cpu", ds, str(tmp_path), "fp")
        assert train_config(ctx, cfg.models[0]).progress is shown, overrides


# ----------------------------------------------------------------- schema
def test_schema_doc_is_up_to_date() -> None:
    doc = (REPO / "docs" / "results-schema.md").read_text(encoding="utf-8")
    assert doc == schema.schema_markdown(), "regenerate with python -m metricattack.benchmark.schema docs/results-schema.md"


def test_results_comparison_ignores_timings_and_the_run_folder_only() -> None:
    from metricattack.benchmark.compare import results_differences

    def run(folder: str, mAP: float, seconds: float) -> dict:
        return {
            "provenance": {"created": f"2026-11-30T{seconds}", "wall_seconds": seconds, "stage_seconds": {"model": seconds}},
            "dataset": {"root": f"{folder}/cache/dataset/x", "counts": {"query": 30}},
            "models": [{"name": "B1", "train_seconds": seconds, "checkpoint": f"{folder}/cache/model/a.safetensors"}],
            "table1": [{"model": "B1", "mAP": mAP}],
        }

    folders = ("/tmp/A", "/tmp/B")
    assert results_differences(run("/tmp/A", 63.05, 1.0), run("/tmp/B", 63.05, 9.5), folders) == []
    assert results_differences(run("/tmp/A", 63.05, 1.0), run("/tmp/B", 63.0500001, 1.0), folders) == ["table1.0.mAP: 63.05 != 63.0500001"]
    # a path outside the run's own folder, a missing key and a shorter list are differences too
    assert results_differences(run("/tmp/A", 1.0, 1.0), run("/tmp/AB", 1.0, 1.0), folders) == [
        "dataset.root: '<run>/cache/dataset/x' != '/tmp/AB/cache/dataset/x'",
        "models.0.checkpoint: '<run>/cache/model/a.safetensors' != '/tmp/AB/cache/model/a.safetensors'",
    ]
    assert results_differences({"a": [1, 2], "b": 0}, {"a": [1]}) == ["(top level).b: only in the first run", "a: 2 entries != 1 entries"]


# ----------------------------------------------------------------- a hand-built results object
def _rank(m: float) -> dict:
    return {
        "rank1": min(100.0, m + 10),
        "rank5": min(100.0, m + 15),
        "rank10": min(100.0, m + 20),
        "mAP": m,
        "mINP": m / 2,
        "num_queries": 10,
    }


def _png(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)
    return str(path)


def per_query(mAP: float, spread: float, queries: int = 10) -> np.ndarray:
    """``queries`` APs in [0, 1] whose mean is ``mAP`` / 100, spread by ± ``spread`` (relative, evenly)."""
    return mAP / 100 * (1 + spread * np.linspace(-1, 1, queries))


def make_results(tmp_path: Path, whitebox: float, blackbox: float, spread: float = 0.1) -> schema.Results:
    """Two models, three methods; white-box cells ``whitebox``, black-box cells ``blackbox`` (+ method offsets);
    per-query APs around each cell's mAP (relative ``spread``) as the findings' evidence."""
    names, methods = ["B1", "B2"], ["fgsm", "ifgsm", "mifgsm"]
    offset = {"fgsm": 5.0, "ifgsm": 0.0, "mifgsm": 1.0}
    bb_offset = {"fgsm": 5.0, "ifgsm": 2.0, "mifgsm": 0.0}
    rows = [
        {
            "attacked": a,
            "method": m,
            "attack_id": f"{m}-{a}",
            "cells": [
                {
                    "tested": t,
                    "ranking": _rank(whitebox + offset[m] if t == a else blackbox + bb_offset[m]),
                    "white_box": t == a,
                    "worst_in_column": False,
                }
                for t in names
            ],
        }
        for a in names
        for m in methods
    ]
    img = [_png(tmp_path / f"i{k}.png", k) for k in range(4)]
    data = {
        "provenance": {
            "config": {"name": "unit", "attack": {"eps": 5}},
            "config_path": "x.yaml",
            "seeds": {"run": 0},
            "versions": {"metricattack": "0"},
            "threads": {"torch": 2, "torch_interop": 2, "env": {"OMP_NUM_THREADS": "2"}},
            "ap_convention": "market",
            "created": "now",
            "experiments": ["table1", "table2", "fig3"],
            "wall_seconds": 1.0,
        },
        "dataset": {"name": "synthetic", "root": "/x", "fingerprint": "f", "counts": {"query": 10, "gallery": 20}},
        "models": [],
        "attacks": [],
        "table1": [{"model": n, "description": "d", "metric": "euclidean", "clean": _rank(80.0)} for n in names],
        "table2": {"title": "Table 2", "epsilon": 5, "clean_mAP": {n: 80.0 for n in names}, "rows": rows},
        "fig3": {"points": [{"tested": "B1", "attacked": "B2", "method": "ifgsm", "white_box": False, "ratio": 0.5}]},
        "fig1": {
            "model": "B1",
            "attack_id": "a",
            "examples": [
                {
                    "query_path": img[0],
                    "gallery_path": img[1],
                    "adversarial_path": img[2],
                    "true_match": True,
                    "similarity_before": 0.8,
                    "similarity_after": 0.1,
                    "linf": 5.0,
                }
            ],
        },
        "fig4": {
            "model": "B1",
            "top_k": 2,
            "probes": [
                {
                    "query_index": 0,
                    "path": img[0],
                    "pid": 1,
                    "camid": 0,
                    "lists": [
                        {
                            "setting": "clean",
                            "attack_id": None,
                            "top": [
                                {"rank": 1, "path": img[1], "pid": 1, "camid": 1, "correct": True, "adversarial": False},
                                {"rank": 2, "path": img[3], "pid": 2, "camid": 1, "correct": False, "adversarial": False},
                            ],
                        }
                    ],
                }
            ],
        },
        "fig5": {
            "model": "B1",
            "clean": {"euclidean": _rank(80.0)},
            "curves": [
                {
                    "method": "ifgsm",
                    "attack_metric": "euclidean",
                    "test_metric": "euclidean",
                    "points": [{"epsilon": 0, "mAP": 80}, {"epsilon": 5, "mAP": whitebox, "attack_id": "a"}],
                }
            ],
        },
        "table5": {"status": "not run", "reason": "disabled in the config"},
        "findings": [],
    }
    res = schema.validate_results(data)
    evidence = {ap_key(t, None, "euclidean"): per_query(80.0, spread) for t in names}
    for row in rows:
        for cell in row["cells"]:
            evidence[ap_key(cell["tested"], row["attack_id"], "euclidean")] = per_query(cell["ranking"]["mAP"], spread)
    return res.model_copy(update={"findings": findings.compute_findings(res, Bootstrap(evidence, resamples=500))})


def test_findings_follow_the_numbers(tmp_path: Path) -> None:
    strong = {f.id: f for f in make_results(tmp_path, whitebox=0.5, blackbox=30.0).findings}
    assert strong[1].status == "holds" and strong[2].status == "holds" and strong[3].status == "holds"
    assert strong[4].status == strong[5].status == strong[6].status == "not measured"
    weak = {f.id: f for f in make_results(tmp_path, whitebox=40.0, blackbox=30.0).findings}
    assert weak[1].status == "does not hold" and weak[2].status == "does not hold"
    assert weak[1].numbers["B1.whitebox_ifgsm_mAP"] == pytest.approx(40.0)
    low, high = weak[1].intervals["B1.whitebox_ifgsm_mAP"]
    assert low < 40.0 < high and "40.00 [" in weak[1].summary


def test_a_finding_whose_interval_straddles_its_criterion_is_inconclusive(tmp_path: Path) -> None:
    # white-box mAP 8 = exactly 10% of the clean 80: with per-query spread the interval straddles the criterion
    f1 = make_results(tmp_path, whitebox=8.0, blackbox=30.0, spread=0.9).findings[0]
    assert f1.status == "inconclusive"
    assert {c.status for c in f1.checks} == {"inconclusive"} and all(c.low < 0 < c.high for c in f1.checks)
    # the same numbers without spread over queries: every interval is a point, the verdict is clear
    assert make_results(tmp_path, whitebox=7.0, blackbox=30.0, spread=0.0).findings[0].status == "holds"
    assert make_results(tmp_path, whitebox=9.0, blackbox=30.0, spread=0.0).findings[0].status == "does not hold"


def test_bootstrap_is_seeded_paired_and_exact_on_the_full_sample() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 200)
    a[[3, 50]] = np.nan  # queries without a valid match are not units
    b = np.where(np.isnan(a), np.nan, a + 0.01)
    boot = Bootstrap({"a": a, "b": b, "c": np.full(200, 0.3)}, resamples=1000, seed=1)
    assert boot.mAP("a")[0] == pytest.approx(100 * np.nanmean(a))
    assert boot.mAP("a").shape == (1001,)
    low, high = boot.interval(boot.mAP("b") - boot.mAP("a"))  # paired: the difference is exactly 1 point in every resample
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    low, high = boot.interval(boot.mAP("a"))
    assert low < 100 * np.nanmean(a) < high and high - low < 15
    again = Bootstrap({"a": a}, resamples=1000, seed=1)
    assert np.array_equal(again.mAP("a"), boot.mAP("a"))
    assert not np.array_equal(Bootstrap({"a": a}, resamples=1000, seed=2).mAP("a"), boot.mAP("a"))
    boot.mAP("a")
    with pytest.raises(MetricAttackError, match="valid entries other than the vectors it is paired with"):
        boot.mAP("c")


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links, self.ids, self.imgs, self.external = [], set(), {}, []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs[a.get("data-figure")] = a["src"]
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.external.append(a)


def check_report(html: str, expected_figures: set[str]) -> _Collect:
    """Every announced section exists; every figure is an embedded, decodable PNG; nothing external."""
    parser = _Collect()
    parser.feed(html)
    assert parser.links, "report has no table of contents"
    assert set(parser.links) <= parser.ids, f"announced but missing: {set(parser.links) - parser.ids}"
    assert expected_figures <= set(parser.imgs), f"figures missing: {expected_figures - set(parser.imgs)}"
    for src in parser.imgs.values():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not parser.external
    return parser


def test_tables_figures_report(tmp_path: Path) -> None:
    res = make_results(tmp_path, whitebox=0.5, blackbox=30.0)
    written = write_outputs(res, tmp_path)
    assert {p.stem for p in (tmp_path / "tables").glob("*.md")} == {"table1", "table2", "table2_rank1", "table5"}
    md = (tmp_path / "tables" / "table2.md").read_text()
    assert "0.500†" in md and sum(line.count("†") for line in md.splitlines()[4:]) == 6  # white-box cells
    assert (tmp_path / "tables" / "table2.csv").read_text().splitlines()[0].startswith("Model,Attack,B1 (80.00)")
    # without test-only models, Fig. 3 is only the extra plot of the base models
    assert {p.stem for p in (tmp_path / "figures").glob("*.png")} == {"fig1", "fig3_base", "fig4", "fig5"}
    html = written["report"].read_text()
    parser = check_report(html, {"fig1", "fig3_base", "fig4", "fig5"})
    assert "this run has none" in html
    assert "not run: disabled in the config" in html
    assert html.count('data-finding="') == 6
    # every experiment has a section, in the registry's (paper) order; unselected ones say so
    assert [s for s in dict.fromkeys(link.split("_")[0] for link in parser.links) if s in EXPERIMENTS] == list(EXPERIMENTS)
    assert html.count("not run in this run (not selected).") == 4  # table4, classification, targeted, defenses


def test_fig3_is_the_test_only_models_ratio(tmp_path: Path) -> None:
    res = make_results(tmp_path, whitebox=0.5, blackbox=30.0)
    assert res.fig3 is not None
    res = res.model_copy(update={"fig3": res.fig3.model_copy(update={"test_only": ["B1"]})})
    figures = {f.name: f for f in EXPERIMENTS.get("fig3").figures(res, tmp_path)}
    assert set(figures) == {"fig3"} and "test-only models (B1" in figures["fig3"].caption  # the base models' ratios: none tested
    assert all(f.path.is_file() for f in figures.values())


def test_every_results_section_has_one_experiment() -> None:
    sections = [
        n for n, f in schema.Results.model_fields.items() if n not in ("findings", "further_findings", "evidence") and f.default is None
    ]
    assert list(EXPERIMENTS) == sections
    assert all(EXPERIMENTS.get(n).name == n for n in EXPERIMENTS)


def test_a_method_a_threat_model_refuses_stops_the_run_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metricattack.attacks.threats import THREATS, ThreatModel
    from metricattack.benchmark.jobs import AttackJob
    from metricattack.benchmark.resources import check_jobs

    class Frozen(ThreatModel):  # a loss whose gradient vanishes at the clean image, as "self" has
        name = mode = "frozen"
        summary = "test only"
        zero_gradient_at_clean = True

    monkeypatch.setitem(THREATS._items, "frozen", Frozen())
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    cfg = load_benchmark_config(path)
    check_jobs(cfg, [AttackJob(("B1",), "frozen", "pgd", 5.0, "euclidean")])  # a random start moves it
    with pytest.raises(ConfigError, match=r"attack frozen-ifgsm-eps5-euclidean-B1: attack method ifgsm cannot move any image"):
        check_jobs(cfg, [AttackJob(("B1",), "gallery", "ifgsm", 5.0, "euclidean"), AttackJob(("B1",), "frozen", "ifgsm", 5.0, "euclidean")])
