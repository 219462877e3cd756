"""``run_benchmark``: dataset → models → features → adversarial sets → results → outputs.

The selected experiments (:mod:`.experiments`) say what they need; the stages of
:mod:`.resources` make it (cached, resumable, one progress bar per group), each experiment
computes its section of ``results.json`` from the :class:`~.context.RunContext`, and tables,
figures and ``report.html`` are always redrawn from the results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, environment_versions, sha256_file, thread_settings
from ..progress import bars_allowed
from ..stages import read_stage_log
from . import resources
from .config import BenchmarkConfig
from .context import RunContext
from .evidence import Bootstrap, save_evidence
from .experiments import EXPERIMENTS, Figure
from .findings import compute_findings, compute_further_findings
from .jobs import AttackJob, Needs
from .report import write_report
from .schema import AttackSetting, DatasetInfo, EvidenceInfo, ModelInfo, Provenance, Results, Threads
from .tables import Table

EVIDENCE_FILE = "evidence.safetensors"


def _model_info(ctx: RunContext, name: str) -> ModelInfo:
    record = ctx.records[name]
    spec_of = getattr(ctx.models[name], "spec", None)
    spec = spec_of() if callable(spec_of) else {}  # a python: model has none
    return ModelInfo(
        name=name,
        description=record.description,
        checkpoint=record.checkpoint,
        checkpoint_sha256=record.sha256,
        source=record.source,
        spec=json.loads(json.dumps(spec, default=str)),
        train_seed=record.train_seed,
        train_seconds=record.train_seconds,
    )


def _attack_setting(ctx: RunContext, job: AttackJob) -> AttackSetting:
    spec = ctx.cfg.attack.spec(job.method, job.epsilon, ctx.cfg.seed)
    return AttackSetting(
        id=job.id,
        sources=list(job.sources),
        threat_model=job.threat,
        mode=job.mode,
        method=job.method,
        epsilon=job.epsilon,
        options=spec.resolved()["options"],
        metric=job.metric,
        seed=ctx.cfg.seed,
        linf=ctx.attacks[job].linf,
        dataset_dir=ctx.attacks[job].dataset_dir,
    )


def run_benchmark(cfg: BenchmarkConfig, out: Path, config_path: str = "") -> Results:
    """Run (or resume) every selected experiment of ``cfg`` into ``out``; returns the results."""
    start = time.perf_counter()
    out = Path(out)
    selected = [EXPERIMENTS.get(name) for name in cfg.selected()]
    needs = Needs()
    for experiment in selected:
        needs.merge(experiment.needs(cfg))
    resources.check_jobs(cfg, needs.jobs)  # every method x threat model, before any work

    # every stage key records a non-default compute; bars where the process allows them (metricattack.progress)
    with cfg.compute.activate(), bars_allowed(cfg.progress):
        return _run(cfg, out, config_path, start, selected, needs)


def _run(cfg: BenchmarkConfig, out: Path, config_path: str, start: float, selected: list[Any], needs: Needs) -> Results:
    """:func:`run_benchmark` once the run's compute is active."""
    log_before = len(read_stage_log(out))
    ctx = resources.open_run(cfg, out)
    resources.train_models(ctx)
    resources.extract_clean(ctx, cfg.model_names(), needs.train_features)
    resources.fit_metrics(ctx, needs.learned)
    resources.run_attacks(ctx, needs.jobs)
    resources.extract_adversarial(ctx, needs.evaluations)
    for experiment in selected:
        experiment.prepare(ctx)
    sections = {experiment.name: experiment.compute(ctx) for experiment in selected}

    stage_seconds: dict[str, float] = {}
    for entry in read_stage_log(out)[log_before:]:
        stage_seconds[entry["kind"]] = stage_seconds.get(entry["kind"], 0.0) + entry["seconds"]
    provenance = Provenance(
        config=cfg.model_dump(mode="json"),
        config_path=str(config_path),
        seeds={
            "run": cfg.seed,
            "dataset": cfg.dataset.synthetic.seed if cfg.dataset.synthetic is not None else None,
            "models": {m.name: m.train.seed if m.train is not None else None for m in cfg.models},
        },
        versions=environment_versions(),
        threads=Threads.model_validate(thread_settings()),
        ap_convention=cfg.evaluation.ap,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        experiments=cfg.selected(),
        stage_seconds={k: round(v, 3) for k, v in stage_seconds.items()},
        wall_seconds=0.0,
    )
    save_evidence(out / EVIDENCE_FILE, ctx.evidence)
    c = cfg.confidence
    evidence = EvidenceInfo(
        file=EVIDENCE_FILE, sha256=sha256_file(out / EVIDENCE_FILE), resamples=c.resamples, seed=c.seed, confidence=c.level
    )
    results = Results(
        provenance=provenance,
        evidence=evidence,
        dataset=DatasetInfo(
            name=cfg.dataset.name,
            root=ctx.dataset_root,
            fingerprint=ctx.fingerprint,
            counts=resources.split_counts(ctx.dataset),
            chance=ctx.chance(),
        ),
        models=[_model_info(ctx, n) for n in ctx.models],
        attacks=[_attack_setting(ctx, j) for j in needs.jobs],
        findings=[],
        **sections,
    )
    boot = Bootstrap(ctx.evidence, cfg.confidence.resamples, cfg.confidence.seed, cfg.confidence.level)
    results = results.model_copy(
        update={"findings": compute_findings(results, boot), "further_findings": compute_further_findings(results, boot)}
    )
    results.provenance.wall_seconds = round(time.perf_counter() - start, 3)
    write_outputs(results, out)
    return results


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete outputs of earlier runs (e.g. before an ``--only`` run) that this run did not write."""
    for path in folder.glob("*"):
        if path.is_file() and path.name not in keep:
            path.unlink()


def write_outputs(results: Results, out: Path) -> dict[str, Path]:
    """Write results.json (validated), every experiment's tables and figures, and report.html into ``out``."""
    data = json.loads(results.model_dump_json())
    Results.model_validate(data)
    atomic_write_json(out / "results.json", data)
    tables: dict[str, list[Table]] = {e: EXPERIMENTS.get(e).tables(results) for e in EXPERIMENTS}
    figures: dict[str, list[Figure]] = {e: EXPERIMENTS.get(e).figures(results, out / "figures") for e in EXPERIMENTS}
    written = [t for ts in tables.values() for t in ts]
    for t in written:
        t.write(out / "tables")
    _remove_stale(out / "tables", {p for t in written for p in (f"{t.name}.md", f"{t.name}.csv")})
    _remove_stale(out / "figures", {f.path.name for fs in figures.values() for f in fs})
    report = write_report(results, tables, figures, out / "report.html")
    return {
        "results": out / "results.json",
        "report": report,
        "tables": out / "tables",
        "figures": out / "figures",
        **{f"table:{t.name}": out / "tables" / f"{t.name}.md" for t in written},
    }
