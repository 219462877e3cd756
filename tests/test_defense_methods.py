"""Defense methods beyond the paper (pgd-at, act, hm, goat; online): registry contract, inner
attacks on hand-made inputs, triplet mining, resumption, and the robust evaluation.

Tiny data and network of ``test_defense_pipeline`` (flat-coloured figures at 32x16, a three-layer CNN).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metricattack.attacks.spec import AttackSpec
from metricattack.data.layouts import load_dataset
from metricattack.defense.config import DefenseConfig
from metricattack.defense.evaluation import (
    GALLERY_ATTACKS,
    TRANSFER_KEY,
    RobustEvaluation,
    attacked_images,
    protocol_key,
    robust_evaluations,
    robust_spec,
)
from metricattack.defense.methods import DEFENSES, ACTSection, GOATSection, HMSection, PGDATSection
from metricattack.defense.methods.act import ACTObjective
from metricattack.defense.methods.base import distances
from metricattack.defense.methods.goat import GOATObjective
from metricattack.defense.methods.hm import HMObjective
from metricattack.defense.methods.pgd_at import PGDATObjective
from metricattack.defense.methods.triplets import hardness, mine_triplets, triplet_margin_loss
from metricattack.defense.training import train_defended
from metricattack.errors import ConfigError
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.base import ARCHITECTURES
from metricattack.models.checkpoint import checkpoint_meta, load_model
from metricattack.training import TrainConfig, train
from metricattack.training.config import AugmentSection
from metricattack.training.data import TrainImages, relabel
from metricattack.training.trainer import LossTerms, TrainingRun, build_model
from test_architectures import SMALL, small
from test_defense_pipeline import _figures, _train_section

ONLINE = [name for name in DEFENSES if DEFENSES.get(name).objective is not None]


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _figures(tmp_path_factory.mktemp("figures") / "data", train_ids=8)


@pytest.fixture(scope="module")
def base(figures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(TrainConfig.model_validate(_train_section(figures, epochs=4)), tmp_path_factory.mktemp("base") / "f")


def _cheap(name: str) -> object:
    """The method's settings with a 2-step inner attack at eps 8."""
    section = DEFENSES.get(name).settings
    method = section().attack.method  # type: ignore[attr-defined]
    return section.model_validate({"attack": {"method": method, "eps": 8, "alpha": 4, "steps": 2, "seed": 3}})


def _run(figures: Path, cfg: TrainConfig) -> TrainingRun:
    dataset = load_dataset("folder", figures)
    records, labels, classes = relabel(dataset.train)
    torch.manual_seed(0)
    model = build_model(cfg, len(classes))
    return TrainingRun(model, LossTerms(cfg), TrainImages(records, labels, model.input_size, AugmentSection(pad=0)), torch.device("cpu"))


def _batch(run: TrainingRun, per_id: int = 3, ids: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.tensor(run.images.labels)
    chosen = torch.cat([torch.nonzero(labels == k).flatten()[:per_id] for k in range(ids)])
    return run.images.plain(chosen.tolist()), labels[chosen]


# ------------------------------------------------------------------ registry contract


def test_every_method_has_its_config_section() -> None:
    cfg_fields = DefenseConfig.model_fields
    assert list(DEFENSES)[:2] == ["metric-preserving", "online"] and {"pgd-at", "act", "hm", "goat"} <= set(DEFENSES)
    for name in DEFENSES:
        method = DEFENSES.get(name)
        assert cfg_fields[method.section].annotation is method.settings, name
        assert method.source and method.summary and method.label


@pytest.mark.parametrize("name", ONLINE)
def test_each_method_fine_tunes_with_the_pk_sampler_and_records_itself(name: str, figures: Path, base: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(_train_section(figures, epochs=1))
    out = train_defended(cfg, tmp_path / name, method=name, settings=_cheap(name), init_checkpoint=base, lr_factor=0.5)
    meta = checkpoint_meta(out)["meta"]
    assert meta["variant"]["method"] == name and meta["variant"]["settings"]["attack"]["options"]["steps"] == 2
    history = meta["history"][0]
    assert np.isfinite(history["loss"]) and history["images"] > 0 and history["cpu_seconds"] > 0
    assert {"adversarial"} <= set(history) or name == "online"
    with pytest.raises(ConfigError, match="other training settings"):
        train_defended(
            cfg,
            tmp_path / name,
            method=name,
            settings=_cheap(name).model_copy(update={"attack": _cheap(name).attack.model_copy(update={"seed": 4})}),
            init_checkpoint=base,
        )


@pytest.mark.parametrize("name", ONLINE)
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES.names()))
def test_every_method_trains_every_architecture(architecture: str, name: str, figures: Path) -> None:
    """One adversarial batch of each method on each registered architecture (small versions of
    ``test_architectures``; a P×K batch of 4 identities × 2 images): a finite loss whose gradient
    reaches the network's own weights, and the model left in training mode."""
    model = small(architecture, num_classes=8)
    cfg = TrainConfig.model_validate(_train_section(figures) | {"model": {"architecture": architecture, **SMALL[architecture]}})
    records, labels, _ = relabel(load_dataset("folder", figures).train)
    run = TrainingRun(model, LossTerms(cfg), TrainImages(records, labels, model.input_size, AugmentSection(pad=0)), torch.device("cpu"))
    images, batch_labels = _batch(run, per_id=2, ids=4)
    section = DEFENSES.get(name).settings
    settings = section.model_validate({"attack": {"method": section().attack.method, "eps": 8, "alpha": 4, "steps": 1, "seed": 1}})  # type: ignore[attr-defined]
    model.train()
    loss, parts = DEFENSES.get(name).objective(settings, run)(model.forward_train, images, batch_labels, 1, 0)  # type: ignore[misc]
    assert torch.isfinite(loss) and all(torch.isfinite(p) for p in parts.values()) and model.training
    loss.backward()
    trunk = [p for n, p in model.named_parameters() if "classifier" not in n]
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trunk), f"{name} on {architecture}: no gradient"


def test_ranking_defenses_refuse_batches_without_positives(figures: Path) -> None:
    section = _train_section(figures)
    section["batch"] = {"batch_size": 12, "sampler": "random"}
    section["loss"] = {"cross_entropy": {}}
    DefenseConfig.model_validate({"train": section, "method": "pgd-at"})  # any sampler
    for name in ("act", "hm"):
        with pytest.raises(ValueError, match=f"{name} mines triplets in each batch: set train.batch.sampler: pk"):
            DefenseConfig.model_validate({"train": section, "method": name})


def test_resumed_defense_training_equals_an_uninterrupted_one(figures: Path, base: Path, tmp_path: Path) -> None:
    """HM keeps a state across batches (the gradual target) and every method draws: a run stopped
    after epoch 1 and extended to 2 gives the same weights as one that ran 2 epochs at once."""
    one, two = (TrainConfig.model_validate(_train_section(figures, epochs=e)) for e in (1, 2))
    one = one.model_copy(update={"schedule": one.schedule.model_copy(update={"lr_steps": []})})
    two = two.model_copy(update={"schedule": two.schedule.model_copy(update={"lr_steps": []})})
    settings = _cheap("hm")
    train_defended(one, tmp_path / "resumed", method="hm", settings=settings, init_checkpoint=base)
    resumed = load_model(train_defended(two, tmp_path / "resumed", method="hm", settings=settings, init_checkpoint=base))
    straight = load_model(train_defended(two, tmp_path / "straight", method="hm", settings=settings, init_checkpoint=base))
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------ triplets and inner attacks


def test_triplet_mining_rules_on_hand_made_features() -> None:
    # one anchor (0) with positives at distance 1 and 3, negatives at distance 2 and 5
    f = torch.tensor([[0.0], [1.0], [3.0], [-2.0], [5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    gen = torch.Generator().manual_seed(0)
    t = mine_triplets(f, labels, gen, positive="softhard", negative="softhard")
    row = int(torch.nonzero(t.anchors == 0).flatten()[0])
    assert int(t.positives[row]) == 2  # the only positive farther than the closest negative (2)
    assert int(t.negatives[row]) == 3  # the only negative closer than the farthest positive (3)
    semi = mine_triplets(f, labels, gen, negative="semihard", margin=2.5)
    for a, p, n in zip(*semi, strict=True):
        dap, dan = abs(float(f[a] - f[p])), abs(float(f[a] - f[n]))
        assert labels[a] == labels[p] != labels[n] and a != p
        if a == 0 and p == 1:  # d(a,p) = 1: semi-hard negatives lie in (1, 3.5): only the one at 2
            assert (dap, dan) == (1.0, 2.0)
    assert len(t.anchors) == 5  # every image has a positive and a negative
    torch.testing.assert_close(hardness(f[[0]], f[[1]], f[[3]]), torch.tensor([-1.0]))
    torch.testing.assert_close(triplet_margin_loss(f[[0, 0]], f[[1, 2]], f[[3, 3]], 0.5), torch.tensor(0.75))


def test_inner_attacks_move_features_the_way_each_method_wants(figures: Path, base: Path) -> None:
    cfg = TrainConfig.model_validate(_train_section(figures))
    run = _run(figures, cfg)
    run.model.load_state_dict(load_model(base).state_dict())
    images, labels = _batch(run)
    model = run.model.eval()

    pgd = PGDATObjective(PGDATSection(attack=AttackSpec.model_validate({"method": "pgd", "eps": 8, "alpha": 2, "steps": 4})), run)
    with torch.no_grad():
        clean = model(images)
    centres = torch.stack([clean[(labels == labels[i]) & (torch.arange(len(labels)) != i)].mean(0) for i in range(len(labels))])
    pgd.generator.manual_seed(0)

    def away(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return (model(x) - centres).pow(2).sum(1)

    adv = pgd.attack(images, away)
    assert float((adv - images).abs().max()) <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert (distances(model(adv), centres) > distances(clean, centres)).float().mean() > 0.9

    act = ACTObjective(ACTSection(attack=AttackSpec.model_validate({"method": "ifgsm", "eps": 8, "alpha": 2, "steps": 4})), run)
    loss, parts = act(lambda x: run.model.forward_train(x), images, labels, 1, 0)
    assert set(parts) == {"adversarial"} and torch.isfinite(loss) and loss.requires_grad

    hm = HMObjective(
        HMSection(attack=AttackSpec.model_validate({"method": "ifgsm", "eps": 8, "alpha": 2, "steps": 4}), ics_weight=0.5), run
    )
    loss, parts = hm(lambda x: run.model.forward_train(x), images, labels, 1, 0)
    assert set(parts) == {"adversarial", "ics"} and hm.previous == pytest.approx(float(parts["adversarial"].detach()))

    goat = GOATObjective(GOATSection(attack=AttackSpec.model_validate({"method": "pgd", "eps": 8, "alpha": 2, "steps": 4})), run)
    goat.generator.manual_seed(0)
    guides = goat.guides(labels)
    assert guides.shape == (len(labels), 4, clean.shape[1])
    own = torch.stack([clean[labels == labels[i]].mean(0) for i in range(len(labels))])
    other = torch.stack([clean[labels != labels[i]].mean(0) for i in range(len(labels))])
    # guides are images of the same identity: closer to its batch images than to the others
    assert (distances(guides.mean(1), own) < distances(guides.mean(1), other)).all()


def test_collapse_and_hardness_attacks_reach_their_goal(figures: Path, base: Path) -> None:
    cfg = TrainConfig.model_validate(_train_section(figures))
    run = _run(figures, cfg)
    run.model.load_state_dict(load_model(base).state_dict())
    images, labels = _batch(run)
    model = run.model.eval()
    act = ACTObjective(ACTSection(attack=AttackSpec.model_validate({"method": "ifgsm", "eps": 8, "alpha": 2, "steps": 6})), run)
    count = len(labels) // 2
    pairs = torch.cat([images[:count], images[count:]])
    partner = torch.cat([torch.arange(count, 2 * count), torch.arange(count)])

    def collapse(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        f = model(x)
        return distances(f, f[partner])

    collapsed = act.attack(pairs, collapse, minimise=True)
    with torch.no_grad():
        before, after = collapse(pairs, partner), collapse(collapsed, partner)
    assert float(after.mean()) < 0.8 * float(before.mean())
    assert model.training is False  # attacking() restores the mode the model was in


# ------------------------------------------------------------------ robust evaluation


def test_robust_evaluation_is_the_worst_case_and_counts_the_transfer_attack(figures: Path, base: Path, tmp_path: Path) -> None:
    """The protocol (smoke version) and the gallery attacks at two ε; the transfer attack, made here against the
    model itself, is white-box I-FGSM: the protocol's APGD cascade must do at least as well, so no transfer flag."""
    from metricattack.attacks.engine import clean_features
    from metricattack.robustness.evaluate import run_protocol
    from metricattack.robustness.protocol import VERSIONS

    data = load_dataset("folder", figures)
    model, metric = load_model(base), EuclideanMetric()
    clean = clean_features([model], data)[0]
    transfers = {eps: attacked_images(model, metric, data, "query", robust_spec("ifgsm", eps), clean) for eps in (4, 8)}
    assert transfers[8] and all(t.dtype == torch.uint8 for t in transfers[8].values())
    record = {"name": "base"}
    results = robust_evaluations(
        model, data, metric, [4, 8], version="smoke", transfers=transfers, records=tmp_path / "runs", model_record=record
    )
    assert [r.epsilon for r in results] == [4.0, 8.0]
    without_gallery = VERSIONS.get("smoke").model_copy(update={"gallery": None})  # the gallery side is GALLERY_ATTACKS' here
    smoke, _ = run_protocol(model, data, eps=8, model_record=record, protocol=without_gallery)
    for result in results:
        assert set(result.attacks) == {protocol_key("smoke"), TRANSFER_KEY} | {a.key for a in GALLERY_ATTACKS}
        worst = result.worst("query")
        for key, vector in result.attacks.items():
            if key.split("/")[-2] == "query":
                assert np.all((worst <= vector) | np.isnan(vector))
        assert result.mAP(worst) < result.mAP(result.clean) - 10
        assert set(result.checks) == {f.name for f in smoke.flags} and result.flags()["transfer"] is False
    assert results[1].mAP(results[1].worst("query")) <= results[0].mAP(results[0].worst("query")) + 0.5  # no rise with eps
    # the protocol's worst case at the headline eps is its own robust mAP (same seeds, same runs)
    assert results[1].mAP(results[1].attacks[protocol_key("smoke")]) == pytest.approx(smoke.headline.mAP.value)
    again = robust_evaluations(
        model, data, metric, [4, 8], version="smoke", transfers=transfers, records=tmp_path / "runs", model_record=record
    )
    np.testing.assert_array_equal(again[1].worst("query"), results[1].worst("query"))  # resumed from the recorded runs


def test_transfer_below_white_box_trips_the_transfer_flag() -> None:
    q = np.array([0.9, 0.8, np.nan])
    checks = {"never-weaker": "ok", "eps-sweep": "flagged", "convergence": "not measured"}
    masked = RobustEvaluation(8.0, q, {"query/protocol-fast": q - 0.2, TRANSFER_KEY: q - 0.5, "gallery/pgd": q}, checks)
    assert masked.flags() == {"never-weaker": False, "eps-sweep": True, "transfer": True}  # the transfer takes 30 points more
    np.testing.assert_allclose(masked.worst("query"), q - 0.5)
    assert masked.mAP(masked.worst("gallery")) == pytest.approx(85.0)
    close = RobustEvaluation(8.0, q, {"query/protocol-fast": q - 0.2, TRANSFER_KEY: q - 0.2 - np.array([0.004, 0.004, 0.0])})
    assert close.flags() == {"transfer": False}  # 0.4 points: below the robustness module's 0.5


# ------------------------------------------------------------------ a network of one's own


def test_a_network_with_normalised_features_learns_its_identities() -> None:
    """``own_reid_net`` returns unit-length features: the BN neck before the classifier lets
    cross-entropy fall well below chance in a few steps at the quickstart recipe's learning rate
    (without it: 1.24 after these 20 steps, chance 1.39; logits on unit vectors start near 0)."""
    torch.manual_seed(0)
    model = small("python", num_classes=4).train()
    images, labels = torch.rand(8, 3, 32, 16), torch.arange(4).repeat(2)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.002)
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model.forward_train(images).logits[0], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss.detach()) < 0.5 * float(np.log(4))
    assert torch.allclose(model.eval()(images), model.net(images))  # retrieval features: the module's own


def test_defend_a_network_of_ones_own(figures: Path, tmp_path: Path, capsys) -> None:
    """``defend --model python:own_reid_net:build --weights W`` (tests/own_reid_net.py)."""
    import yaml
    from safetensors.torch import save_file

    from metricattack.cli import main
    from metricattack.models.sources import load_model as load_any

    mine = load_any("python:own_reid_net:build")
    with torch.no_grad():
        for p in mine.parameters():
            p.add_(0.01)  # weights that are not FUNCTION()'s initialisation
    save_file({k: v.contiguous() for k, v in mine.state_dict().items()}, str(tmp_path / "mine.safetensors"))
    config = tmp_path / "defense.yaml"
    train = _train_section(figures, epochs=1)
    config.write_text(
        yaml.safe_dump(
            {
                "train": train,
                "retrain": {"init": "finetune", "finetune_epochs": 1},
                "pgd_at": {"attack": {"method": "pgd", "eps": 8, "alpha": 4, "steps": 2}},
                "evaluation": {"adaptive": {"methods": ["ifgsm"], "epsilons": [4]}, "robust": {"epsilons": [4], "version": "smoke"}},
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "run"
    argv = ["defend", "--config", str(config), "--method", "pgd-at", "--model", "python:own_reid_net:build"]
    assert main([*argv, "--weights", str(tmp_path / "mine.safetensors"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "robust mAP" in printed and "--model python:own_reid_net:build --weights FILE" in printed
    x = torch.rand(3, 3, 32, 16)
    base = load_model(out / "base" / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(base(x), mine.eval()(x))  # F is the network with its weights, as is
    defended = load_model(out / "defended" / "model.safetensors")
    again = load_any("python:own_reid_net:build", weights=out / "defended" / "module.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(x), defended(x))
        assert not torch.allclose(defended(x), base(x))  # fine-tuned
    meta = checkpoint_meta(out / "defended" / "model.safetensors")["meta"]
    assert meta["defense"]["method"] == "pgd-at" and meta["config"]["model"]["source"] == "python:own_reid_net:build"
    assert (
        main([*argv[:-2], "--model", "torchreid:resnet50", "--weights", str(tmp_path / "mine.safetensors"), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "defend trains the model, so it takes a network of one's own" in capsys.readouterr().err


# ------------------------------------------------------------------ the benchmark's leaderboard config


@pytest.mark.parametrize(
    "override, message, disabled_ok",
    [
        ("experiments.defenses.model=T1", "experiments.defenses.model: 'T1' is not one of the attacked", True),
        ("experiments.defenses.methods=[act]", "act mines triplets in each batch.*experiments.defenses.batch sets the batches", True),
        ("experiments.defenses.methods=[pgd-at,pgd-at]", "experiments.defenses.methods lists pgd-at more than once", False),
        ("experiments.defenses.methods=[magic]", "unknown defense method 'magic'", False),
    ],
)
def test_leaderboard_config_errors_name_the_field(override: str, message: str, disabled_ok: bool) -> None:
    from metricattack.benchmark.config import load_benchmark_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError, match=message):
        load_benchmark_config(tiny, [override])
    if disabled_ok:  # what the leaderboard needs is checked only when it runs
        load_benchmark_config(tiny, [override, "experiments.defenses.enabled=false"])


def test_leaderboard_table_ranks_by_robust_map_and_states_the_verdict(tmp_path: Path) -> None:
    from metricattack.benchmark.experiments import EXPERIMENTS
    from metricattack.benchmark.schema import DefenseEntry, Defenses, RobustPoint
    from test_benchmark_framework import make_results

    def entry(model: str, method: str | None, robust: float, beats: bool | None, flags: dict[str, bool]) -> DefenseEntry:
        point = RobustPoint(
            epsilon=8,
            robust_mAP=robust,
            robust_interval=(robust - 3, robust + 3),
            gallery_robust_mAP=robust + 1,
            gallery_interval=(robust - 2, robust + 4),
            attacks={"query/pgd": robust},
            flags=flags,
            beats_paper=beats,
        )
        return DefenseEntry(
            model=model,
            base_model="B1",
            method=method,
            label=method or "none",
            source="",
            paper=method == "metric-preserving",
            initialisation=None,
            clean_mAP=60.0,
            clean_interval=(55.0, 65.0),
            clean_drop=0.0,
            points=[point],
            cost_multiple=None if method is None else 2.5,
        )

    entries = [entry("B1#pgd-at", "pgd-at", 30.0, True, {"black-box": False}), entry("B1#M", "metric-preserving", 20.0, None, {})]
    entries.append(entry("B1#act", "act", 12.0, False, {"black-box": True}))
    board = Defenses(status="ok", base_model="B1", epsilons=[8.0], protocol="the worst case", entries=entries)
    (table,) = EXPERIMENTS.get("defenses").tables(
        make_results(tmp_path, whitebox=0.5, blackbox=30.0).model_copy(update={"defenses": board})
    )
    assert [row[1] for row in table.rows] == ["B1#pgd-at", "B1#M", "B1#act"]
    assert table.rows[0][5] == "30.00 [27.00, 33.00]" and table.rows[0][-1] == "2.5×" and table.rows[2][-2] == "black-box"
    assert "Beyond the paper, B1#pgd-at beats the metric-preserving model" in table.caption
