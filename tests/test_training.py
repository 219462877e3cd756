"""Training: losses, P×K sampler, config errors, resume, and a tiny model that learns re-ID."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from metricattack.data.loading import save_png
from metricattack.errors import ConfigError
from metricattack.evaluation.ranking import evaluate_distances
from metricattack.models.checkpoint import checkpoint_meta, load_model
from metricattack.training import TrainConfig, load_train_config, train
from metricattack.training import trainer as trainer_module
from metricattack.training.losses import batch_hard_triplet_loss
from metricattack.training.sampler import PKBatchSampler
from metricattack.training.trainer import TrainingRun, Variant

# --------------------------------------------------------------------------- losses


def test_batch_hard_triplet_exact_value() -> None:
    # d01=1, d02=2, d03=4, d12=sqrt5, d13=3, d23=sqrt20; labels 0,0,1,1.
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [4.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = batch_hard_triplet_loss(features, labels, margin=0.3)
    # anchors 0, 1: hardest positive 1 < hardest negative - margin -> 0;
    # anchor 2: sqrt20 - 2 + 0.3; anchor 3: sqrt20 - 3 + 0.3.
    expected = (2 * math.sqrt(20) - 5 + 0.6) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_triplet_without_negatives_is_zero() -> None:
    features = torch.rand(3, 4, requires_grad=True)
    loss = batch_hard_triplet_loss(features, torch.zeros(3, dtype=torch.long), margin=0.3)
    assert loss.item() == 0.0
    loss.backward()


# --------------------------------------------------------------------------- sampler


def test_pk_sampler_is_identity_balanced_and_seeded() -> None:
    counts = {0: 1, 1: 2, 2: 7, 3: 3, 4: 10, 5: 4, 6: 5}
    labels = [label for label, n in counts.items() for _ in range(n)]
    sampler = PKBatchSampler(labels, ids_per_batch=3, images_per_id=4, seed=5)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        per_id = Counter(labels[i] for i in batch)
        assert len(batch) == 12 and len(per_id) == 3 and set(per_id.values()) == {4}
    # Every identity with at least K images contributes all its images in the epoch.
    seen = {i for batch in batches for i in batch}
    assert len(seen) > len(labels) // 2
    assert list(sampler) == batches
    sampler.set_epoch(2)
    assert list(sampler) != batches


def test_pk_sampler_ranks_take_disjoint_batches() -> None:
    labels = [i // 4 for i in range(64)]
    full = list(PKBatchSampler(labels, 2, 4, seed=1))
    shards = [list(PKBatchSampler(labels, 2, 4, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(full) // 2
    assert shards[0] + shards[1] == full[0::2] + full[1::2]


def test_pk_sampler_needs_enough_identities() -> None:
    with pytest.raises(ConfigError, match="only 2 identities"):
        PKBatchSampler([0, 0, 1, 1], ids_per_batch=4, images_per_id=2)


# --------------------------------------------------------------------------- config


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _config_dict(root: Path, **changes: object) -> dict:
    cfg = {
        "data": {"dataset": "folder", "root": str(root), "cache": True},
        "model": {"backbone": "resnet18", "input_size": [32, 16]},
        "loss": {"cross_entropy": {"label_smoothing": 0.1}, "triplet": {"margin": 0.3}},
        "optimizer": {"lr": 0.001},
        "schedule": {"epochs": 2},
        "batch": {"batch_size": 16, "sampler": "pk", "images_per_id": 4},
        "augmentation": {"pad": 2},
        "device": "cpu",
        "progress": False,
    }
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(
    "override, field",
    [
        ("schedule.epochs=0", "schedule.epochs"),
        ("model.backbone=resnet5", "model.reid.backbone"),
        ("model.architecture=resnet", "model: Input tag 'resnet'"),
        ("model.input_size=[32]", "model.reid.input_size"),
        ("loss.cross_entropy.label_smoothing=1.5", "loss.cross_entropy.label_smoothing"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("batch.sampler=random", "triplet needs batch.sampler: pk"),
        ("batch.images_per_id=5", "batch: .*multiple of images_per_id"),
        ("model.colour=red", "model.reid.colour"),
    ],
)
def test_invalid_config_values_name_the_field(tmp_path: Path, override: str, field: str) -> None:
    path = _write(tmp_path / "train.yaml", _config_dict(tmp_path))
    with pytest.raises(ConfigError, match=field):
        load_train_config(path, [override])


def test_config_needs_a_loss(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.yaml", _config_dict(tmp_path, loss={}))
    with pytest.raises(ConfigError, match="loss.cross_entropy, loss.focal and/or loss.triplet"):
        load_train_config(path)


def test_shipped_configs_are_valid() -> None:
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*/*.yaml"))
    paper = [p for p in configs if p.parent.name == "paper" and "-" in p.stem]  # training recipes, not benchmarks
    assert len(paper) == 12
    # training recipes; a benchmark config there (market-density.yaml) lists models
    recipes = [p for p in configs if p.parent.name == "synthetic" and "models" not in yaml.safe_load(p.read_text(encoding="utf-8"))]
    for path in paper + recipes:
        cfg = load_train_config(path)
        assert cfg.schedule.epochs > 0
    b4 = load_train_config(Path(__file__).parents[1] / "configs/paper/market1501-b4.yaml")
    assert b4.loss.triplet is not None and b4.batch.sampler == "pk" and b4.model.backbone == "resnet50"
    hacnn = load_train_config(Path(__file__).parents[1] / "configs/paper/market1501-hacnn.yaml")
    assert hacnn.model.architecture == "hacnn" and hacnn.model.input_size == (160, 64) and hacnn.loss.triplet is None
    assert (hacnn.optimizer.lr, hacnn.batch.batch_size, hacnn.schedule.epochs, hacnn.augmentation.flip) == (5e-4, 32, 150, False)
    mancs = load_train_config(Path(__file__).parents[1] / "configs/paper/dukemtmc-mancs.yaml")
    assert mancs.model.architecture == "mancs" and mancs.model.backbone == "resnet50" and mancs.model.pretrained is True
    assert mancs.loss.triplet.sampling == "curriculum" and mancs.loss.attention is not None and mancs.loss.focal is not None


# --------------------------------------------------------------------------- resume


def _blob_tree(root: Path, train_ids: int = 8, per_cam: int = 2, cams: int = 2) -> Path:
    """A tiny Market-layout tree of flat-coloured figures (identity = shirt/trouser colours)."""
    gen = torch.Generator().manual_seed(0)
    splits = {"bounding_box_train": range(1, train_ids + 1), "bounding_box_test": range(101, 105), "query": range(101, 105)}
    for folder, pids in splits.items():
        for pid in pids:
            colours = torch.rand(2, 3, 1, 1, generator=torch.Generator().manual_seed(pid))
            for cam in range(cams):
                for k in range(1 if folder == "query" else per_cam):
                    image = torch.rand(3, 1, 1, generator=gen).expand(3, 32, 16).clone()
                    image[:, 4:16, 3:13] = colours[0]
                    image[:, 16:30, 4:12] = colours[1]
                    image = (image * (0.8 + 0.2 * cam) + 0.05 * torch.randn(image.shape, generator=gen)).clamp(0, 1)
                    save_png(image, root / folder / f"{pid:04d}_c{cam + 1}s1_{k:06d}_00.png")
    return root


@pytest.fixture(scope="module")
def blob_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _blob_tree(tmp_path_factory.mktemp("blobs"))


def _cfg(root: Path, **changes: object) -> TrainConfig:
    return TrainConfig.model_validate(_config_dict(root, **changes))


def test_interrupted_run_resumes_to_identical_weights(blob_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(blob_root, batch={"batch_size": 8, "sampler": "pk", "images_per_id": 4})
    reference = load_model(train(cfg, tmp_path / "straight"))

    real_epoch = trainer_module.run_epoch
    calls = {"n": 0}

    def crash_on_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(trainer_module, "run_epoch", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out)
    assert not (out / "model.safetensors").exists()
    assert [p.name for p in (out / "checkpoints").glob("*.safetensors")] == ["epoch-001.safetensors"]
    monkeypatch.setattr(trainer_module, "run_epoch", real_epoch)

    final = train(cfg, out)
    meta = checkpoint_meta(final)["meta"]
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    resumed = load_model(final)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)

    # Finished run: a re-run returns at once without rewriting.
    stamp = final.stat().st_mtime_ns
    assert train(cfg, out) == final and final.stat().st_mtime_ns == stamp
    # Another config in the same folder is refused, naming what changed.
    with pytest.raises(ConfigError, match=r"different config \(seed: 0 there, 1 now\)"):
        train(cfg.model_copy(update={"seed": 1}), out)


def test_variant_starts_from_weights_scales_lr_and_replaces_the_batch_objective(blob_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(blob_root, schedule={"epochs": 1}, loss={"cross_entropy": {}}, batch={"batch_size": 8})
    base = train(cfg, tmp_path / "base")
    seen: list[tuple[int, int]] = []

    def with_flips(run: TrainingRun):
        def objective(step, images, labels, epoch, number):
            seen.append((epoch, number))
            loss, parts = run.losses(step(torch.cat([images, images.flip(-1)])), torch.cat([labels, labels]), epoch)
            return loss, {**parts, "flipped": loss.detach()}

        return objective

    variant = Variant({"batches": "with flips", "lr_factor": 0.5}, init_checkpoint=base, lr_factor=0.5, objective=with_flips)
    final = train(cfg, tmp_path / "tuned", variant)
    meta, base_meta = checkpoint_meta(final)["meta"], checkpoint_meta(base)["meta"]
    assert meta["variant"] == variant.identity and meta["init_checkpoint"] == str(base)
    assert meta["history"][0]["lr"] == pytest.approx(0.5 * base_meta["history"][0]["lr"])
    history = meta["history"][0]
    assert history["images"] == base_meta["history"][0]["images"] and history["flipped"] == pytest.approx(history["loss"])
    assert seen == [(1, n) for n in range(len(seen))] and len(seen) > 1
    with pytest.raises(ConfigError, match="holds a run with other training settings"):
        train(cfg, tmp_path / "tuned", Variant({"batches": "plain"}))
    fewer = _blob_tree(tmp_path / "fewer", train_ids=6)
    with pytest.raises(ConfigError, match="trained on other identities"):
        train(_cfg(fewer, schedule={"epochs": 1}), tmp_path / "other", Variant({"init": "base"}, init_checkpoint=base))


def test_triplet_only_model_retrieves_in_the_space_its_loss_trains(blob_root: Path, tmp_path: Path) -> None:
    """Paper: features are the activations before the loss layer. A triplet-only model's BN neck
    gets no gradient (its scale stays 1), so it retrieves with the normalised pooled features."""
    cfg = _cfg(blob_root, schedule={"epochs": 1}, loss={"triplet": {"margin": 0.3}}, batch={"batch_size": 8, "sampler": "pk"})
    model = load_model(train(cfg, tmp_path / "triplet"))
    assert model.spec()["feature_space"] == "pooled"
    torch.testing.assert_close(model.neck.weight, torch.ones_like(model.neck.weight))  # never trained
    x = torch.rand(3, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.nn.functional.normalize(model._pooled(x), dim=1))
    # cross-entropy (alone or with triplet) keeps the BN-neck output; an explicit choice wins over 'auto'
    assert trainer_module.build_model(_cfg(blob_root), 8).feature_space == "neck"
    explicit = _cfg(blob_root, model={"backbone": "resnet18", "input_size": [32, 16], "feature_space": "pooled"})
    assert trainer_module.build_model(explicit, 8).feature_space == "pooled"


def test_checkpoint_records_provenance_and_matches_config(blob_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(blob_root, schedule={"epochs": 1}, loss={"cross_entropy": {}}, batch={"batch_size": 8})
    final = train(cfg, tmp_path / "run")
    record = checkpoint_meta(final)
    meta = record["meta"]
    assert meta["class_pids"] == list(range(1, 9))
    assert len(meta["dataset"]["fingerprint"]) == 64 and meta["dataset"]["train_images"] == 32
    assert TrainConfig.model_validate(meta["config"]) == cfg
    assert meta["history"][0]["images"] == 32 and meta["history"][0]["images_per_second"] > 0
    model = load_model(final, expect={"backbone": "resnet18", "num_classes": 8, "input_size": [32, 16]})
    assert model.num_classes == 8


# --------------------------------------------------------------------------- learning


def _rank1(model: torch.nn.Module, root: Path) -> tuple[float, float]:
    """Rank-1 of ``model`` on the dataset at ``root`` and the chance level (1 / test identities)."""
    from metricattack.data.layouts import load_dataset
    from metricattack.data.loading import read_image

    ds = load_dataset("folder", root)
    with torch.no_grad():
        q = model(torch.stack([read_image(r.path) for r in ds.query]))
        g = model(torch.stack([read_image(r.path) for r in ds.gallery]))
    dist = torch.cdist(q, g).pow(2)
    q_pids, g_pids = [r.pid for r in ds.query], [r.pid for r in ds.gallery]
    q_cams, g_cams = [r.camid for r in ds.query], [r.camid for r in ds.gallery]
    rank1 = evaluate_distances(dist, q_pids, g_pids, q_cams, g_cams).cmc[1]
    return rank1, 1.0 / len({p for p in q_pids if p > 0})


def test_tiny_model_learns_synthetic_reid(request: pytest.FixtureRequest) -> None:
    checkpoint = request.getfixturevalue("tiny_model_checkpoint")
    root = request.getfixturevalue("tiny_dataset_root")
    rank1, chance = _rank1(load_model(checkpoint), root)
    assert rank1 >= max(0.6, 5 * chance), f"rank-1 {rank1:.3f} (chance {chance:.3f})"


def test_train_command_runs_and_reports_bad_overrides(blob_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metricattack.cli import main

    config = _write(tmp_path / "train.yaml", _config_dict(blob_root, loss={"cross_entropy": {}}, batch={"batch_size": 8}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress", "schedule.epochs=1"]) == 0
    printed = capsys.readouterr()
    assert f"-> {out / 'model.safetensors'}" in printed.out and "training:" not in printed.err  # no epoch bar
    assert "metricattack: epoch 1/1: loss " in printed.err  # its information line stays
    assert main(["train", "--config", str(config), "--out", str(out), "batch.batch_size=1"]) == 2
    assert "batch: Value error, batch_size must be at least 2" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--out", str(out), "data.root=/nonexistent"]) == 2
    assert "/nonexistent" in capsys.readouterr().err
