"""The stages that make a run's resources: dataset → models → features → learned metrics →
adversarial galleries → their features.

Each function runs one group of cached stages (:mod:`.stages`) with one progress bar and
stores what it made in the :class:`~.context.RunContext`. Stage keys hash the stage's
config, the keys of the stages it reads and the source of the packages it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from ..data.types import ImageRecord, ReIDDataset
from ..errors import ConfigError, MetricAttackError
from ..io import atomic_path, sha256_file, sha256_json
from ..progress import Progress
from ..stages import MARKER, StageCache, StageSpec
from .context import AttackOutput, Features, ModelRecord, RunContext
from .jobs import AttackJob, is_learned

if TYPE_CHECKING:
    from ..training.config import TrainConfig
    from .config import BenchmarkConfig, ModelSection

T = TypeVar("T")
CODE_DATA = ("data",)
CODE_TRAIN = ("data", "models", "training", "compute")
CODE_FEATURES = ("data", "models", "evaluation", "metrics", "compute")
CODE_ATTACK = ("data", "models", "metrics", "attacks", "evaluation", "compute")
CODE_LEARNED = ("metrics", "evaluation", "data", "models", "compute")


def progress(items: Sequence[T], desc: str, label: Callable[[T], str] = str) -> Progress[T]:
    """The progress of one group of stages: a bar (elapsed time, ETA) on a terminal, else one line as each
    stage starts, named by ``label(item)`` (:mod:`metricattack.progress`; ``run_benchmark`` allows bars as the
    config's ``progress`` says)."""
    return Progress(
        items,
        desc=desc,
        unit="stage",
        lines="each",
        label=label,
        dynamic_ncols=True,
        leave=True,
        bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining} ETA",
    )


def stage_seconds(ctx: RunContext, spec: StageSpec, clock: str = "seconds") -> float | None:
    """Wall seconds (``clock="cpu_seconds"``: CPU seconds of the process) the finished stage ``spec``
    took when it ran (None if it has not finished, or its marker predates CPU times)."""
    marker = ctx.cache.folder(spec) / MARKER
    return json.loads(marker.read_text(encoding="utf-8")).get(clock) if marker.is_file() else None


# ----------------------------------------------------------------- dataset
def open_run(cfg: BenchmarkConfig, out: Path) -> RunContext:
    """Generate (or find) the dataset and start the run's context."""
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available; use device: cpu")
    from ..data.layouts import dataset_fingerprint, load_dataset
    from ..evaluation.checks import check_test_set

    cache = StageCache(Path(out))
    section = cfg.dataset
    spec = StageSpec("dataset", section.name, section.model_dump(mode="json"), code=CODE_DATA, compute={})  # no model runs

    def work(folder: Path) -> dict[str, Any]:
        if section.synthetic is None:
            return {"root": str(section.root)}
        from ..data.synthetic import generate

        return {"root": str(Path(generate(folder / "data", section.synthetic, progress=True)).resolve())}

    root = cache.run(spec, work)["root"]
    ds = load_dataset(section.layout, root)
    check_test_set(ds)  # no valid match = an error; duplicates warn: before any training
    fingerprint = dataset_fingerprint(ds)
    # every later stage depends on the files' content, not only on the config naming them
    key = sha256_json({"dataset_stage": spec.key, "fingerprint": fingerprint})[:24]
    return RunContext(cfg, cache, cfg.device, ds, root, fingerprint, keys={"dataset": key})


# ----------------------------------------------------------------- models
def train_config(ctx: RunContext, model: ModelSection) -> TrainConfig:
    """The TrainConfig of ``model``, training on the run's dataset and device."""
    if model.train is None:
        raise ConfigError(f"model {model.name} has no training recipe (it is given as a checkpoint)")
    cfg = model.train.train_config(ctx.cfg.dataset.layout, ctx.dataset_root, ctx.device, f"model {model.name} training config")
    # its epochs under the models bar; the run's compute (precision) trains it
    return cfg.model_copy(update={"progress": cfg.progress and ctx.cfg.progress, "compute": ctx.cfg.compute})


def check_trainable(ctx: RunContext, model: ModelSection) -> None:
    """Fail now, naming the model, if its recipe cannot train on the run's dataset (e.g. the P×K
    sampler needs more identities than the training split has): the trainer's own batching
    rules (:func:`~metricattack.training.trainer.batch_sampler`), on the labels alone."""
    if model.train is None:
        return
    from ..training.data import relabel
    from ..training.trainer import batch_sampler

    cfg = train_config(ctx, model)
    try:
        _, labels, _ = relabel(ctx.dataset.train)
        batch_sampler(cfg, labels, 0, 1)
    except MetricAttackError as exc:
        raise ConfigError(f"model {model.name} cannot train on dataset {ctx.cfg.dataset.name}: {exc}") from None


def add_model(ctx: RunContext, name: str, spec: StageSpec, outputs: dict[str, Any], description: str, train_seed: int | None) -> None:
    """Register the model a finished stage made (``outputs``: checkpoint, sha256) and load it."""
    from ..models.checkpoint import load_model

    ctx.keys[f"model:{name}"] = spec.key
    ctx.records[name] = ModelRecord(
        outputs["checkpoint"], outputs["sha256"], description, train_seed, stage_seconds(ctx, spec), stage_seconds(ctx, spec, "cpu_seconds")
    )
    ctx.models[name] = ctx.cfg.compute.prepare(load_model(Path(outputs["checkpoint"]), device=ctx.device))


def add_model_from_elsewhere(ctx: RunContext, m: ModelSection) -> None:
    """Load and register ``m``'s ``model`` / ``weights`` (python:MODULE:FUNCTION or another project's format).

    Its stage does no work; its key follows the spec, the weights file's and the module file's
    SHA-256, so the features and attacks made from it are redone when either file changes."""
    source = m.source()
    assert source is not None and source.model is not None  # a model section with `model:` (checked at load)
    loaded = source.load(ctx.device)
    module_file = loaded.record.get("module_file")
    config = {**m.stage_config(), "device": ctx.device, "sha256": loaded.record["sha256"]}
    config["module_sha256"] = sha256_file(Path(module_file)) if module_file else None
    spec = StageSpec("model", m.name, config, upstream=(ctx.keys["dataset"],), code=CODE_TRAIN)
    ctx.cache.run(spec, lambda _folder: {"source": loaded.record})
    ctx.keys[f"model:{m.name}"] = spec.key
    ctx.records[m.name] = ModelRecord(None, loaded.record["sha256"], m.description, None, None, source=loaded.record)
    ctx.models[m.name] = ctx.cfg.compute.prepare(loaded.model)


def train_models(ctx: RunContext, models: Sequence[ModelSection] | None = None, desc: str = "base models") -> None:
    """Train every model of ``models`` (default: the base models; or take its checkpoint, or load it
    from elsewhere), after checking every recipe."""
    models = ctx.cfg.models if models is None else models
    for m in models:
        check_trainable(ctx, m)
    for m in progress(models, desc, lambda m: m.name):
        if m.model is not None:
            add_model_from_elsewhere(ctx, m)
            continue
        config = {**m.stage_config(), "device": ctx.device}
        if m.checkpoint is not None:
            config["sha256"] = sha256_file(m.checkpoint)
        spec = StageSpec("model", m.name, config, upstream=(ctx.keys["dataset"],), code=CODE_TRAIN)

        def work(folder: Path, m: ModelSection = m) -> dict[str, Any]:
            if m.checkpoint is not None:
                return {"checkpoint": str(m.checkpoint), "sha256": sha256_file(m.checkpoint)}
            from ..training import train

            checkpoint = Path(train(train_config(ctx, m), folder / "train"))
            return {"checkpoint": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)}

        add_model(ctx, m.name, spec, ctx.cache.run(spec, work), m.description, m.train.seed if m.train else None)
    refuse_same_weights(ctx)


def refuse_same_weights(ctx: RunContext) -> None:
    """ConfigError when two models of the run hold the same weights (e.g. a ``checkpoint:`` entry that is
    the file another entry trained): an attack on one would be reported as a black-box transfer to the
    other. The config check (``benchmark.config.model_identity``) catches the cases it can see before training."""
    seen: dict[tuple[str, str | None], str] = {}
    for name, record in ctx.records.items():
        identity = ((record.source or {}).get("model", ""), record.sha256)
        if identity in seen:
            raise ConfigError(
                f"models {seen[identity]!r} and {name!r} are the same weights (SHA-256 {str(record.sha256)[:16]}...), so an attack "
                "on one would be reported as a black-box transfer to the other; list the model once"
            )
        seen[identity] = name


# ----------------------------------------------------------------- features
def model_features(model: torch.nn.Module, records: Sequence[ImageRecord], batch_size: int, device: str = "cpu") -> torch.Tensor:
    """``model``'s L2-normalised features ``[N, D]`` (float32, CPU) of ``records``: the one feature path of every command."""
    from ..evaluation.features import extract_features

    return extract_features(model, list(records), batch_size=batch_size, device=device, progress=False).float().cpu()


def extract(ctx: RunContext, model: str, records: Sequence[ImageRecord]) -> torch.Tensor:
    """:func:`model_features` of the run's model ``model``."""
    return model_features(ctx.models[model], records, ctx.cfg.evaluation.batch_size, ctx.device)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def extract_clean(ctx: RunContext, names: list[str], with_train: list[str], desc: str = "clean features") -> None:
    """Clean query/gallery features (and train, for ``with_train`` models) of each model in ``names``."""
    for name in progress(names, desc):
        train = name in with_train
        spec = StageSpec(
            "features",
            name,
            {"batch_size": ctx.cfg.evaluation.batch_size, "train": train},
            upstream=(ctx.keys["dataset"], ctx.keys[f"model:{name}"]),
            code=CODE_FEATURES,
        )

        def work(folder: Path, name: str = name, train: bool = train) -> dict[str, Any]:
            splits = ("query", "gallery", "train") if train else ("query", "gallery")
            save_tensors(folder / "features.safetensors", {s: extract(ctx, name, ctx.dataset.split(s)) for s in splits})
            return {"file": "features.safetensors"}

        ctx.cache.run(spec, work)
        tensors = load_file(str(ctx.cache.folder(spec) / "features.safetensors"))
        ctx.clean[name] = Features(tensors["query"], tensors["gallery"], tensors.get("train"))
        ctx.keys[f"features:{name}"] = spec.key


# ----------------------------------------------------------------- learned metrics
def fit_metrics(ctx: RunContext, learned: list[tuple[str, str]]) -> None:
    """Fit each (model, learned metric) on the model's training features (identities only; pairs
    across cameras unless ``learned_metrics.cross_camera`` is false)."""
    from ..metrics.learned import fit_learned, load_learned_metric, save_learned_metric

    options = ctx.cfg.learned_metrics.model_dump()
    for name, kind in progress(learned, "learned metrics", lambda pair: f"{pair[1]} of {pair[0]}"):
        spec = StageSpec(
            "learned_metric", f"{kind}:{name}", {"kind": kind, **options}, upstream=(ctx.keys[f"features:{name}"],), code=CODE_LEARNED
        )

        def work(folder: Path, name: str = name, kind: str = kind) -> dict[str, Any]:
            train = ctx.clean[name].train
            if train is None:
                raise MetricAttackError(f"training features of model {name} were not extracted")
            pids = torch.tensor([r.pid for r in ctx.dataset.train])
            camids = torch.tensor([r.camid for r in ctx.dataset.train])
            keep = pids > 0
            save_learned_metric(fit_learned(kind, train[keep], pids[keep], camids[keep], **options), folder / "metric.safetensors")
            return {"file": "metric.safetensors"}

        ctx.cache.run(spec, work)
        ctx.metrics[(name, kind)] = load_learned_metric(ctx.cache.folder(spec) / "metric.safetensors")
        ctx.keys[f"{kind}:{name}"] = spec.key


# ----------------------------------------------------------------- attacks
def attack_stage(ctx: RunContext, job: AttackJob) -> StageSpec:
    """The stage of ``job``'s adversarial gallery."""
    config = {
        "sources": list(job.sources),
        "mode": job.mode,
        "metric": job.metric,
        "spec": ctx.cfg.attack.spec(job.method, job.epsilon, ctx.cfg.seed).resolved(),
        "batch_size": ctx.cfg.attack.batch_size,
    }
    upstream = [ctx.keys["dataset"]] + [ctx.keys[f"model:{s}"] for s in job.sources]
    if is_learned(job.metric):
        upstream += [ctx.keys[f"{job.metric}:{s}"] for s in job.sources]
    return StageSpec("attack", job.id, config, upstream=tuple(upstream), code=CODE_ATTACK)


def check_jobs(cfg: BenchmarkConfig, jobs: list[AttackJob]) -> None:
    """Refuse (ConfigError naming the job) an attack whose method and threat model cannot work together,
    before anything is trained or attacked; the models are checked by :func:`run_attacks`."""
    from ..attacks.engine import check_attack

    for job in jobs:
        try:
            check_attack([], job.threat, cfg.attack.spec(job.method, job.epsilon, cfg.seed))
        except MetricAttackError as exc:
            raise ConfigError(f"attack {job.id}: {exc}") from None


def run_attacks(ctx: RunContext, jobs: list[AttackJob]) -> None:
    """Make each job's adversarial gallery (a dataset in the stage folder; the export resumes by itself)."""
    from ..attacks.engine import check_attack
    from ..attacks.export import ModelEntry, export_attack

    for job in jobs:  # every job's method x threat model x models, before any attack runs
        try:
            check_attack([ctx.models[s] for s in job.sources], job.threat, ctx.cfg.attack.spec(job.method, job.epsilon, ctx.cfg.seed))
        except MetricAttackError as exc:
            raise ConfigError(f"attack {job.id} (models {', '.join(job.sources)}): {exc}") from None
    for job in progress(jobs, "adversarial sets", lambda job: job.id):
        spec = attack_stage(ctx, job)

        def work(folder: Path, job: AttackJob = job) -> dict[str, Any]:
            entries = [
                ModelEntry(
                    ctx.models[s],
                    ctx.metric(s, job.metric),
                    ctx.records[s].attack_record(s),
                )
                for s in job.sources
            ]
            out = export_attack(
                entries,
                ctx.dataset,
                folder / "data",
                ctx.cfg.attack.spec(job.method, job.epsilon, ctx.cfg.seed),
                job.threat,
                metric_record={"name": job.metric},
                batch_size=ctx.cfg.attack.batch_size,
                device=ctx.device,
                ap=ctx.cfg.evaluation.ap,
            )
            return {
                "dataset_dir": str((folder / "data").resolve()),
                "linf": out["linf_255"]["max_disk"],
                "num_attacked": out["num_attacked"],
            }

        out = ctx.cache.run(spec, work)
        ctx.attacks[job] = AttackOutput(out["dataset_dir"], out.get("linf"), spec.key)


def extract_adversarial(ctx: RunContext, evaluations: list[tuple[AttackJob, str]], desc: str = "adversarial features") -> None:
    """Features of each (job, tested model): the tested model's view of the job's attacked split, the
    adversarial gallery (or queries, for a query-side job); only the images the attack perturbs are
    extracted again (a Market-like gallery is mostly others)."""
    for job, tested in progress(evaluations, desc, lambda pair: f"{pair[0].id} on {pair[1]}"):
        spec = StageSpec(
            "adv_features",
            f"{job.id}@{tested}",
            {"batch_size": ctx.cfg.evaluation.batch_size},
            upstream=(ctx.attacks[job].key, ctx.keys[f"model:{tested}"]),
            code=CODE_FEATURES,
        )

        def work(folder: Path, job: AttackJob = job, tested: str = tested) -> dict[str, Any]:
            # the attacked images are read back; the others (written unchanged: distractors, junk,
            # identities without a query) keep their clean features
            features = (ctx.clean[tested].query if job.split == "query" else ctx.clean[tested].gallery).clone()
            attacked = torch.nonzero(ctx.attacked(job.threat)).flatten().tolist()
            if attacked:
                records = ctx.adversarial_records(job)
                features[attacked] = extract(ctx, tested, [records[i] for i in attacked])
            save_tensors(folder / f"{job.split}.safetensors", {job.split: features})
            return {"file": f"{job.split}.safetensors"}

        ctx.cache.run(spec, work)
        ctx.adversarial[(job, tested)] = load_file(str(ctx.cache.folder(spec) / f"{job.split}.safetensors"))[job.split]


def split_counts(ds: ReIDDataset) -> dict[str, int]:
    """Split sizes of ``ds`` for results.json."""
    return {"train": len(ds.train), "query": len(ds.query), "gallery": len(ds.gallery), "train_ids": ds.num_train_ids()}
