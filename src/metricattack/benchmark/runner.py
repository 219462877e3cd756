"""``run_benchmark``: dataset → base models → features → adversarial sets → results → outputs.

Each step is a cached stage (:mod:`.stages`) run group by group, each group with its own
progress bar and ETA. Experiments then read the cached tensors and produce the sections
of ``results.json``; tables, figures and ``report.html`` are always redrawn from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..data.types import ReIDDataset
from ..errors import MetricAttackError
from ..io import atomic_write_json, environment_versions
from . import backend, defence, experiments
from .config import BenchmarkConfig, learned_metrics
from .figures import write_figures
from .findings import compute_findings, compute_further_findings
from .jobs import AttackJob, Plan, plan, single
from .report import write_report
from .schema import AttackSetting, DatasetInfo, ModelInfo, Provenance, Results
from .stages import StageCache, StageSpec, progress, read_stage_log
from .tables import write_tables

CODE_DATA = ("data",)
CODE_TRAIN = ("data", "models", "training")
CODE_FEATURES = ("data", "models", "evaluation")
CODE_ATTACK = ("data", "models", "metrics", "attacks")


class Run:
    """The resources of one run (dataset, models, features, adversarial sets), each a stage."""

    def __init__(self, cfg: BenchmarkConfig, out: Path) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.cache = StageCache(self.out)
        self.device = backend.resolve_device(cfg)
        self.keys: dict[str, str] = {}
        self.models: dict[str, torch.nn.Module] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.clean: dict[str, dict[str, torch.Tensor]] = {}
        self.metrics: dict[tuple[str, str], Any] = {}
        self.attacks: dict[AttackJob, dict[str, Any]] = {}
        self.adv_features: dict[tuple[AttackJob, str], torch.Tensor] = {}
        self.adv_datasets: dict[AttackJob, ReIDDataset] = {}
        self.adv_gallery_records: dict[AttackJob, list] = {}
        self.ds: ReIDDataset | None = None
        self.dataset_root = ""

    # ----------------------------------------------------------------- stages
    def prepare_dataset(self) -> ReIDDataset:
        section = self.cfg.dataset
        spec = StageSpec("dataset", section.name, section.model_dump(mode="json"), code=CODE_DATA)
        out = self.cache.run(spec, lambda folder: backend.dataset_work(section, folder))
        self.dataset_root = out["root"]
        self.ds = backend.open_dataset(section, out["root"])
        self.keys["dataset"] = spec.key
        self.fingerprint = backend.fingerprint(self.ds)
        return self.ds

    def check_models(self) -> None:
        """Check every recipe against the dataset before the first training starts."""
        assert self.ds is not None
        for m in self.cfg.models:
            backend.check_trainable(m, self.cfg.dataset, self.ds, self.dataset_root, self.device)

    def train_models(self) -> None:
        for m in progress(self.cfg.models, "base models"):
            config = {**m.stage_config(), "device": self.device}
            if m.checkpoint is not None:
                config["sha256"] = backend.sha256_file(m.checkpoint)
            spec = StageSpec("model", m.name, config, upstream=(self.keys["dataset"],), code=CODE_TRAIN)
            out = self.cache.run(spec, lambda folder, m=m: backend.model_work(m, self.cfg.dataset, self.dataset_root, self.device, folder))
            out["seconds"] = _stage_seconds(self.cache, spec)
            self.keys[f"model:{m.name}"] = spec.key
            self.checkpoints[m.name] = out
            self.models[m.name] = backend.load_model(out["checkpoint"], self.device)

    def extract_clean(self, names: list[str], with_train: list[str], desc: str = "clean features") -> None:
        assert self.ds is not None
        for name in progress(names, desc):
            train = name in with_train
            spec = StageSpec(
                "features",
                name,
                {"batch_size": self.cfg.evaluation.batch_size, "train": train},
                upstream=(self.keys["dataset"], self.keys[f"model:{name}"]),
                code=CODE_FEATURES,
            )
            self.cache.run(
                spec,
                lambda folder, name=name, train=train: backend.features_work(
                    self.models[name], self.ds, self.cfg.evaluation.batch_size, self.device, folder, train
                ),
            )
            self.clean[name] = backend.load_tensors(self.cache.folder(spec) / "features.safetensors")
            self.keys[f"features:{name}"] = spec.key

    def fit_metrics(self, learned: list[tuple[str, str]]) -> None:
        """Fit each (model, learned metric) on the model's training features (a stage each)."""
        assert self.ds is not None
        for name, kind in progress(learned, "learned metrics"):
            spec = StageSpec(
                "learned_metric", f"{kind}:{name}", {"kind": kind}, upstream=(self.keys[f"features:{name}"],), code=("metrics",)
            )
            self.cache.run(
                spec, lambda folder, name=name, kind=kind: backend.learned_metric_work(kind, self.clean[name]["train"], self.ds, folder)
            )
            self.metrics[(name, kind)] = backend.load_metric_file(self.cache.folder(spec) / "metric.safetensors")
            self.keys[f"{kind}:{name}"] = spec.key

    def metric(self, model: str, name: str) -> Any:
        """The metric ``name`` for ``model``'s features (learned metrics are per model)."""
        if (model, name) not in self.metrics:
            if name in learned_metrics():
                raise MetricAttackError(f"{name} metric of model {model} was not fitted in this run")
            self.metrics[(model, name)] = backend.builtin_metric(name)
        return self.metrics[(model, name)]

    def attack_spec(self, job: AttackJob) -> StageSpec:
        config = {
            "sources": list(job.sources),
            "mode": job.mode,
            "metric": job.metric,
            "spec": self.cfg.attack.spec(job.method, job.epsilon, self.cfg.seed).resolved(),
            "batch_size": self.cfg.attack.batch_size,
        }
        upstream = [self.keys["dataset"]] + [self.keys[f"model:{s}"] for s in job.sources]
        if job.metric in learned_metrics():
            upstream += [self.keys[f"{job.metric}:{s}"] for s in job.sources]
        return StageSpec("attack", job.id, config, upstream=tuple(upstream), code=CODE_ATTACK)

    def run_attacks(self, jobs: list[AttackJob]) -> None:
        assert self.ds is not None
        for job in progress(jobs, "adversarial sets"):
            spec = self.attack_spec(job)
            models = [self.models[s] for s in job.sources]
            metrics = [self.metric(s, job.metric) for s in job.sources]
            records = [
                {"name": s, "checkpoint": self.checkpoints[s]["checkpoint"], "sha256": self.checkpoints[s]["sha256"]} for s in job.sources
            ]
            out = self.cache.run(
                spec,
                lambda folder, job=job, models=models, metrics=metrics, records=records: backend.attack_work(
                    models,
                    metrics,
                    records,
                    self.ds,
                    _job_dict(job),
                    self.cfg.attack,
                    self.cfg.seed,
                    self.cfg.evaluation.ap,
                    self.device,
                    folder,
                ),
            )
            out["folder"] = str(self.cache.folder(spec))
            out["key"] = spec.key
            self.attacks[job] = out

    def adversarial_dataset(self, job: AttackJob) -> ReIDDataset:
        if job not in self.adv_datasets:
            self.adv_datasets[job] = backend.open_folder_dataset(self.attacks[job]["dataset_dir"])
        return self.adv_datasets[job]

    def adversarial_gallery(self, job: AttackJob) -> list:
        """The adversarial gallery records in the clean gallery's order (matched by file name)."""
        assert self.ds is not None
        if job not in self.adv_gallery_records:
            adv = {r.path.stem: r for r in self.adversarial_dataset(job).gallery}
            missing = [r.path.name for r in self.ds.gallery if r.path.stem not in adv]
            if missing:
                raise MetricAttackError(f"adversarial set {job.id} lacks gallery images {missing[:3]} (of {len(missing)})")
            self.adv_gallery_records[job] = [adv[r.path.stem] for r in self.ds.gallery]
        return self.adv_gallery_records[job]

    def extract_adversarial(self, evaluations: list[tuple[AttackJob, str]], desc: str = "adversarial features") -> None:
        for job, tested in progress(evaluations, desc):
            spec = StageSpec(
                "adv_features",
                f"{job.id}@{tested}",
                {"batch_size": self.cfg.evaluation.batch_size},
                upstream=(self.attacks[job]["key"], self.keys[f"model:{tested}"]),
                code=CODE_FEATURES,
            )
            self.cache.run(spec, lambda folder, job=job, tested=tested: _adv_features_work(self, job, tested, folder))
            self.adv_features[(job, tested)] = backend.load_tensors(self.cache.folder(spec) / "gallery.safetensors")["gallery"]


def _adv_features_work(run: Run, job: AttackJob, tested: str, folder: Path) -> dict[str, Any]:
    """Features of an adversarial gallery: the attacked images are read back, the others (written
    unchanged: distractors, junk, identities without a query) keep their clean features."""
    assert run.ds is not None
    records = run.adversarial_gallery(job)
    feats = run.clean[tested]["gallery"].clone()
    attacked = torch.nonzero(backend.attacked_mask(run.ds, job.mode, run.cfg.seed)).flatten().tolist()
    if attacked:
        feats[attacked] = backend.extract(run.models[tested], [records[i] for i in attacked], run.cfg.evaluation.batch_size, run.device)
    backend.save_tensors(folder / "gallery.safetensors", {"gallery": feats})
    return {"file": "gallery.safetensors"}


def _job_dict(job: AttackJob) -> dict[str, Any]:
    return {
        "sources": list(job.sources),
        "mode": job.mode,
        "method": job.method,
        "epsilon": job.epsilon,
        "metric": job.metric,
        "id": job.id,
    }


def _stage_seconds(cache: StageCache, spec: StageSpec) -> float | None:
    marker = cache.folder(spec) / "stage.json"
    return json.loads(marker.read_text(encoding="utf-8")).get("seconds") if marker.is_file() else None


def _model_info(run: Run, name: str) -> ModelInfo:
    base = name.removesuffix(defence.SUFFIX)
    section = next(m for m in run.cfg.models if m.name == base)
    ckpt = run.checkpoints[name]
    model = run.models[name]
    spec = model.spec() if hasattr(model, "spec") else {}
    seed = section.train.seed if section.train is not None else None
    description = section.description if name == base else f"metric-preserving {base} (Table 5)"
    return ModelInfo(
        name=name,
        description=description,
        checkpoint=ckpt["checkpoint"],
        checkpoint_sha256=ckpt["sha256"],
        spec=json.loads(json.dumps(spec, default=str)),
        train_seed=seed,
        train_seconds=ckpt.get("seconds"),
    )


def _attack_setting(run: Run, job: AttackJob) -> AttackSetting:
    out = run.attacks[job]
    spec = run.cfg.attack.spec(job.method, job.epsilon, run.cfg.seed)
    return AttackSetting(
        id=job.id,
        sources=list(job.sources),
        mode=job.mode,
        method=job.method,
        epsilon=job.epsilon,
        alpha=spec.alpha,
        momentum=spec.mu,
        steps=spec.num_steps,
        metric=job.metric,
        seed=run.cfg.seed,
        linf=out.get("linf"),
        dataset_dir=out["dataset_dir"],
    )


def run_benchmark(cfg: BenchmarkConfig, out: Path, config_path: str = "") -> Results:
    """Run (or resume) every selected experiment of ``cfg`` into ``out``; returns the results."""
    start = time.perf_counter()
    out = Path(out)
    log_before = len(read_stage_log(out))
    run = Run(cfg, out)
    the_plan: Plan = plan(cfg)
    ds = run.prepare_dataset()
    run.check_models()
    run.train_models()
    run.extract_clean(cfg.model_names(), the_plan.train_features)
    run.fit_metrics(the_plan.learned)
    run.run_attacks(the_plan.jobs)
    run.extract_adversarial(the_plan.evaluations)
    if "table5" in cfg.selected() and cfg.experiments.table5.enabled:
        defended = defence.train_defended(run)
        run.extract_clean(defended, [], "defended features")
        method = defence.method_of(cfg)
        run.extract_adversarial([(single(cfg, m, method), d) for m in cfg.model_names() for d in defended])

    sections = experiments.compute_all(run)
    stage_seconds: dict[str, float] = {}
    for entry in read_stage_log(out)[log_before:]:
        stage_seconds[entry["kind"]] = stage_seconds.get(entry["kind"], 0.0) + entry["seconds"]
    synth_seed = cfg.dataset.synthetic.seed if cfg.dataset.synthetic is not None else None
    provenance = Provenance(
        config=cfg.model_dump(mode="json"),
        config_path=str(config_path),
        seeds={
            "run": cfg.seed,
            "dataset": synth_seed,
            "models": {m.name: m.train.seed if m.train is not None else None for m in cfg.models},
        },
        versions=environment_versions(),
        ap_convention=cfg.evaluation.ap,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        experiments=cfg.selected(),
        stage_seconds={k: round(v, 3) for k, v in stage_seconds.items()},
        wall_seconds=0.0,
    )
    counts = {"train": len(ds.train), "query": len(ds.query), "gallery": len(ds.gallery), "train_ids": ds.num_train_ids()}
    results = Results(
        provenance=provenance,
        dataset=DatasetInfo(
            name=cfg.dataset.name, root=str(run.dataset_root), fingerprint=run.fingerprint, counts=counts, chance=experiments.chance(run)
        ),
        models=[_model_info(run, n) for n in run.models],
        attacks=[_attack_setting(run, j) for j in the_plan.jobs],
        findings=[],
        **sections,
    )
    results = results.model_copy(update={"findings": compute_findings(results), "further_findings": compute_further_findings(results)})
    results.provenance.wall_seconds = round(time.perf_counter() - start, 3)
    write_outputs(results, out)
    return results


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete outputs of earlier runs (e.g. before an ``--only`` run) that this run did not write."""
    for path in folder.glob("*"):
        if path.is_file() and path.name not in keep:
            path.unlink()


def write_outputs(results: Results, out: Path) -> dict[str, Path]:
    """Write results.json (validated), tables, figures and report.html into ``out``."""
    data = json.loads(results.model_dump_json())
    Results.model_validate(data)
    atomic_write_json(out / "results.json", data)
    tables = write_tables(results, out / "tables")
    figures = write_figures(results, out / "figures")
    _remove_stale(out / "tables", {p for t in tables for p in (f"{t.name}.md", f"{t.name}.csv")})
    _remove_stale(out / "figures", {p.name for p in figures.values()})
    report = write_report(results, figures, out / "report.html")
    return {
        "results": out / "results.json",
        "report": report,
        "tables": out / "tables",
        "figures": out / "figures",
        **{f"table:{t.name}": out / "tables" / f"{t.name}.md" for t in tables},
    }
