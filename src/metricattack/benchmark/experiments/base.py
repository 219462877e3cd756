"""What every experiment is: what it needs, how it computes its results section, how it renders.

An experiment (one paper table or figure) is a subclass of :class:`Experiment` in a module of
this package that sets ``EXPERIMENT = TheExperiment()``; its ``name`` is the field of
:class:`~metricattack.benchmark.schema.Results` its section fills. The runner merges the
:meth:`~Experiment.needs` of the selected experiments, runs the stages, calls
:meth:`~Experiment.prepare` (stages of the experiment's own, e.g. Table 5's defended models)
and :meth:`~Experiment.compute`; tables, figures and the report are drawn from results.json
alone with :meth:`~Experiment.tables` and :meth:`~Experiment.figures`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..jobs import Needs

if TYPE_CHECKING:
    from ..config import BenchmarkConfig
    from ..context import RunContext
    from ..schema import Results
    from ..tables import Table


@dataclass(frozen=True)
class Figure:
    """A drawn figure: ``name`` (file stem and report anchor), the PNG, its report title and caption."""

    name: str
    path: Path
    title: str
    caption: str


class Experiment(ABC):
    """One paper table or figure."""

    name: ClassVar[str]
    """The results.json section it fills (and its ``--only`` name)."""
    title: ClassVar[str]
    """Its heading in the report."""

    def needs(self, cfg: BenchmarkConfig) -> Needs:
        """Adversarial galleries, evaluations and learned metrics it reads (default: none)."""
        return Needs()

    def prepare(self, ctx: RunContext) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Run stages of its own before :meth:`compute` (default: none)."""

    @abstractmethod
    def compute(self, ctx: RunContext) -> Any:
        """Its section of results.json."""

    def tables(self, res: Results) -> list[Table]:
        """Its tables, drawn from ``res`` (default: none)."""
        return []

    def figures(self, res: Results, folder: Path) -> list[Figure]:
        """Draw its figures into ``folder`` from ``res`` (default: none)."""
        return []

    def not_run(self, res: Results) -> str | None:
        """Why its section has nothing to show (None when it has), for the report."""
        return None if getattr(res, self.name) is not None else "not run in this run (not selected)."
