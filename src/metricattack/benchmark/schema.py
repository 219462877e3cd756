"""The schema of ``results.json``: every number a benchmark run produced, with provenance.

All accuracies (rank-k, mAP, mINP) are percentages in [0, 100]; the AP convention of every
mAP is ``provenance.ap_convention``. Sections of experiments that were not selected are
``null``. ``docs/results-schema.md`` is generated from these models by
:func:`schema_markdown` (``python -m metricattack.benchmark.schema docs/results-schema.md``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..attacks.threats import modes
from ..io import atomic_write_text

SCHEMA_VERSION: Literal[2] = 2
Verdict = Literal["holds", "does not hold", "inconclusive"]
Status = Literal["holds", "does not hold", "inconclusive", "not measured"]


def _check_mode(mode: str) -> str:
    if mode not in modes():
        raise ValueError(f"unknown attack mode {mode!r}; the threat models' modes are: {', '.join(modes())}")
    return mode


def _mode_enum(schema: dict[str, Any]) -> None:
    schema["enum"] = list(modes())


Mode = Annotated[str, AfterValidator(_check_mode), Field(json_schema_extra=_mode_enum)]
"""An attack's label in results: the ``mode`` of a registered threat model (``nontargeted``, ``targeted``, ...)."""


class Record(BaseModel):
    """Base of every results section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Ranking(Record):
    """Retrieval accuracy of one (gallery, tested model, test metric) combination, in %."""

    rank1: float = Field(ge=0, le=100)
    rank5: float = Field(ge=0, le=100)
    rank10: float = Field(ge=0, le=100)
    mAP: float = Field(ge=0, le=100)
    mINP: float | None = Field(None, ge=0, le=100)
    num_queries: int = Field(ge=0)


class ModelInfo(Record):
    name: str
    description: str
    checkpoint: str | None = Field(description="the checkpoint trained or given; null for a model from elsewhere (see source)")
    checkpoint_sha256: str | None = Field(description="SHA-256 of the checkpoint, or of a model from elsewhere's weights (or module file)")
    source: dict[str, Any] | None = Field(
        None, description="a model from elsewhere (config model: / weights:): label, model spec, weights, module_file, preprocessing"
    )
    spec: dict[str, Any] = Field(description="spec() of the model ({} for a python: model without one)")
    train_seed: int | None = None
    train_seconds: float | None = None


class AttackSetting(Record):
    """One adversarial gallery: which models were attacked, how, with which metric."""

    id: str
    sources: list[str]
    threat_model: str = Field(description="the threat model attacked (a registered name: gallery, targeted, ...)")
    mode: Mode
    method: str
    epsilon: float
    options: dict[str, Any] = Field(description="the method's options, resolved (defaults filled: alpha, steps, mu, ...)")
    metric: str
    seed: int
    linf: float | None = Field(None, description="measured max |x_adv - x| over saved images, 0..255 units")
    dataset_dir: str


class Table1Row(Record):
    model: str
    description: str
    metric: str
    clean: Ranking
    test_only: bool = Field(default=False, description="tested on every adversarial gallery, never attacked (the paper's HACNN, Mancs)")


class MatrixCell(Record):
    tested: str
    ranking: Ranking
    white_box: bool
    worst_in_column: bool


class MatrixRow(Record):
    attacked: str
    method: str
    attack_id: str
    cells: list[MatrixCell]


class Table2(Record):
    """White-box (diagonal) and black-box matrix of mAP, rows = attacked × method."""

    title: str
    epsilon: float
    clean_mAP: dict[str, float]
    rows: list[MatrixRow]
    test_only: list[str] = Field(default_factory=list, description="tested models that are never attacked (the paper's HACNN, Mancs)")


class EnsembleRow(Record):
    holdout: str
    ensemble: list[str]
    method: str
    attack_id: str
    ensemble_mAP: float = Field(description="mAP of the ensemble as one system: distance = mean of member distances")
    holdout_mAP: float
    best_single_transfer_mAP: float | None = Field(
        None, description="lowest hold-out mAP over single-model attacks on the other models (Table 2, same method)"
    )
    single_attack_ids: list[str] = Field(default_factory=list, description="the Table 2 galleries of that comparison")
    test_only_mAP: dict[str, float] = Field(default_factory=dict, description="mAP of each test-only model on the ensemble's gallery")


class Table4(Record):
    epsilon: float
    rows: list[EnsembleRow]


class RatioPoint(Record):
    tested: str
    attacked: str
    method: str
    white_box: bool
    ratio: float = Field(description="adversarial mAP / clean mAP")


class Fig3(Record):
    """mAP ratios of every tested model on every Table 2 gallery; the paper's figure shows the test-only models."""

    points: list[RatioPoint]
    test_only: list[str] = Field(default_factory=list, description="the test-only models (the paper's Fig. 3: HACNN vs Mancs)")


class CurvePoint(Record):
    epsilon: float
    mAP: float
    attack_id: str | None = Field(None, description="null for ε = 0 (the clean gallery)")


class Curve(Record):
    method: str
    attack_metric: str
    test_metric: str
    points: list[CurvePoint]


class Fig5(Record):
    model: str
    curves: list[Curve]
    clean: dict[str, Ranking] = Field(description="clean accuracy of the model under each test metric")


class ClassificationVsMetric(Record):
    """The paper's 77.52 → 0.367 (metric attack) vs 52.93 (classification attack) comparison."""

    model: str
    method: str
    metric_attack_id: str | None = None
    classification_attack_id: str | None = None
    clean: Ranking
    metric_attack: Ranking
    classification_attack: Ranking | None
    classification_missing: str | None = None
    mean_tp_distance: dict[str, float] = Field(
        description="mean squared-Euclidean distance probe → true positive (other camera): clean / metric_attack / classification_attack"
    )


class Targeted(Record):
    model: str
    method: str
    attack_id: str
    num_images: int
    top1_rate: float = Field(ge=0, le=1, description="fraction of attacked gallery images ranked 1st for their target probe")
    top10_rate: float = Field(ge=0, le=1)
    clean_top1_rate: float = Field(ge=0, le=1, description="same fraction before the attack (baseline)")
    clean_top10_rate: float = Field(ge=0, le=1)
    after: Ranking = Field(description="accuracy of the model on the targeted-attack gallery")


class RankedImage(Record):
    rank: int = Field(ge=1)
    path: str
    pid: int
    camid: int
    correct: bool = Field(description="true positive (same identity) for the probe")
    adversarial: bool


class RankingList(Record):
    setting: Literal["clean"] | Mode
    attack_id: str | None
    top: list[RankedImage]


class ProbeLists(Record):
    query_index: int
    path: str
    pid: int
    camid: int
    lists: list[RankingList]


class Fig4(Record):
    model: str
    top_k: int
    probes: list[ProbeLists]


class Fig1Example(Record):
    query_path: str
    gallery_path: str
    adversarial_path: str
    true_match: bool
    similarity_before: float = Field(description="cosine similarity of L2-normalised features, probe vs gallery")
    similarity_after: float
    linf: float


class Fig1(Record):
    model: str
    attack_id: str
    examples: list[Fig1Example]


class Table5Cell(Record):
    base_model: str
    gallery: str = Field(description="'original' or 'adv(<attacked model>)'")
    attack_id: str | None = Field(default=None, description="the adversarial gallery (null: the original one)")
    normal_mAP: float
    defended_mAP: float
    improvement: float = Field(description="relative improvement (#M - #N) / #N")


class Table5(Record):
    status: Literal["ok", "not run"]
    reason: str | None = None
    cells: list[Table5Cell] = Field(default_factory=list)
    adaptive: list[dict[str, Any]] = Field(default_factory=list, description="white-box attacks on defended models")


class Interval(Record):
    """A percentage with its bootstrap interval over queries."""

    value: float
    low: float
    high: float


class ZooAttack(Record):
    """One white-box attack on a zoo model: its own queries or gallery perturbed, tested on the model itself."""

    attack_id: str
    side: Literal["query", "gallery"]
    method: str
    epsilon: float
    linf: float | None = Field(None, description="measured max |x_adv - x| over saved images, 0..255 units")
    dataset_dir: str = Field(description="the adversarial dataset (the attacked side perturbed, the other copied)")
    ranking: Ranking


class ZooRow(Record):
    model: str
    source: str = Field(description="where it comes from: a format or python: spec, a backbone's recipe, or a checkpoint")
    paper: str
    clean: Ranking
    attacks: list[ZooAttack]
    robust_mAP: Interval | None = Field(
        default=None, description="robust mAP under the robustness protocol (Zoo.robustness_version, at Zoo.robustness_eps)"
    )
    robust_flagged: list[str] = Field(default_factory=list, description="the protocol's checks that flagged this model")
    robust_file: str | None = Field(default=None, description="its robustness.json (every attack, check and cost)")


class Zoo(Record):
    """The model zoo: every model clean and under each white-box attack (squared Euclidean distance),
    and its robust mAP under the robustness protocol."""

    metric: str
    methods: list[str]
    sides: list[Literal["query", "gallery"]]
    epsilons: list[float]
    rows: list[ZooRow]
    robustness_version: str | None = Field(default=None, description="the robustness protocol version of robust_mAP (None: not run)")
    robustness_eps: float | None = None
    robustness_queries: int | None = Field(default=None, description="queries of the robust evaluation (evenly spaced); None: every query")


class BeyondCell(Record):
    """One tested model on one adversarial gallery of the ``beyond`` experiment."""

    tested: str
    mAP: float
    interval: tuple[float, float] = Field(description="bootstrap interval of mAP over queries (confidence section)")
    white_box: bool = Field(description="the tested model is the attacked one")


class BeyondRow(Record):
    attacked: str
    method: str
    epsilon: float
    attack_id: str
    options: dict[str, Any] = Field(description="the method's resolved options (AttackSpec.resolved()['options'])")
    cells: list[BeyondCell]


class Beyond(Record):
    """Attacks beyond the paper: every method × attacked model × ε, white-box and transferred."""

    metric: str
    methods: list[str]
    epsilons: list[float]
    confidence: float = Field(description="coverage of the intervals")
    clean: list[BeyondCell] = Field(description="every model on the clean gallery (white_box false)")
    rows: list[BeyondRow]


class RobustPoint(Record):
    """A model's robust evaluation at one ε (``metricattack.defense.evaluation.robust_evaluations``)."""

    epsilon: float
    robust_mAP: float = Field(
        description="mAP of the worst AP per query over the robustness protocol's attacks (white-box) and the transferred query attack"
    )
    robust_interval: tuple[float, float] = Field(description="bootstrap interval of robust_mAP")
    gallery_robust_mAP: float = Field(description="the same over the gallery-side white-box attacks")
    gallery_interval: tuple[float, float]
    attacks: dict[str, float] = Field(
        description="mAP under each: 'query/protocol-<version>' (the protocol's worst case), 'gallery/ifgsm', 'gallery/pgd', "
        "'transfer/query/ifgsm'"
    )
    flags: dict[str, bool] = Field(
        description="gradient-masking flags (true = tripped): the robustness protocol's measured checks (never-weaker, eps-sweep, "
        "convergence, black-box, zero-gradient, randomness; made at the largest ε) and transfer = the query attack transferred "
        "from the undefended model beats the white-box ones"
    )
    beats_paper: bool | None = Field(
        None,
        description="robust_mAP interval entirely above the paper's metric-preserving model's, at a clean-mAP drop of at most "
        "10 % of the undefended model's (null for the undefended and the paper's model)",
    )


class DefenseEntry(Record):
    """One row of the defense leaderboard."""

    model: str
    base_model: str
    method: str | None = Field(description="defense method (metricattack.defense.methods.DEFENSES); null: the undefended model")
    label: str
    source: str = Field(description="where the method was published")
    paper: bool = Field(description="the paper's own defense (metric-preserving)")
    initialisation: str | None = Field(description="'scratch' (F's initialisation) or 'finetune' (from F's weights); null: undefended")
    clean_mAP: float
    clean_interval: tuple[float, float]
    clean_drop: float = Field(description="relative clean-mAP drop against the undefended model, (F - F_adv) / F")
    points: list[RobustPoint]
    train_seconds: float | None = Field(None, description="wall seconds of the stage that made the model (the defense: attack + training)")
    train_cpu_seconds: float | None = Field(None, description="CPU seconds of that stage (this process, all threads)")
    cost_multiple: float | None = Field(
        None, description="train_cpu_seconds / the undefended model's training CPU seconds (a fine-tuned defense: on top of it)"
    )
    cost_per_image: float | None = Field(
        None, description="CPU seconds per training image of its training / of the undefended model's training (training steps only)"
    )


class Defenses(Record):
    """The defense leaderboard: clean and robust mAP (adaptive attacks) of each defense of one base model."""

    status: Literal["ok", "not run"]
    reason: str | None = None
    base_model: str | None = None
    epsilons: list[float] = Field(default_factory=list)
    protocol: str = Field("", description="the attacks behind robust_mAP")
    entries: list[DefenseEntry] = Field(default_factory=list, description="ranked by robust_mAP at the largest ε")


class LeaderboardRow(Record):
    """One model's robustness evaluation (``metricattack robustness``'s protocol)."""

    model: str
    robust_mAP: Interval = Field(description="robust mAP at the headline ε: per query the lowest AP any attack of the cascade reached")
    robust_rank1: Interval
    clean_mAP: float
    chance_mAP: float
    gallery_mAP: Interval | None = Field(
        default=None, description="the protocol's gallery-side figure: mAP with the gallery attacked and every query clean (reported apart)"
    )
    flagged: list[str] = Field(description="the checks that flagged this evaluation (see its robustness.json)")
    forwards_per_query: float = Field(description="forward passes of one image per query, checks included")
    backwards_per_query: float
    seconds: float
    file: str = Field(description="its robustness.json (every attack, check and cost)")


class Leaderboard(Record):
    """Every evaluated model ranked by robust mAP (lowest last), under one protocol version and ε."""

    version: str
    eps: float
    queries: int | None = Field(None, description="queries evaluated (evenly spaced over the query list); None: every query")
    rows: list[LeaderboardRow]


class Check(Record):
    """One inequality of a finding's criterion with its bootstrap interval.

    ``margin`` is how far the criterion is met (met when ``margin > 0`` if ``strict``, else
    ``margin ≥ 0``); ``holds`` when the whole interval meets it, ``does not hold`` when none of
    it does, ``inconclusive`` when the interval straddles the boundary.
    """

    name: str
    margin: float
    low: float
    high: float
    strict: bool
    status: Verdict


class Finding(Record):
    id: int
    title: str
    status: Status = Field(description="holds / does not hold when every check does / any check does not; else inconclusive")
    summary: str = Field(description="plain-language statement with the numbers (and their intervals) behind it")
    numbers: dict[str, float] = Field(default_factory=dict, description="the numbers the finding compares, on the full sample")
    intervals: dict[str, tuple[float, float]] = Field(default_factory=dict, description="bootstrap interval of each number")
    checks: list[Check] = Field(default_factory=list, description="the criterion's inequalities, each with its interval")


class EvidenceInfo(Record):
    """Where the per-query APs behind the findings are and how they were bootstrapped."""

    file: str = Field(description="safetensors file beside results.json: per-query APs and per-image targeted hits")
    sha256: str
    resamples: int
    seed: int
    confidence: float


class DatasetInfo(Record):
    name: str
    root: str
    fingerprint: str
    counts: dict[str, int]
    chance: Ranking | None = Field(
        None,
        description="expected accuracy of a uniformly random ranking of the test split "
        "(closed form): the floor a perfect non-targeted attack approaches",
    )


class Threads(Record):
    """The CPU thread counts of the run: the numbers depend on them (not on the machine's load)."""

    torch: int = Field(ge=1, description="torch.get_num_threads() (intra-op threads of the CPU kernels)")
    torch_interop: int = Field(ge=1, description="torch.get_num_interop_threads()")
    env: dict[str, str | None] = Field(
        description="OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS as set for the run (null = not set)"
    )


class Provenance(Record):
    config: dict[str, Any]
    config_path: str
    seeds: dict[str, Any]
    versions: dict[str, str]
    threads: Threads | None = Field(
        None, description="CPU thread counts of this run (results depend on them); null in files written before they were recorded"
    )
    ap_convention: Literal["market", "noninterp"]
    created: str
    experiments: list[str]
    stage_seconds: dict[str, float] = Field(default_factory=dict, description="stage kind -> seconds spent in this run")
    wall_seconds: float


class Results(Record):
    """Everything one benchmark run measured."""

    schema_version: Literal[2] = Field(default=SCHEMA_VERSION, description="version of this schema")
    provenance: Provenance = Field(description="config, seeds, software versions, AP convention, timings")
    dataset: DatasetInfo = Field(description="dataset name, root, fingerprint and split sizes")
    models: list[ModelInfo] = Field(description="the base models: checkpoint, checksum, spec, training seed")
    attacks: list[AttackSetting] = Field(description="every adversarial gallery made in the run (attack settings, measured L∞)")
    table1: list[Table1Row] | None = Field(None, description="Table 1: clean rank-k / mAP of every base model")
    table2: Table2 | None = Field(None, description="Tables 2/3: white-box / black-box mAP matrix, rows = attacked model × method")
    table4: Table4 | None = Field(None, description="Table 4: leave-one-out ensemble attacks (ensemble and hold-out mAP)")
    classification: ClassificationVsMetric | None = Field(
        None, description="metric attack vs classification attack, and mean distance to true positives"
    )
    targeted: Targeted | None = Field(None, description="targeted attack: share of images reaching their target's top-1/top-10")
    table5: Table5 | None = Field(None, description="Table 5: metric-preserving defense (#N, #M, #I), or status 'not run'")
    defenses: Defenses | None = Field(
        None, description="defense leaderboard: clean and robust mAP (adaptive attacks, ε = 5 and 8) with intervals, masking flags, cost"
    )
    fig1: Fig1 | None = Field(None, description="Fig. 1: example images with similarity to the probe before/after")
    fig3: Fig3 | None = Field(None, description="Fig. 3: adversarial / clean mAP ratio per tested model and setting")
    fig4: Fig4 | None = Field(None, description="Fig. 4: top-k ranking lists of chosen probes (clean, non-targeted, targeted)")
    fig5: Fig5 | None = Field(None, description="Fig. 5: mAP against ε per attack-metric / test-metric pair")
    beyond: Beyond | None = Field(
        None, description="attacks beyond the paper: each new method white-box and transferred at each ε, with bootstrap intervals"
    )
    zoo: Zoo | None = Field(
        None, description="model zoo (not in the paper): each configured model clean and under white-box query- and gallery-side attacks"
    )
    robustness: Leaderboard | None = Field(
        None, description="the robustness leaderboard: every model ranked by robust mAP (worst case over an attack cascade) with intervals"
    )
    evidence: EvidenceInfo | None = Field(
        default=None, description="the per-query APs behind the findings' intervals (file, bootstrap settings)"
    )
    findings: list[Finding] = Field(
        description="the paper's six findings: holds / does not hold / inconclusive / not measured, with numbers and intervals"
    )
    further_findings: list[Finding] = Field(
        default_factory=list, description="further claims of the paper (XQDA, defense), checked the same way"
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``results.json``."""
    return Results.model_json_schema()


def validate_results(data: dict[str, Any]) -> Results:
    """Parse ``data`` (a loaded results.json) or raise pydantic's ValidationError."""
    return Results.model_validate(data)


def schema_markdown() -> str:
    """The text of ``docs/results-schema.md``: a field guide plus the full JSON Schema."""
    lines = [
        "# `results.json` schema",
        "",
        "Written by `metricattack benchmark` into the run folder and validated before it is",
        "written. Generated from `metricattack.benchmark.schema` — regenerate with",
        "`python -m metricattack.benchmark.schema docs/results-schema.md`.",
        "",
        "Conventions: every accuracy (rank-k, mAP, mINP) is a percentage in [0, 100]; the AP",
        "convention of every mAP is `provenance.ap_convention` (`market` = the official",
        "Market-1501 trapezoidal AP, the one the paper's numbers are compared with: the paper",
        "names no AP code; `noninterp` = torchreid/fast-reid AP).",
        "Gallery images at equal distance from a query (a tie) count in every rank-k, AP and mINP",
        "as the expectation over their orders, each order equally likely (a constant model scores",
        "the chance level exactly; without ties the numbers are those of a plain sort).",
        "ε, α are in 0..255 pixel units. Sections of experiments that were not selected",
        "(`--only`) are `null`; `findings` always lists the six findings of the paper, each",
        "`holds`, `does not hold`, `inconclusive` or `not measured`, computed from the numbers in this file.",
        "",
        "Reproducibility: two runs of the same config and seeds with the same code and CPU thread",
        "counts (`provenance.threads`: the order in which the kernels add up depends on them, the",
        "machine's load does not) give the same file except the timing fields `provenance.created`,",
        "`provenance.wall_seconds`, `provenance.stage_seconds`, `models[].train_seconds` and paths",
        "inside the run folder; `python benchmarks/compare_results.py RUN_A RUN_B` lists any other",
        "difference (`metricattack.benchmark.compare`).",
        "",
        "## How a verdict is reached",
        "",
        "Each finding compares mean APs (mAPs) of evaluations of this run, or, for the targeted",
        "attack, the share of attacked images that reach their target's top-10. Its criterion is a",
        "set of inequalities (`checks`, e.g. 'B1's white-box mAP ≤ 10% of its clean mAP'), each",
        "written as a `margin` that is ≥ 0 (or > 0) when the inequality is met. The uncertainty of",
        "every number comes from a bootstrap over queries: the valid queries (those with a true",
        "match) are resampled with replacement `evidence.resamples` times (1,000 by default) with",
        "a fixed seed (`evidence.seed`), and every mAP a finding compares is recomputed on the same",
        "resampled queries (paired, so a difference of two mAPs keeps its correlation); the",
        "targeted attack's share resamples the attacked images the same way. The interval of a",
        "number or a margin is the percentile interval of its resampled values",
        "(`evidence.confidence` = 0.95: the 2.5th and 97.5th percentiles). A check `holds` when",
        "its whole interval meets the inequality, `does not hold` when none of it does, and is",
        "`inconclusive` when the interval straddles the boundary. A finding holds when all its",
        "checks hold, does not hold when any check does not hold, and is inconclusive otherwise.",
        "The per-query APs are saved beside results.json (`evidence.file`), so the verdicts can be",
        "recomputed; the same config and features give the same intervals. Variation over",
        "training seeds is not part of the interval (one model is trained per entry).",
        "",
        "## Top-level fields",
        "",
    ]
    props = Results.model_fields
    for name, field in props.items():
        lines.append(f"- `{name}`: {field.description}")
    lines += ["", "## JSON Schema", "", "```json", json.dumps(json_schema(), indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # regenerate docs/results-schema.md
    atomic_write_text(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results-schema.md"), schema_markdown())
