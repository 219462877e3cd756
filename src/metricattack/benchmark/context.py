"""What an experiment reads: the run's config, dataset, models, features and metrics.

A :class:`RunContext` is filled by the stages of :mod:`.resources` (each cached on disk)
and handed to every experiment, which computes its section of ``results.json`` from it.
Distances are ``metric.pairwise`` (squared Euclidean for ``euclidean``); rankings follow
the evaluation protocol of :func:`~metricattack.evaluation.ranking.evaluate_distances`,
in percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..attacks.threats import THREATS
from ..data.types import JUNK_PID, ImageRecord, ReIDDataset
from ..errors import MetricAttackError
from ..evaluation.chance import dataset_chance
from ..evaluation.ranking import RankingResult, evaluate_distances
from ..metrics.distance import Metric, build_metric
from ..stages import StageCache
from .evidence import ap_key
from .jobs import AttackJob, is_learned
from .schema import Ranking

if TYPE_CHECKING:
    from .config import BenchmarkConfig


@dataclass(frozen=True)
class ModelRecord:
    """A model of the run: its checkpoint (path, SHA-256), how it was described and trained (the wall and
    CPU seconds of the stage that made it); a model
    from elsewhere has no checkpoint but its ``source`` (the :class:`~metricattack.models.sources.LoadedModel`
    record: spec, weights, module file) and the SHA-256 of its weights (or module file)."""

    checkpoint: str | None
    sha256: str | None
    description: str
    train_seed: int | None
    train_seconds: float | None
    train_cpu_seconds: float | None = None
    source: dict[str, Any] | None = None

    def attack_record(self, name: str) -> dict[str, Any]:
        """How the attacks' records (``attack_results.json``) name the model."""
        if self.source is not None:
            return {"name": name, **self.source}
        return {"name": name, "checkpoint": self.checkpoint, "sha256": self.sha256}


@dataclass(frozen=True)
class Features:
    """A model's clean features ``[N, D]`` (float32, CPU) of the query, gallery and (if fitted on) train split."""

    query: torch.Tensor
    gallery: torch.Tensor
    train: torch.Tensor | None = None


@dataclass(frozen=True)
class AttackOutput:
    """An adversarial gallery on disk (a dataset in ``dataset_dir``) and its stage key."""

    dataset_dir: str
    linf: float | None
    key: str


def percent(result: RankingResult) -> Ranking:
    """The results' view of a ranking: rank-1/5/10, mAP, mINP in percent."""
    return Ranking(
        rank1=100 * result.cmc[1],
        rank5=100 * result.cmc[5],
        rank10=100 * result.cmc[10],
        mAP=100 * result.mAP,
        mINP=100 * result.mINP,
        num_queries=result.num_queries,
    )


@dataclass
class RunContext:
    """The resources of one benchmark run, filled stage by stage (see :mod:`.resources`)."""

    cfg: BenchmarkConfig
    cache: StageCache
    device: str
    dataset: ReIDDataset
    dataset_root: str
    fingerprint: str
    keys: dict[str, str] = field(default_factory=dict)  # resource name -> stage key (e.g. "model:B1")
    models: dict[str, nn.Module] = field(default_factory=dict)  # ReIDNet, or a model from elsewhere
    records: dict[str, ModelRecord] = field(default_factory=dict)
    clean: dict[str, Features] = field(default_factory=dict)
    metrics: dict[tuple[str, str], Metric] = field(default_factory=dict)  # (model, metric name)
    attacks: dict[AttackJob, AttackOutput] = field(default_factory=dict)
    adversarial: dict[tuple[AttackJob, str], torch.Tensor] = field(default_factory=dict)  # (job, tested) -> its attacked split [N, D]
    evidence: dict[str, np.ndarray] = field(default_factory=dict)  # what the findings bootstrap (see .evidence)
    _results: dict[tuple[AttackJob | None, str, str], RankingResult] = field(default_factory=dict)
    _adv_records: dict[AttackJob, list[ImageRecord]] = field(default_factory=dict)

    # ----------------------------------------------------------------- features and metrics
    def metric(self, model: str, name: str) -> Metric:
        """The metric ``name`` for ``model``'s features (learned metrics are fitted per model)."""
        if (model, name) not in self.metrics:
            if is_learned(name):
                raise MetricAttackError(f"the {name} metric of model {model} was not fitted in this run")
            self.metrics[(model, name)] = build_metric(name)
        return self.metrics[(model, name)]

    def gallery(self, tested: str, job: AttackJob | None = None) -> torch.Tensor:
        """``tested``'s gallery features ``[G, D]``: clean (``job`` None or a query-side job) or of ``job``'s adversarial gallery."""
        return self.clean[tested].gallery if job is None or job.split != "gallery" else self.adversarial[(job, tested)]

    def query(self, tested: str, job: AttackJob | None = None) -> torch.Tensor:
        """``tested``'s query features ``[Q, D]``: clean, or of ``job``'s adversarial queries (a query-side job)."""
        return self.adversarial[(job, tested)] if job is not None and job.split == "query" else self.clean[tested].query

    def distances(self, model: str, gallery: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
        """``[Q, G]`` distances between ``model``'s clean query features and ``gallery``."""
        with torch.no_grad():
            return self.metric(model, metric).pairwise(self.clean[model].query, gallery).float()

    def rank(self, dist: torch.Tensor) -> RankingResult:
        """Evaluate ``dist [Q, G]`` on the run's test split (per-query APs included)."""
        q_pids, q_cams = ids(self.dataset.query)
        g_pids, g_cams = ids(self.dataset.gallery)
        return evaluate_distances(dist, q_pids, g_pids, q_cams, g_cams, ap=self.cfg.evaluation.ap)

    def result(self, tested: str, job: AttackJob | None = None, metric: str = "euclidean") -> RankingResult:
        """``tested`` on the clean test split (``job`` None) or with ``job``'s adversarial gallery (or queries), with ``metric`` (memoised)."""
        key = (job, tested, metric)
        if key not in self._results:
            with torch.no_grad():
                dist = self.metric(tested, metric).pairwise(self.query(tested, job), self.gallery(tested, job)).float()
            self._results[key] = self.rank(dist)
            self.evidence[ap_key(tested, None if job is None else job.id, metric)] = self._results[key].per_query_ap
        return self._results[key]

    def evaluate(self, tested: str, job: AttackJob | None = None, metric: str = "euclidean") -> Ranking:
        """:meth:`result` in percent."""
        return percent(self.result(tested, job, metric))

    def chance(self) -> Ranking:
        """Expected accuracy of a uniformly random ranking of the test split (the attacks' floor)."""
        return percent(dataset_chance(self.dataset, self.cfg.evaluation.ap))

    # ----------------------------------------------------------------- ranking lists
    def top(self, model: str, gallery: torch.Tensor, query_index: int, k: int) -> list[int]:
        """Indices of the ``k`` gallery items closest to query ``query_index`` (junk excluded, ties by index)."""
        with torch.no_grad():
            d = self.metric(model, "euclidean").pairwise(self.clean[model].query[query_index : query_index + 1], gallery)[0].float()
        g_pids, _ = ids(self.dataset.gallery)
        d[torch.from_numpy(g_pids == JUNK_PID)] = float("inf")
        return torch.argsort(d, stable=True)[:k].tolist()

    def well_ranked_probes(self, model: str) -> list[int]:
        """Queries whose clean top-1 (junk excluded) is a true match for ``model``."""
        d = self.distances(model, self.clean[model].gallery)
        g_pids, _ = ids(self.dataset.gallery)
        d[:, torch.from_numpy(g_pids == JUNK_PID)] = float("inf")
        first = torch.argmin(d, dim=1).tolist()
        return [qi for qi, q in enumerate(self.dataset.query) if q.pid > 0 and g_pids[first[qi]] == q.pid]

    def targets(self) -> torch.Tensor:
        """``[G]`` target probe of each gallery image in the targeted attack (−1: not attacked; the attack's seeded rule)."""
        targets = THREATS.get("targeted").select(self.dataset, self.cfg.seed).targets
        assert targets is not None  # the targeted threat model assigns targets
        return torch.as_tensor(targets)

    def attacked(self, threat: str) -> torch.Tensor:
        """``[N]`` bool over the attacked split: the images the threat model ``threat`` perturbs (its own rule)."""
        return THREATS.get(threat).select(self.dataset, self.cfg.seed).active

    # ----------------------------------------------------------------- adversarial images
    def adversarial_records(self, job: AttackJob) -> list[ImageRecord]:
        """The records of ``job``'s attacked split (gallery, or query) in the clean split's order (matched by file name)."""
        if job not in self._adv_records:
            from ..data.layouts import load_dataset

            adv = {r.path.stem: r for r in load_dataset("folder", self.attacks[job].dataset_dir).split(job.split)}
            clean = self.dataset.split(job.split)
            missing = [r.path.name for r in clean if r.path.stem not in adv]
            if missing:
                raise MetricAttackError(f"adversarial set {job.id} lacks {job.split} images {missing[:3]} (of {len(missing)})")
            self._adv_records[job] = [adv[r.path.stem] for r in clean]
        return self._adv_records[job]

    def adversarial_gallery(self, job: AttackJob) -> list[ImageRecord]:
        """The adversarial gallery records of a gallery-side ``job`` in the clean gallery's order."""
        if job.split != "gallery":
            raise MetricAttackError(f"adversarial set {job.id} perturbs the {job.split}, not the gallery")
        return self.adversarial_records(job)


def ids(records: tuple[ImageRecord, ...] | list[ImageRecord]) -> tuple[np.ndarray, np.ndarray]:
    """``(pids [N], camids [N])`` of ``records``."""
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])
