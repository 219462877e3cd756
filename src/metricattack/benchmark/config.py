"""The benchmark config: which data, which base models, which attacks, which experiments.

Loaded with :func:`load_benchmark_config` (YAML + ``a.b=value`` overrides). Paths in the
file are resolved relative to the file's folder. See ``configs/quickstart.yaml`` for a
commented example and ``configs/paper/market1501.yaml`` for the paper's settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import StrictModel, apply_overrides, read_yaml, validate
from ..errors import ConfigError

Method = Literal["fgsm", "ifgsm", "mifgsm"]
EXPERIMENTS = ("table1", "table2", "table4", "table5", "fig1", "fig3", "fig4", "fig5", "classification", "targeted")


class DatasetSection(StrictModel):
    """``name: synthetic`` generates data from ``synthetic`` (SynthConfig fields); any other
    name is a layout of :func:`metricattack.data.layouts.load_dataset` read from ``root``."""

    name: str = "synthetic"
    root: Path | None = None
    synthetic: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _root_for_real_data(self) -> DatasetSection:
        if self.name != "synthetic" and self.root is None:
            raise ValueError(f"dataset.root is required for dataset {self.name!r} (the folder holding it)")
        return self


class ModelSection(StrictModel):
    """One base model: trained from ``train`` (TrainConfig fields, inline) or ``train_config``
    (a TrainConfig YAML file), or taken as is from ``checkpoint``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    train: dict[str, Any] | None = None
    train_config: Path | None = None
    checkpoint: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        given = [n for n in ("train", "train_config", "checkpoint") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"model {self.name!r} needs exactly one of train / train_config / checkpoint, got {given or 'none'}")
        return self


class EvaluationSection(StrictModel):
    ap: Literal["market", "noninterp"] = "market"
    batch_size: int = Field(64, ge=1)


class AttackSection(StrictModel):
    """Shared attack settings (paper defaults: ε = 5, α = 1, μ = 1, n = min(ε + 4, 1.25 ε))."""

    epsilon: float = Field(5.0, gt=0, le=255)
    alpha: float = Field(1.0, gt=0)
    momentum: float = Field(1.0, ge=0)
    steps: int | None = Field(None, ge=1)
    methods: list[Method] = Field(default_factory=lambda: ["fgsm", "ifgsm", "mifgsm"])
    metric: str = "euclidean"
    batch_size: int = Field(32, ge=1)


class Fig1Section(StrictModel):
    examples: int = Field(3, ge=1)
    model: str | None = None


class Fig4Section(StrictModel):
    probes: int = Field(2, ge=1)
    top_k: int = Field(10, ge=1)
    model: str | None = None
    method: Method = "ifgsm"


class Fig5Section(StrictModel):
    epsilons: list[float] = Field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0, 8.0])
    methods: list[Method] = Field(default_factory=lambda: ["fgsm", "ifgsm"])
    metrics: list[str] = Field(default_factory=lambda: ["euclidean", "xqda"])
    model: str | None = None


class SingleModelSection(StrictModel):
    model: str | None = None
    method: Method = "ifgsm"


class DefenceSection(StrictModel):
    """Table 5 (metric-preserving models); passed to the defence module when it exists."""

    enabled: bool = True
    models: list[str] | None = Field(None, description="base models to defend (default: all)")
    settings: dict[str, Any] = Field(default_factory=dict)


class ExperimentsSection(StrictModel):
    """Which experiments run; ``only`` (or ``--only``) restricts them to a subset."""

    only: list[str] | None = None
    fig1: Fig1Section = Fig1Section()
    fig4: Fig4Section = Fig4Section()
    fig5: Fig5Section = Fig5Section()
    classification: SingleModelSection = SingleModelSection()
    targeted: SingleModelSection = SingleModelSection()
    table5: DefenceSection = DefenceSection()
    table2_title: str = "Table 2"


class BenchmarkConfig(StrictModel):
    name: str = "benchmark"
    seed: int = 0
    device: str = "cpu"
    dataset: DatasetSection = DatasetSection()
    models: list[ModelSection] = Field(min_length=1)
    evaluation: EvaluationSection = EvaluationSection()
    attack: AttackSection = AttackSection()
    experiments: ExperimentsSection = ExperimentsSection()

    @model_validator(mode="after")
    def _check(self) -> BenchmarkConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for section in ("fig1", "fig4", "fig5", "classification", "targeted"):
            chosen = getattr(self.experiments, section).model
            if chosen is not None and chosen not in names:
                raise ValueError(f"experiments.{section}.model {chosen!r} is not one of the models {names}")
        for chosen in self.experiments.table5.models or []:
            if chosen not in names:
                raise ValueError(f"experiments.table5.models: {chosen!r} is not one of the models {names}")
        for exp in self.experiments.only or []:
            if exp not in EXPERIMENTS:
                raise ValueError(f"unknown experiment {exp!r} in experiments.only; expected some of {', '.join(EXPERIMENTS)}")
        return self

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def chosen_model(self, section: str) -> str:
        """The model an experiment section attacks (its ``model`` or the first model)."""
        return getattr(self.experiments, section).model or self.models[0].name

    def defended_models(self) -> list[str]:
        """The base models Table 5 defends."""
        return self.experiments.table5.models or self.model_names()

    def selected(self) -> list[str]:
        """The experiments this run computes, in paper order."""
        only = self.experiments.only
        return [e for e in EXPERIMENTS if only is None or e in only]


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative paths in the raw config absolute against ``base`` (the file's folder)."""
    dataset = data.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("root"), str):
        dataset["root"] = str((base / dataset["root"]).resolve())
    for model in data.get("models") or []:
        if isinstance(model, dict):
            for key in ("train_config", "checkpoint"):
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
            raise ConfigError(f"--only {','.join(unknown)}: unknown experiment; expected some of {', '.join(EXPERIMENTS)}")
        data.setdefault("experiments", {})["only"] = list(only)
    return validate(BenchmarkConfig, data, str(path))
