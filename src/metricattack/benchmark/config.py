"""The benchmark config: which data, which base models, which attacks, which experiments.

Loaded with :func:`load_benchmark_config` (YAML + ``a.b=value`` overrides, list entries by
index or name: ``models.B4.train.seed=1``). Every section is typed with the models the
commands use (:class:`~metricattack.data.synthetic.SynthConfig`,
:class:`~metricattack.training.config.TrainRecipe`, :class:`~metricattack.attacks.spec.AttackSpec`'s options,
the defense's sections), so a typo fails at load, before any work. Paths in the file are
resolved relative to the file's folder. See ``configs/quickstart.yaml`` for a commented
example and ``configs/paper/market1501.yaml`` for the paper's settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PositiveInt, model_validator

from ..attacks.spec import AttackSpec, MethodName, MethodOptionTable, refuse_moved_options, spec_from_table
from ..compute import Compute, DefaultComputeUnrecorded
from ..config import StrictModel, apply_overrides, read_yaml, validate
from ..data.layouts import DATASETS
from ..data.synthetic import SynthConfig
from ..defense.config import (
    AdaptiveSection,
    DefenseName,
    MethodSections,
    ProtocolVersion,
    RetrainSection,
    TrainingSetAttack,
    check_batches,
)
from ..errors import ConfigError, MetricAttackError
from ..evaluation.ranking import APConvention
from ..io import sha256_file
from ..metrics.distance import parameter_free_metrics
from ..metrics.learned import LEARNED_METRICS
from ..models.sources import ModelSource
from ..robustness.protocol import VERSIONS
from ..training.config import RUNTIME_FIELDS, BatchSection, TrainConfig, TrainRecipe
from .experiments import EXPERIMENTS

SYNTHETIC = "synthetic"


def benchmark_metrics() -> tuple[str, ...]:
    """Metrics an attack or a test may use: the parameter-free ones and the learned ones
    (fitted per model on its training features)."""
    return (*parameter_free_metrics(), *LEARNED_METRICS)


def _known_metric(name: str) -> str:
    if name not in benchmark_metrics():
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(benchmark_metrics())}")
    return name


MetricName = Annotated[str, AfterValidator(_known_metric)]


class DatasetSection(StrictModel):
    """``name: synthetic`` generates data from ``synthetic`` (a SynthConfig); any other name
    is a dataset layout of :func:`metricattack.data.layouts.load_dataset` read from ``root``."""

    name: str = SYNTHETIC
    root: Path | None = None
    synthetic: SynthConfig | None = None

    @model_validator(mode="after")
    def _source(self) -> DatasetSection:
        known = (SYNTHETIC, *DATASETS)
        if self.name not in known:
            raise ValueError(f"unknown dataset {self.name!r}; available: {', '.join(known)}")
        if self.name == SYNTHETIC:
            if self.synthetic is None:
                raise ValueError("dataset.synthetic (the generator's settings) is required for the synthetic dataset")
            if self.root is not None:
                raise ValueError("dataset.root is not used by the synthetic dataset (it is generated into the run folder)")
        else:
            if self.root is None:
                raise ValueError(f"dataset.root is required for dataset {self.name!r} (the folder holding it)")
            if self.synthetic is not None:
                raise ValueError(f"dataset.synthetic applies to the synthetic dataset only, not to {self.name!r}")
        return self

    @property
    def layout(self) -> str:
        """The layout name the dataset (and every adversarial copy of it) is read with."""
        return "folder" if self.name == SYNTHETIC else self.name


class RecipeData(StrictModel):
    """The data options of a recipe inside the benchmark (the dataset itself is the benchmark's)."""

    cache: bool = Field(default=False, description="decode + resize every training image once and keep it in memory (uint8)")


class ModelTraining(TrainRecipe):
    """A :class:`TrainRecipe` trained on the benchmark's dataset, on the benchmark's device."""

    data: RecipeData = RecipeData()

    def train_config(self, layout: str, root: str | Path, device: str, source: str) -> TrainConfig:
        """The TrainConfig that trains this recipe on the dataset at ``root``."""
        fields = self.model_dump(mode="json")
        fields["data"] = {**fields["data"], "dataset": layout, "root": str(root)}
        fields["device"] = device
        return validate(TrainConfig, fields, source)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s keys replaced (recursively for sections)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class ModelSection(StrictModel):
    """One model: trained from ``train`` (a TrainRecipe, inline) and/or ``train_config``
    (a training YAML read at load time; inline ``train`` keys override it, and its
    ``data.dataset`` / ``data.root`` are replaced by the benchmark's dataset), taken as
    is from ``checkpoint``, or a model from elsewhere: ``model`` (``python:MODULE:FUNCTION``
    or another project's format such as ``torchreid:resnet50``) with ``weights``, as the
    commands' ``--model`` / ``--weights`` (:mod:`metricattack.models.sources`).

    A ``test_only`` model is trained, listed in Table 1 and tested on every adversarial
    gallery (its column in Tables 2-4, Fig. 3) but never attacked, as the paper uses HACNN
    and Mancs; the others are the base models (B1-B4) the attacks are made against."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    test_only: bool = Field(default=False, description="tested on every adversarial gallery, never attacked (the paper's HACNN, Mancs)")
    train: ModelTraining | None = None
    train_config: Path | None = None
    checkpoint: Path | None = None
    model: str | None = Field(
        default=None, description="a model from elsewhere, as --model: python:MODULE:FUNCTION or a format (torchreid:resnet50, ...)"
    )
    weights: Path | None = Field(default=None, description="state dict for `model`, as --weights (required for a format)")

    @model_validator(mode="before")
    @classmethod
    def _read_train_config(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("train_config") is None:
            return data
        path = Path(data["train_config"])
        recipe = read_yaml(path)
        recipe["data"] = {k: v for k, v in (recipe.get("data") or {}).items() if k not in ("dataset", "root")}
        recipe = _merge(recipe, data.get("train") or {})
        validate(ModelTraining, recipe, f"model {data.get('name')!r}: train_config {path} (with the model's train entries over it)")
        return {**data, "train": recipe}

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        given = [n for n in ("train", "train_config", "checkpoint", "model") if getattr(self, n) is not None]
        if len([n for n in given if n != "train_config"]) != 1:
            raise ValueError(f"model {self.name!r} needs exactly one of train / train_config / checkpoint / model, got {given or 'none'}")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise ValueError(f"model {self.name!r}: checkpoint {self.checkpoint} does not exist")
        if self.weights is not None and self.model is None:
            raise ValueError(f"model {self.name!r}: weights go with model (a model from elsewhere); a checkpoint holds its own")
        self.source()
        return self

    def source(self) -> ModelSource | None:
        """Where the model comes from when it is not trained here (checked: format name, spec, files)."""
        if self.train is not None:
            return None
        try:
            if self.model is not None:
                return ModelSource(model=self.model, weights=self.weights).check_files()
            return ModelSource(checkpoint=self.checkpoint)
        except MetricAttackError as exc:
            raise ValueError(f"model {self.name!r}: {exc}") from None

    def stage_config(self) -> dict[str, Any]:
        """What identifies the model's training stage (the recipe, without runtime-only fields)."""
        if self.model is not None:
            return {"model": self.model, "weights": None if self.weights is None else str(self.weights)}
        if self.train is None:
            return {"checkpoint": str(self.checkpoint)}
        recipe = self.train.model_dump(mode="json")
        for name in RUNTIME_FIELDS:
            if name != "device":
                recipe.pop(name, None)
        return {"train": recipe}


class EvaluationSection(StrictModel):
    ap: APConvention = "market"
    batch_size: PositiveInt = 64


class AttackSection(StrictModel):
    """The attacks: ε (``eps``, 0..255 units, the paper's 5), the ``methods`` of Tables 2 and 4, and
    per-method options under ``options.<method>`` (any registered method, also one an experiment
    uses outside ``methods``; defaults: the paper's α = 1, μ = 1, n = min(ε + 4, 1.25 ε)). An
    ``alpha`` above an attack's ε is capped at that ε (Fig. 5 sweeps ε)."""

    eps: float = Field(default=5.0, gt=0, le=255, allow_inf_nan=False)
    methods: list[MethodName] = Field(default_factory=lambda: ["fgsm", "ifgsm", "mifgsm"], min_length=1)
    options: MethodOptionTable = Field(default_factory=dict, description="per-method options, e.g. {mifgsm: {mu: 0.5}}")
    metric: MetricName = "euclidean"
    batch_size: PositiveInt = 32

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved_options(data, "attack")

    def spec(self, method: str, eps: float | None = None, seed: int = 0) -> AttackSpec:
        """The AttackSpec of ``method`` at ``eps`` (default: this section's ε) with its options."""
        return spec_from_table(method, self.eps if eps is None else eps, seed, self.options, cap_alpha=True)


class Fig1Section(StrictModel):
    examples: PositiveInt = 3
    model: str | None = None


class Fig4Section(StrictModel):
    probes: PositiveInt = 2
    top_k: PositiveInt = 10
    model: str | None = None
    method: MethodName = "ifgsm"


class Fig5Section(StrictModel):
    epsilons: list[Annotated[float, Field(gt=0, le=255)]] = Field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0, 8.0], min_length=1)
    methods: list[MethodName] = Field(default_factory=lambda: ["fgsm", "ifgsm"], min_length=1)
    metrics: list[MetricName] = Field(default_factory=lambda: ["euclidean", "xqda"], min_length=1)
    model: str | None = None


class SingleModelSection(StrictModel):
    model: str | None = None
    method: MethodName = "ifgsm"


class Table4Section(StrictModel):
    """Table 4 (leave-one-out ensemble attacks)."""

    methods: list[MethodName] | None = Field(
        default=None,
        min_length=1,
        description="attack methods of the ensemble attacks, a subset of attack.methods (each row is compared with Table 2's "
        "single-model transfers of the same method); default: every one of attack.methods",
    )


class Table5Settings(StrictModel):
    """How Table 5's metric-preserving models are made and attacked.

    ``method`` is the attack of the adversarial galleries Table 5 tests (one per base model,
    with the benchmark's ε, α, μ); the other sections are those of
    :class:`~metricattack.defense.config.DefenseConfig`.
    """

    method: MethodName = "ifgsm"
    training_attack: TrainingSetAttack = TrainingSetAttack()
    retrain: RetrainSection = RetrainSection()
    adaptive: AdaptiveSection = AdaptiveSection()
    adaptive_normal: bool = Field(default=True, description="also attack the normal models white-box, for comparison")


class Table5Section(StrictModel):
    """Table 5 (metric-preserving models)."""

    enabled: bool = True
    models: list[str] | None = Field(default=None, description="base models to defend (default: all)")
    settings: Table5Settings = Table5Settings()


Side = Literal["query", "gallery"]
SIDES: tuple[Side, ...] = ("query", "gallery")


class ZooModel(ModelSection):
    """A model of the model zoo: trained from a recipe (e.g. ``model.backbone: timm:vit_small_patch16_224``),
    a checkpoint, or a model from elsewhere (``torchreid:osnet_x1_0`` + weights, ``python:MODULE:FUNCTION``);
    every zoo model is tested and attacked (``test_only`` does not apply)."""

    paper: str | None = Field(
        default=None, description="the paper that introduced it (default: the format's paper for torchreid:, else the description)"
    )

    @model_validator(mode="after")
    def _attacked(self) -> ZooModel:
        if self.test_only:
            raise ValueError(f"zoo model {self.name!r}: test_only does not apply (every zoo model is attacked)")
        return self


class ZooRobustnessSection(StrictModel):
    """The robustness protocol on each zoo model (``metricattack robustness``, the robustness
    leaderboard's evaluation): its robust mAP with the bootstrap interval is a column of the zoo table."""

    enabled: bool = True
    version: ProtocolVersion = Field("fast", description="protocol version: standard, fast (default) or smoke (tests)")
    eps: float = Field(default=8.0, ge=1, le=255, description="headline ε in 0..255 units")
    queries: PositiveInt | None = Field(
        default=None, description="evaluate this many queries, evenly spaced over the query list; default: every query"
    )
    batch_size: PositiveInt = 32


class ZooSection(StrictModel):
    """The model zoo: each model clean and under white-box attack on the query side and on the gallery
    side. The attacks are chosen here only (``methods`` × ``sides`` × ``epsilons``, with the benchmark's
    α, steps and μ); each cell reports the lowest mAP over ``methods`` (the strongest attack). Beside
    them, each model's robust mAP under the robustness protocol (``robustness``)."""

    models: list[ZooModel] = Field(default_factory=list, description="the zoo (empty: the experiment does not run)")
    methods: list[MethodName] = Field(default_factory=lambda: ["ifgsm", "pgd"], min_length=1)
    sides: list[Side] = Field(default_factory=lambda: list(SIDES), min_length=1)
    epsilons: list[Annotated[float, Field(gt=0, le=255)]] = Field(default_factory=lambda: [5.0, 8.0], min_length=1)
    robustness: ZooRobustnessSection = ZooRobustnessSection()


class BeyondSection(StrictModel):
    """The attacks beyond the paper (experiment ``beyond``): each method of ``methods`` against every
    attacked model at each ε, on the gallery (the paper's non-targeted attack), tested white-box and on
    every other model (black-box), with the benchmark's α, steps and per-method options
    (``attack.options.<method>``); mAP with bootstrap intervals (``confidence``)."""

    methods: list[MethodName] = Field(default_factory=list, description="attack methods (empty: the experiment does not run)")
    epsilons: list[Annotated[float, Field(gt=0, le=255)]] = Field(default_factory=lambda: [5.0, 8.0], min_length=1)


class DefensesSection(MethodSections):
    """The defense leaderboard (experiment ``defenses``): one base model, undefended, defended by
    the paper's metric-preserving network (Table 5's model and settings) and by each method of
    ``methods``, every model evaluated adaptively at each ε (robust mAP with intervals, masking
    flags) with its training cost. The method sections (``pgd_at``, ``act``, ...) are those of
    :class:`~metricattack.defense.config.DefenseConfig`; ``retrain`` and ``batch`` apply to every
    method but the metric-preserving one (``batch``: the training batches, default the base
    model's recipe's; ACT and HM need ``sampler: pk``)."""

    enabled: bool = True
    model: str | None = Field(default=None, description="the base model (default: the first attacked model)")
    methods: list[DefenseName] = Field(default_factory=lambda: ["metric-preserving", "pgd-at"], min_length=1)
    retrain: RetrainSection = RetrainSection()
    batch: BatchSection | None = None
    epsilons: list[Annotated[float, Field(ge=1, le=255)]] = Field(default_factory=lambda: [5.0, 8.0], min_length=1)
    version: ProtocolVersion = Field(
        "fast", description="robustness protocol version of the adaptive evaluation (standard, fast; smoke: tests)"
    )
    batch_size: PositiveInt = Field(default=64, description="attack batch size of the robust evaluation")


class RobustnessSection(StrictModel):
    """The robustness leaderboard (``metricattack robustness``'s protocol on the run's models)."""

    enabled: bool = Field(
        default=False, description="off unless a config turns it on: the standard protocol costs hours per model on a CPU"
    )
    version: Annotated[str, AfterValidator(VERSIONS.check)] = Field(
        default="standard", description="protocol version: standard, fast or smoke"
    )
    eps: float = Field(default=8.0, ge=1, le=255, description="headline ε in 0..255 units")
    models: list[str] | None = Field(
        default=None, description="models to evaluate (default: every model of the run, defended ones included)"
    )
    queries: PositiveInt | None = Field(
        default=None,
        description="evaluate this many queries, evenly spaced over the query list (a cheap demo); default: every query",
    )
    batch_size: PositiveInt = 32


class ExperimentsSection(StrictModel):
    """Which experiments run; ``only`` (or ``--only``) restricts them to a subset."""

    only: list[str] | None = None
    fig1: Fig1Section = Fig1Section()
    fig4: Fig4Section = Fig4Section()
    fig5: Fig5Section = Fig5Section()
    classification: SingleModelSection = SingleModelSection()
    targeted: SingleModelSection = SingleModelSection()
    table4: Table4Section = Table4Section()
    table5: Table5Section = Table5Section()
    zoo: ZooSection = ZooSection()
    beyond: BeyondSection = BeyondSection()
    defenses: DefensesSection = DefensesSection()
    robustness: RobustnessSection = RobustnessSection()
    table2_title: str = "Table 2"


class LearnedMetricsSection(StrictModel):
    """How the learned metrics (XQDA, KISSME) are fitted on each model's training features."""

    cross_camera: bool = Field(
        default=True,
        description="fit on pairs of images from different cameras only: XQDA's cross-view pairs (Liao et al., CVPR 2015); "
        "false: every same-identity pair (benchmarks/RESULTS.md compares both)",
    )


class ConfidenceSection(StrictModel):
    """The seeded bootstrap over queries behind the findings' intervals (docs/results-schema.md)."""

    resamples: PositiveInt = Field(default=1000, description="bootstrap resamples")
    level: float = Field(default=0.95, gt=0, lt=1, description="coverage of the percentile interval")
    seed: int = Field(default=0, description="seeds the resampling (the same run gives the same intervals)")


class BenchmarkConfig(DefaultComputeUnrecorded):
    name: str = "benchmark"
    seed: int = 0
    device: str = "cpu"
    progress: bool = Field(
        default=True,
        description="progress bars on a terminal (stage groups, each model's epochs with its recipe's progress, each attack's "
        "batches); false: the information lines instead, as when stderr is not a terminal (metricattack.progress)",
    )
    dataset: DatasetSection
    models: list[ModelSection] = Field(min_length=1)
    evaluation: EvaluationSection = EvaluationSection()
    attack: AttackSection = AttackSection()
    experiments: ExperimentsSection = ExperimentsSection()
    learned_metrics: LearnedMetricsSection = LearnedMetricsSection()
    confidence: ConfidenceSection = ConfidenceSection()
    compute: Compute = Field(
        default=Compute(),
        description="precision (fp32 / bf16 / fp16), channels_last, cudnn_benchmark of every model of the run, trained or "
        "loaded (metricattack.compute); in stage keys and results.json's config when not the default",
    )

    @model_validator(mode="after")
    def _check(self) -> BenchmarkConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for m in self.models:
            if m.train is not None and not m.train.compute.is_default:
                raise ValueError(
                    f"models.{m.name}.train.compute: set compute at the top level of a benchmark config (it applies to every model)"
                )
        zoo = [m.name for m in self.experiments.zoo.models]
        if len(set(zoo)) != len(zoo) or set(zoo) & set(names):
            raise ValueError(f"experiments.zoo.models: names must be unique and differ from the base models' {names}, got {zoo}")
        attacked = self.attacked_models()
        if not attacked:
            raise ValueError(f"every model is test_only ({names}); at least one model must be attacked")
        for section in ("fig1", "fig4", "fig5", "classification", "targeted"):
            chosen = getattr(self.experiments, section).model
            if chosen is not None and chosen not in attacked:
                raise ValueError(f"experiments.{section}.model {chosen!r} is not one of the attacked (not test_only) models {attacked}")
        lists: dict[str, Sequence[str | float]] = {
            "attack.methods": self.attack.methods,
            "experiments.table4.methods": self.experiments.table4.methods or [],
            "experiments.fig5.methods": self.experiments.fig5.methods,
            "experiments.fig5.metrics": self.experiments.fig5.metrics,
            "experiments.fig5.epsilons": self.experiments.fig5.epsilons,
            "experiments.zoo.methods": self.experiments.zoo.methods,
            "experiments.zoo.sides": self.experiments.zoo.sides,
            "experiments.zoo.epsilons": self.experiments.zoo.epsilons,
            "experiments.defenses.methods": self.experiments.defenses.methods,
            "experiments.defenses.epsilons": self.experiments.defenses.epsilons,
        }
        for where, values in lists.items():
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"{where} lists {', '.join(repeated)} more than once (each would be attacked and reported twice)")
        outside = [m for m in self.experiments.table4.methods or [] if m not in self.attack.methods]
        if outside:
            raise ValueError(
                f"experiments.table4.methods: {outside} are not in attack.methods {self.attack.methods} "
                "(Table 4 compares each ensemble row with Table 2's single-model transfers of the same method)"
            )
        for chosen in self.experiments.table5.models or []:
            if chosen not in attacked:
                raise ValueError(f"experiments.table5.models: {chosen!r} is not one of the attacked (not test_only) models {attacked}")
        if "table5" in self.selected() and self.experiments.table5.enabled:
            given = [m.name for m in self.models if m.name in self.defended_models() and m.train is None]
            if given:
                raise ValueError(
                    f"Table 5 retrains its models with their recipe, but {given} are given as checkpoints or models from elsewhere; "
                    "list the others in experiments.table5.models or disable it (experiments.table5.enabled: false)"
                )
        if self.experiments.only is not None and not self.experiments.only:
            raise ValueError(
                f"experiments.only is empty, so no experiment would run; list some of {', '.join(EXPERIMENTS)} or leave it out to run all"
            )
        if "defenses" in self.selected() and self.experiments.defenses.enabled:
            self._check_defenses(attacked)
        defended = [f"{m}#M" for m in self.defended_models()] if self.experiments.table5.enabled else []
        for chosen in self.experiments.robustness.models or []:
            if chosen not in names + defended:
                raise ValueError(f"experiments.robustness.models: {chosen!r} is not a model of the run ({', '.join(names + defended)})")
        for exp in self.experiments.only or []:
            if exp not in EXPERIMENTS:
                raise ValueError(f"experiments.only: unknown experiment {exp!r}; available: {', '.join(EXPERIMENTS)}")
        _refuse_same_models(self.models)
        return self

    def _check_defenses(self, attacked: list[str]) -> None:
        section = self.experiments.defenses
        base = self.defense_base()
        if base not in attacked:
            raise ValueError(f"experiments.defenses.model: {base!r} is not one of the attacked (not test_only) models {attacked}")
        entry = next(m for m in self.models if m.name == base)
        if entry.train is None:
            raise ValueError(f"the defense leaderboard retrains or fine-tunes {base} with its recipe, but it is given without one")
        recipe = entry.train.model_copy(update={"batch": section.batch}) if section.batch is not None else entry.train
        for method in section.methods:
            try:
                check_batches(method, recipe)
            except ConfigError as exc:
                raise ValueError(f"experiments.defenses: {exc} (experiments.defenses.batch sets the batches of the defenses)") from None

    def defense_base(self) -> str:
        """The base model of the defense leaderboard."""
        return self.experiments.defenses.model or self.attacked_models()[0]

    def model_names(self) -> list[str]:
        """Every model (each is tested on every adversarial gallery), in config order."""
        return [m.name for m in self.models]

    def attacked_models(self) -> list[str]:
        """The base models: the ones attacks are made against (all but the ``test_only`` ones)."""
        return [m.name for m in self.models if not m.test_only]

    def test_only_models(self) -> list[str]:
        """The ``test_only`` models (the paper's HACNN and Mancs)."""
        return [m.name for m in self.models if m.test_only]

    def chosen_model(self, section: str) -> str:
        """The model an experiment section attacks (its ``model`` or the first base model)."""
        chosen: str | None = getattr(self.experiments, section).model
        return chosen or self.attacked_models()[0]

    def defended_models(self) -> list[str]:
        """The base models Table 5 defends."""
        return self.experiments.table5.models or self.attacked_models()

    def ensemble_methods(self) -> list[str]:
        """The attack methods of Table 4's ensemble attacks (``experiments.table4.methods`` or every one)."""
        return self.experiments.table4.methods or self.attack.methods

    def selected(self) -> list[str]:
        """The experiments this run computes, in paper order."""
        only = self.experiments.only
        return [e for e in EXPERIMENTS if only is None or e in only]


def model_identity(model: ModelSection) -> tuple[str, ...]:
    """What makes two entries the same model: a checkpoint's SHA-256, a model spec with its weights'
    SHA-256, or a training recipe (every field that reaches the trained bytes, seed included)."""
    if model.checkpoint is not None:
        return ("checkpoint", sha256_file(model.checkpoint))
    if model.model is not None:
        return ("model", model.model, sha256_file(model.weights) if model.weights is not None else "")
    return ("train", json.dumps(model.stage_config(), sort_keys=True))


def _refuse_same_models(models: Sequence[ModelSection]) -> None:
    """ValueError when two entries are one model: an attack on one would be reported as a black-box
    transfer to the other (a white-box attack in truth)."""
    seen: dict[tuple[str, ...], str] = {}
    for model in models:
        identity = model_identity(model)
        if identity in seen:
            what = {"checkpoint": f"the same checkpoint (SHA-256 {identity[1][:16]}...)", "model": "the same model and weights"}
            raise ValueError(
                f"models {seen[identity]!r} and {model.name!r} are {what.get(identity[0], 'the same training recipe and seed')}, "
                "so an attack on one would be reported as a black-box transfer to the other; list the model once"
            )
        seen[identity] = model.name


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative paths in the raw config absolute against ``base`` (the file's folder)."""
    dataset = data.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("root"), str):
        dataset["root"] = str((base / dataset["root"]).resolve())
    experiments = data.get("experiments")
    zoo = experiments.get("zoo") if isinstance(experiments, dict) else None
    zoo_models = zoo.get("models") if isinstance(zoo, dict) else None
    for model in [*(data.get("models") or []), *(zoo_models if isinstance(zoo_models, list) else [])]:
        if isinstance(model, dict):
            for key in ("train_config", "checkpoint", "weights"):
                if isinstance(model.get(key), str):
                    model[key] = str((base / model[key]).resolve())
    return data


def load_benchmark_config(path: str | Path, overrides: Sequence[str] = (), only: Sequence[str] = ()) -> BenchmarkConfig:
    """Read ``path``, apply ``overrides`` and the ``--only`` list, and validate.

    Paths written in the file are relative to the file's folder; paths given as overrides
    are used as given (relative to the working directory).
    """
    path = Path(path)
    data = _resolve_paths(read_yaml(path), path.resolve().parent)  # file paths: relative to the file
    data = apply_overrides(data, overrides)  # --set paths: relative to the working directory
    if only:
        unknown = [o for o in only if o not in EXPERIMENTS]
        if unknown:
            raise ConfigError(f"--only {','.join(unknown)}: unknown experiment; available: {', '.join(EXPERIMENTS)}")
        data.setdefault("experiments", {})["only"] = list(only)
    return validate(BenchmarkConfig, data, str(path))
