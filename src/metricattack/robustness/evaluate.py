"""Run the robustness protocol on one model and one test split: :func:`evaluate_robustness`.

Everything happens in memory: the clean query and gallery features (the one feature path,
:func:`~metricattack.evaluation.features.extract_features`), the query images, and per attack
run the adversarial queries, which are rounded to 8-bit pixels (as a saved query image would
be, inside the ε-ball) before their features are ranked against the clean gallery. Each run is
one :class:`~.cascade.RunOutcome`; with a ``records`` folder every finished run is written there
(atomically) and read back when the evaluation is started again, so a killed evaluation resumes
at its first unfinished run. Under ``torchrun`` each run's queries are split over the ranks and
their outcomes gathered on every rank, so every rank follows the same cascade.

The attacks are the registered methods (``apgd``, ``square``, and the reference attacks of the
never-weaker check at every ε: the paper's ``fgsm``, ``ifgsm``, ``mifgsm``, and ``pgd``) run by :func:`~metricattack.attacks.perturb.perturb` on the
objectives of the ``query`` and ``self`` threat models (:data:`~metricattack.attacks.threats.THREATS`),
and on :class:`~metricattack.attacks.margin.RankingMargin` for the targeted margin (one run per
hard negative identity) and Square (which stops a probe once its AP is at chance). Seeds: run
``r`` of an attack uses the seed ``protocol.seed · 1000003 + start id`` (:data:`START_IDS`), and
every method draws its randomness per image from it, so the numbers do not depend on the batch
size or the number of processes. The protocol's gallery-side figure (:mod:`.gallery`) comes last,
reported beside the headline (``RobustnessResult.gallery``, its ``gallery-never-weaker`` flag).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attacks.margin import QueryGallery, RankingMargin, hardest_negatives
from ..attacks.ops import quantize
from ..attacks.perturb import perturb
from ..attacks.problem import Objective
from ..attacks.spec import make_spec
from ..attacks.threats import THREATS, SplitFeatures
from ..compute import Compute, active, make_compute
from ..data.layouts import dataset_fingerprint
from ..data.loading import read_image
from ..data.types import ReIDDataset
from ..distributed import barrier, gather_indexed, is_main_process, shard_indices
from ..errors import MetricAttackError
from ..evaluation.checks import check_test_set
from ..evaluation.features import extract_features
from ..evaluation.ranking import APConvention
from ..io import atomic_write_json, environment_versions, sha256_json, thread_settings
from ..metrics.distance import Metric
from ..progress import Progress
from . import flags
from .cascade import CascadeResult, RunOutcome, StageLog, run_cascade, standing
from .gallery import gallery_side
from .protocol import VERSIONS, AttackStep, Protocol
from .result import Cost, DatasetRecord, Estimate, RobustnessResult, bootstrap, epsilon_result, estimate

logger = logging.getLogger(__name__)

# Start ids (the second seed of every random start): one per attack and run, the same at every ε.
START_IDS = {"apgd-metric": 0, "apgd-margin-t": 1000, "apgd-self": 2000, "sweep": 3000}
EXTRA_START = 500  # the convergence check's extra starts of an attack: its start ids + 500
IDENTITY = "run.json"  # a records folder's evaluation identity


class QueryImages:
    """The query images in [0,1], read once when first needed; batches keep one image size."""

    def __init__(self, dataset: ReIDDataset) -> None:
        self.records = dataset.query
        self._cache: dict[int, torch.Tensor] = {}

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            self._cache[index] = read_image(self.records[index].path)
        return self._cache[index]

    def batches(self, queries: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(indices [b], images [b,3,H,W])`` over ``queries`` in order, a new batch at every size change."""
        current: list[int] = []
        for q in queries.tolist():
            if current and (len(current) == batch_size or self[q].shape != self[current[0]].shape):
                yield torch.tensor(current), torch.stack([self[i] for i in current])
                current = []
            current.append(q)
        if current:
            yield torch.tensor(current), torch.stack([self[i] for i in current])


class Records:
    """Finished runs as JSON files in ``folder`` (None: kept nowhere), read back on resume.

    The folder belongs to one evaluation: :meth:`claim` records its identity (model, dataset,
    protocol, ε, metric) in :data:`IDENTITY` and refuses a folder holding another one's runs."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def claim(self, identity: dict[str, Any]) -> None:
        """Write ``identity`` (with its key) into the folder, or check it is the one being resumed."""
        if self.folder is None:
            return
        key = sha256_json(identity)
        path = self.folder / IDENTITY
        if path.is_file():
            previous = json.loads(path.read_text(encoding="utf-8"))
            if previous.get("key") != key:
                raise MetricAttackError(
                    f"{self.folder} holds the runs of an evaluation of another model, dataset or protocol; "
                    "use another folder, or delete this one to start over"
                )
        barrier()
        if is_main_process() and not path.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"key": key, **identity})
        barrier()

    def get(self, key: str, queries: np.ndarray) -> RunOutcome | None:
        if self.folder is None or not (path := self.folder / f"{key}.json").is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["queries"] != queries.tolist():
            raise MetricAttackError(f"the record {path} was made for other queries; remove the folder {self.folder} to start over")
        return RunOutcome(
            np.array(data["queries"], dtype=np.int64),
            np.array([np.nan if v is None else v for v in data["ap"]], dtype=np.float64),
            np.array([np.nan if v is None else v for v in data["hit"]], dtype=np.float64),
            data["forwards"],
            data["backwards"],
            data["zero_gradient"],
        )

    def put(self, key: str, outcome: RunOutcome) -> None:
        if self.folder is None or not is_main_process():  # every rank holds the gathered outcome; rank 0 writes it
            return
        atomic_write_json(
            self.folder / f"{key}.json",
            {
                "queries": outcome.queries.tolist(),
                "ap": [None if np.isnan(v) else float(v) for v in outcome.ap],
                "hit": [None if np.isnan(v) else float(v) for v in outcome.hit],
                "forwards": outcome.forwards,
                "backwards": outcome.backwards,
                "zero_gradient": outcome.zero_gradient,
            },
        )


@dataclass
class Setup:
    """Everything the runs share: the model, the fixed gallery, the clean query features and images."""

    model: nn.Module
    metric: Metric
    dataset: ReIDDataset
    features: SplitFeatures
    side: QueryGallery
    chance: np.ndarray
    images: QueryImages
    protocol: Protocol
    eot: int
    batch_size: int
    device: torch.device
    records: Records
    spent: list[int]  # [forwards, backwards] of every run so far, the checks' included
    bar: Progress[Any]  # one step per attack run (run or read back), the checks' included

    # ------------------------------------------------------------------ one run, sharded and recorded
    def run(
        self, key: str, eps: float, queries: np.ndarray, attack: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int, int, int]]
    ) -> RunOutcome:
        """Attack ``queries`` with ``attack(indices, images) -> (adversarial, forwards, backwards, zero gradients)``
        batch by batch (this rank's shard), rank the adversarial queries rounded to 8-bit pixels within
        ``eps``, gather, record."""
        outcome = self.records.get(key, queries)
        if outcome is None:
            self.bar.set_postfix_str(key, refresh=True)
            outcome = self._attack(key, eps, queries, attack)
            self.records.put(key, outcome)
        self.spent[0] += outcome.forwards
        self.spent[1] += outcome.backwards
        self.bar.update()
        return outcome

    def _attack(
        self, key: str, eps: float, queries: np.ndarray, attack: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int, int, int]]
    ) -> RunOutcome:
        start = time.perf_counter()
        # whole batches of the one-process batching per rank (distributed.shard_indices), so a torchrun
        # run ranks the same batches as one process does
        starts = range(0, len(queries), self.batch_size)
        owned = [np.arange(s, min(s + self.batch_size, len(queries))) for i, s in enumerate(starts) if i in shard_indices(len(starts))]
        positions = np.concatenate(owned) if owned else np.zeros(0, dtype=np.int64)
        mine = queries[positions]
        rows = []
        for indices, clean in self.images.batches(mine, self.batch_size):
            clean = clean.to(self.device)
            adversarial, forwards, backwards, zero = attack(indices, clean)
            pixels = quantize(adversarial, clean, eps).float() / 255.0
            with torch.no_grad():
                distances = self.side.distances(self.model(pixels))
            ap, hit = self.side.ap(distances, indices), self.side.first_hit(distances, indices)
            share = torch.tensor([forwards + len(indices), backwards, zero], dtype=torch.float64) / len(indices)
            rows.append(torch.cat([torch.from_numpy(np.stack([ap, hit], 1)), share.expand(len(indices), 3)], 1))
        local = torch.cat(rows) if rows else torch.zeros((0, 5), dtype=torch.float64)
        table = gather_indexed(local, torch.from_numpy(positions).long(), len(queries)).numpy()
        logger.info("%s: %d queries attacked in %.1f s", key, len(queries), time.perf_counter() - start)
        return RunOutcome(
            queries, table[:, 0], table[:, 1], int(round(table[:, 2].sum())), int(round(table[:, 3].sum())), int(round(table[:, 4].sum()))
        )

    # ------------------------------------------------------------------ the attacks
    def threat_objective(self, threat: str, objective: str) -> Objective:
        """The ``objective`` of the registered threat model ``threat`` on this model (a query-side one)."""
        model = THREATS.get(threat)
        if model.split != "query":
            raise MetricAttackError(f"the robustness protocol attacks queries, but the {threat} threat model perturbs the {model.split}")
        return model.part(
            self.model, self.metric, self.features, model.select(self.dataset, self.protocol.seed), model.objective_name(objective)
        )

    def objective(self, name: str, run: int) -> Objective:
        """The objective ``name`` of an :class:`~.protocol.AttackStep` (``run``: the target number of the targeted margin)."""
        if name == "metric":
            return self.threat_objective("query", "metric")
        if name == "self":
            return self.threat_objective("self", "metric")
        if name == "margin-targeted":
            targets = hardest_negatives(self.side, self.side.distances(self.features.query), run + 1)[:, run]
            return RankingMargin(self.model, self.side, targets=targets)
        if name == "margin":
            return RankingMargin(self.model, self.side, stop_at=self.chance)
        raise MetricAttackError(f"unknown robustness objective {name!r}")

    def attack(
        self, key: str, objective: Objective, eps: float, seed: int, method: str, **options: Any
    ) -> Callable[[np.ndarray], RunOutcome]:
        """A run of the registered ``method`` with ``options`` on ``objective`` (the queries it is given)."""
        spec = make_spec(f"robustness attack {key}", method=method, eps=eps, seed=seed, **options)

        def attack(indices: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
            result = perturb(clean, objective, spec, indices=indices)
            c = result.counts
            return result.images, int(c.forward.sum()), int(c.backward.sum()), int((c.zero_gradient > 0).sum())

        return lambda queries: self.run(key, eps, queries, attack)

    def step_run(
        self, step: AttackStep, run: int, eps: float, start_id: int, tag: str = "", steps: int | None = None
    ) -> Callable[[np.ndarray], RunOutcome]:
        """Run ``run`` of cascade ``step`` at ``eps`` (``steps`` overrides its budget, e.g. the sweep's)."""
        key = f"eps{eps:g}-{step.name}-{run}{'-' + tag if tag else ''}"
        seed = self.protocol.seed * 1_000_003 + start_id
        objective = self.objective(step.objective, run)
        budget = steps or step.steps
        if step.method == "square":
            return self.attack(key, objective, eps, seed, "square", queries=budget)
        return self.attack(key, objective, eps, seed, "apgd", steps=budget, eot=self.eot)

    def reference(self, method: str, eps: float) -> Callable[[np.ndarray], RunOutcome]:
        """A run of the paper's ``method`` (its defaults) on the metric objective."""
        return self.attack(f"eps{eps:g}-reference-{method}", self.objective("metric", 0), eps, self.protocol.seed, method)


def cascade_runs(setup: Setup, eps: float, extra: bool) -> list[tuple[str, Callable[[np.ndarray], RunOutcome]]]:
    """The protocol's cascade at ``eps`` as ``(attack, run)`` pairs; ``extra``: then the convergence check's
    extra starts, doubling every APGD attack's (one more start per start, and per target of the targeted margin)."""

    def start(step: AttackStep, r: int) -> int:
        return START_IDS.get(step.name, 0) + (0 if step.objective == "margin-targeted" else r)

    runs = [(step.name, setup.step_run(step, r, eps, start(step, r))) for step in setup.protocol.cascade for r in range(step.runs)]
    if extra:
        runs += [
            (step.name, setup.step_run(step, r, eps, start(step, r) + EXTRA_START, tag="extra"))
            for step in setup.protocol.cascade
            if step.method == "apgd"
            for r in range(step.runs)
        ]
    return runs


def evaluate_robustness(
    model: nn.Module,
    dataset: ReIDDataset,
    *,
    eps: float = 8.0,
    version: str = "standard",
    metric: Metric | None = None,
    ap: APConvention = "market",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    records: Path | None = None,
    protocol: Protocol | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> RobustnessResult:
    """Robust mAP and rank-1 of ``model`` on ``dataset`` under the protocol ``version``: the public
    ``metricattack.evaluate_robustness`` (arguments as :func:`run_protocol`'s, ``precision`` its
    ``compute``'s: ``"fp32"``, ``"bf16"`` or ``"fp16"``; per-query APs: call that)."""
    return run_protocol(
        model,
        dataset,
        eps=eps,
        version=version,
        metric=metric,
        ap=ap,
        batch_size=batch_size,
        device=device,
        records=records,
        protocol=protocol,
        progress=progress,
        compute=make_compute("evaluate_robustness", precision=precision),
    )[0]


def query_subset(dataset: ReIDDataset, count: int | None) -> ReIDDataset:
    """``dataset`` with ``count`` of its queries, evenly spaced over the query list (all when None or
    when there are not more): a cheaper evaluation that still covers every part of the list."""
    if count is None or count >= len(dataset.query):
        return dataset
    picks = np.linspace(0, len(dataset.query) - 1, count).round().astype(int)
    return dataclasses.replace(dataset, query=tuple(dataset.query[i] for i in picks))


def state_digest(model: nn.Module) -> str:
    """SHA-256 over the names and bytes of ``model``'s state dict (a model's identity when it has no checkpoint file)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_protocol(
    model: nn.Module,
    dataset: ReIDDataset,
    *,
    eps: float = 8.0,
    version: str = "standard",
    metric: Metric | None = None,
    ap: APConvention = "market",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    records: Path | None = None,
    model_record: dict[str, Any] | None = None,
    protocol: Protocol | None = None,
    progress: bool = False,
    compute: Compute | None = None,
) -> tuple[RobustnessResult, dict[str, np.ndarray]]:
    """Robust mAP and rank-1 of ``model`` on ``dataset``'s test split under the protocol ``version``,
    and the per-query evidence behind them (:func:`evidence_key` → ``[Q]``, NaN without a true match).

    Args:
        model: images ``[B,3,H,W]`` in [0,1] → features ``[B, D]`` (put in eval mode).
        dataset: the test split (query and gallery).
        eps: the headline ε (0..255 units); the version's other ε are reported too.
        version: a :data:`~.protocol.VERSIONS` name (``standard`` or ``fast``).
        metric: the distance (default squared Euclidean).
        records: folder for the finished runs (resume: a run recorded there is read back, not run
            again); refused when it holds another evaluation's runs. None keeps nothing on disk.
        model_record: how the model was loaded, recorded in the result and the records' identity
            (default: its class and :func:`state_digest`).
        protocol: a :class:`~.protocol.Protocol` to run instead of ``version``'s (tests, studies of the protocol itself).
        progress: report the progress (:mod:`metricattack.progress`: a bar on a terminal, else lines at a bounded
            rate): the clean features, then one step per attack run.
        compute: precision and GPU switches of the model (:mod:`metricattack.compute`; default: the active one), recorded
            in ``provenance`` and, when not the default, in the records' identity.
    """
    compute = compute or active()
    with compute.applied([model]):
        return _run_protocol(
            model, dataset, eps, version, metric, ap, batch_size, device, records, model_record, protocol, progress, compute
        )


def _run_protocol(
    model: nn.Module,
    dataset: ReIDDataset,
    eps: float,
    version: str,
    metric: Metric | None,
    ap: APConvention,
    batch_size: int,
    device: str | torch.device,
    records: Path | None,
    model_record: dict[str, Any] | None,
    protocol: Protocol | None,
    progress: bool,
    compute: Compute,
) -> tuple[RobustnessResult, dict[str, np.ndarray]]:
    from ..metrics.distance import EuclideanMetric

    begin = time.perf_counter()
    if eps < 1:
        raise MetricAttackError(
            f"eps {eps:g}: adversarial queries are 8-bit images, where a pixel moves in steps of 1 (0..255 units); use an eps of at least 1"
        )
    protocol = protocol or VERSIONS.get(version)
    protocol = protocol.model_copy(update={"epsilons": [float(eps), *(e for e in protocol.epsilons if e != eps)]})
    check_test_set(dataset)
    metric = metric or EuclideanMetric()
    device = torch.device(device)
    model.eval().to(device)
    with torch.no_grad():
        queries = extract_features(model, dataset.query, batch_size, device=device, progress=progress)
        gallery = extract_features(model, dataset.gallery, batch_size, device=device, progress=progress)
        change = flags.feature_change(queries, extract_features(model, dataset.query, batch_size, device=device, progress=progress))
    randomized = change > flags.RANDOM_TOLERANCE
    q, g = dataset.query, dataset.gallery
    side = QueryGallery(metric, gallery, [r.pid for r in q], [r.camid for r in q], [r.pid for r in g], [r.camid for r in g], ap)
    model_record = model_record or {"class": type(model).__qualname__, "state": state_digest(model)}
    fingerprint = dataset_fingerprint(dataset)
    store = Records(records)
    identity = {
        "model": model_record,
        "dataset": fingerprint,
        "protocol": protocol.model_dump(mode="json"),
        "metric": metric.name,
        "ap": ap,
    }
    store.claim(identity | ({"compute": compute.key()} if compute.key() else {}))
    chance = side.chance_ap()
    runs = sum(s.runs for s in protocol.cascade) * len(protocol.epsilons) + sum(s.runs for s in protocol.cascade if s.method == "apgd")
    runs += len(protocol.reference_methods) * len(protocol.epsilons) + len(protocol.sweep_epsilons)
    runs += 1 + len(protocol.gallery.reference_methods) if protocol.gallery is not None else 0  # the gallery side's attacks
    bar = Progress[Any](desc="robustness", total=runs, unit="run", report=progress)
    setup = Setup(
        model,
        metric,
        dataset,
        SplitFeatures(queries, gallery),
        side,
        chance,
        QueryImages(dataset),
        protocol,
        protocol.eot if randomized else 1,
        batch_size,
        device,
        store,
        [0, 0],
        bar,
    )
    clean_dist = side.distances(queries)
    all_queries = torch.arange(len(q))
    clean_ap, clean_hit = side.ap(clean_dist, all_queries), side.first_hit(clean_dist, all_queries)

    cascades: list[CascadeResult] = []
    for i, e in enumerate(protocol.epsilons):
        cascade = run_cascade(cascade_runs(setup, e, extra=i == 0), clean_ap, clean_hit, chance)
        bar.update(sum(not log.attacked for log in cascade.log))  # the runs left out: no query above chance
        cascades.append(cascade)
    valid = np.flatnonzero(np.isfinite(clean_ap))
    references = {
        e: {m: float(100 * np.nanmean(setup.reference(m, e)(valid).ap)) for m in protocol.reference_methods} for e in protocol.epsilons
    }
    robust = [epsilon_result(e, c, protocol, references[e]) for e, c in zip(protocol.epsilons, cascades, strict=True)]
    sweep_step = AttackStep(name="apgd-metric", method="apgd", objective="metric", steps=protocol.sweep_steps)
    sweep = {}
    for e in protocol.sweep_epsilons:
        worst = clean_ap.copy()
        todo = standing(clean_ap, chance)
        out = setup.step_run(sweep_step, 0, e, START_IDS["sweep"], tag="sweep")(todo)
        worst[todo] = np.minimum(worst[todo], out.ap)
        sweep[f"{e:g}"] = float(100 * np.nanmean(worst))
    gallery_result = None
    if protocol.gallery is not None:
        gallery_result, gallery_ap, gallery_hit = gallery_side(setup, protocol.epsilons[0], clean_dist)
    bar.close()
    boot = bootstrap(protocol, {"clean": clean_ap, "clean_hit": clean_hit})
    clean_map = estimate(boot, "clean")
    flag_list = _flags(protocol, cascades, references, sweep, clean_map, float(100 * np.nanmean(chance)), change, setup.eot)
    if gallery_result is not None:
        figure = {gallery_result.eps: gallery_result.mAP.value}
        references_g = {gallery_result.eps: gallery_result.references}
        flag_list.append(flags.never_weaker(figure, references_g, name="gallery-never-weaker"))
    cost = evaluation_cost(protocol, setup.eot, cascades, setup.spent, len(valid), len(q), time.perf_counter() - begin)
    evidence = {evidence_key("clean"): clean_ap, evidence_key("clean", hit=True): clean_hit, "chance": chance}
    for e, c in zip(protocol.epsilons, cascades, strict=True):
        evidence[evidence_key(e)], evidence[evidence_key(e, hit=True)] = c.ap, c.hit
    if gallery_result is not None:
        where = gallery_key(gallery_result.eps)
        evidence[evidence_key(where)], evidence[evidence_key(where, hit=True)] = gallery_ap, gallery_hit
    result = RobustnessResult(
        protocol=protocol,
        model=model_record,
        dataset=DatasetRecord(
            name=dataset.name,
            fingerprint=fingerprint,
            num_queries=len(q),
            num_valid_queries=len(valid),
            num_gallery=len(g),
        ),
        metric=metric.name,
        ap_convention=ap,
        clean=clean_map,
        clean_rank1=estimate(boot, "clean_hit"),
        chance_mAP=float(100 * np.nanmean(chance)),
        robust=robust,
        references=references[protocol.epsilons[0]],
        sweep=sweep,
        gallery=gallery_result,
        flags=flag_list,
        randomized=randomized,
        cost=cost,
        provenance={
            "versions": environment_versions(),
            "threads": thread_settings(),
            "compute": compute.record(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return result, evidence


def gallery_key(eps: float) -> str:
    """The :func:`evidence_key` place of the gallery-side figure at ``eps``."""
    return f"gallery-eps{eps:g}"


def evidence_key(eps: float | str, hit: bool = False) -> str:
    """Key of a per-query vector: robust AP (or rank-1 hit) at ``eps``, or ``"clean"``, or :func:`gallery_key`."""
    where = eps if isinstance(eps, str) else f"eps{eps:g}"
    return f"{'hit' if hit else 'ap'}|{where}"


def _flags(
    protocol: Protocol,
    cascades: list[CascadeResult],
    references: dict[float, dict[str, float]],
    sweep: dict[str, float],
    clean: Estimate,
    chance_map: float,
    change: float,
    eot: int,
) -> list[flags.Flag]:
    """The checks of :mod:`.flags`: never-weaker at every ε, the others from the headline cascade (its runs in
    protocol order, then the extra starts)."""
    log = cascades[0].log
    protocol_runs = sum(s.runs for s in protocol.cascade)
    square_at = next((i for i, e in enumerate(log) if protocol.step(e.attack).method == "square"), None)
    clean_map = clean.value
    before_square = log[square_at - 1].mAP_after if square_at else clean_map
    after_protocol = log[protocol_runs - 1].mAP_after
    apgd_runs = [e for e in log if protocol.step(e.attack).method == "apgd"]
    return [
        flags.never_weaker({e: c.mAP for e, c in zip(protocol.epsilons, cascades, strict=True)}, references),
        flags.eps_sweep({float(k): v for k, v in sweep.items()}, clean_map, chance_map),
        flags.convergence(after_protocol, cascades[0].mAP),
        flags.black_box(before_square, log[square_at].mAP_after)
        if square_at is not None
        else flags.Flag(name="black-box", status="not measured", summary="no Square attack in the cascade"),
        flags.zero_gradient(sum(e.zero_gradient for e in apgd_runs), sum(e.attacked for e in apgd_runs)),
        flags.randomness(change, eot),
    ]


def step_budget(step: AttackStep, eot: int) -> tuple[int, int]:
    """(forward, backward) passes of one query in a run of ``step`` at its full budget, the forward pass
    that ranks the adversarial query included (Square stops earlier once the query is at chance AP)."""
    if step.method == "square":
        return step.steps + 2, 0
    return (step.steps + 1) * eot + 1, (step.steps + 1) * eot


def evaluation_cost(
    protocol: Protocol, eot: int, cascades: list[CascadeResult], spent: list[int], valid: int, num_queries: int, seconds: float
) -> Cost:
    """Passes spent (all runs, and the cascades' alone) and what the cascades' runs would cost on every valid
    query: a run at its measured cost per attacked query, a run the cascade skipped (no query left above
    chance) at :func:`step_budget` (``eot`` gradient samples per APGD step)."""
    runs = [e for c in cascades for e in c.log]

    def per_query(e: StageLog) -> tuple[float, float]:
        return (e.forwards / e.attacked, e.backwards / e.attacked) if e.attacked else step_budget(protocol.step(e.attack), eot)

    without = [per_query(e) for e in runs]
    return Cost(
        forwards=spent[0],
        backwards=spent[1],
        per_query_forwards=spent[0] / num_queries,
        per_query_backwards=spent[1] / num_queries,
        cascade_forwards=sum(e.forwards for e in runs),
        cascade_backwards=sum(e.backwards for e in runs),
        without_cascade_forwards=sum(round(f * valid) for f, _ in without),
        without_cascade_backwards=sum(round(b * valid) for _, b in without),
        seconds=seconds,
    )
