"""The guide-free threat models (``self``, ``opposite``, ``fna``): their objectives on hand-made inputs,
the splits and labels they use, their refusals, and that they hurt a trained model's ranking.

What every threat model shares (ε-ball, batching, resume, records) is in ``test_attack_contract.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metricattack.attacks.engine import attack_batches, clean_features, plan_attack
from metricattack.attacks.export import ModelEntry, export_attack
from metricattack.attacks.methods import METHODS
from metricattack.attacks.spec import AttackSpec, make_spec
from metricattack.attacks.threats import THREATS
from metricattack.cli import main
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.data.types import ReIDDataset
from metricattack.errors import ConfigError, MetricAttackError
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.checkpoint import load_model


class LinearNet(nn.Module):
    """Resize to 4x2, then a fixed linear map to 5-d features (not normalised): hand-checkable losses."""

    input_size = (4, 2)
    feature_dim = 5

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 24, generator=torch.Generator().manual_seed(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return small.flatten(1) @ self.weight.T


class NormalisedLinearNet(LinearNet):
    """:class:`LinearNet` with L2-normalised features (as this toolkit's models)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(x), dim=1)


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> ReIDDataset:
    """4 test identities x 2 cameras x 2 images at 32x16 (8 probes), 2 distractors, 1 junk image."""
    cfg = SynthConfig(seed=2, num_train_ids=2, num_test_ids=4, num_cameras=2, images_per_camera=2, height=32, width=16)
    cfg = cfg.model_copy(update={"num_distractors": 2, "num_junk": 1})
    return load_dataset("folder", generate(tmp_path_factory.mktemp("micro") / "micro", cfg))


def planned(dataset: ReIDDataset, threat: str, spec: AttackSpec, model: nn.Module | None = None):
    model = (model or LinearNet()).eval()
    return plan_attack([model], EuclideanMetric(), dataset, threat, spec, clean_features([model], dataset, batch_size=8))


def query_images(dataset: ReIDDataset, plan) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean probes (one batch) and their indices."""
    batch = next(iter(attack_batches(plan, make_spec(method="fgsm", eps=1), batch_size=len(dataset.query))))
    return batch.clean, batch.indices


# ---------------------------------------------------------------------------------------------- self
def test_self_is_the_distance_to_the_own_clean_feature_with_a_zero_gradient_there(micro: ReIDDataset) -> None:
    model = LinearNet().eval()
    plan = planned(micro, "self", make_spec(method="pgd", eps=4), model)
    assert plan.split == "query" and bool(plan.active.all()) and len(plan.active) == len(micro.query)
    clean, indices = query_images(micro, plan)
    plan.objective.prepare(clean, indices)
    shifted = (clean + 0.01 * torch.rand(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        expected = (model(shifted) - model(clean)).pow(2).sum(1)
        assert torch.allclose(plan.objective(shifted, indices), expected, rtol=1e-5, atol=1e-7)
        assert float(plan.objective(clean, indices).abs().max()) < 1e-9
    at_clean = clean.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(plan.objective(at_clean, indices).sum(), at_clean)
    assert float(grad.abs().max()) < 1e-7  # the fact the refusal relies on


def test_self_needs_no_label_and_no_gallery(micro: ReIDDataset) -> None:
    self_threat = THREATS.get("self")
    assert not self_threat.needs_labels and self_threat.references == "self" and self_threat.split == "query"
    relabelled = ReIDDataset(micro.name, micro.root, micro.train, tuple(r.__class__(r.path, 7, r.camid) for r in micro.query), ())
    assert bool(self_threat.select(relabelled, 0).active.all())


ZERO_AT_CLEAN = [name for name in THREATS if THREATS.get(name).zero_gradient_at_clean]


def test_the_zero_gradient_threats_are_self_and_opposite() -> None:
    assert {"self", "opposite"} <= set(ZERO_AT_CLEAN) and "fna" not in ZERO_AT_CLEAN


@pytest.mark.parametrize("threat", ZERO_AT_CLEAN)
@pytest.mark.parametrize("method", list(METHODS))
def test_zero_gradient_threats_refuse_exactly_the_methods_that_cannot_leave_the_clean_image(
    micro: ReIDDataset, tmp_path: Path, threat: str, method: str
) -> None:
    """Refused: before any output, with the reason. Accepted (random start, DI's transforms, SI's scale
    copies, VMI/VNI's neighbourhood): the probes move from the clean image, where the gradient is zero."""
    net = NormalisedLinearNet()  # opposite's gradient vanishes at the clean image on normalised features
    entry = ModelEntry(net.eval(), EuclideanMetric(), {"label": "linear"})
    spec = AttackSpec.model_validate({"method": method, "eps": 4, "seed": 1, **METHODS.get(method).quick(tmp_path, 4)})
    built = spec.build()
    if built.refusal(THREATS.get(threat)) is not None:
        return  # the method's own refusal (uap under opposite), checked in test_attack_contract.py
    if built.uses_gradient and built.first_gradient_at_clean:
        with pytest.raises(ConfigError, match=rf"{method} cannot move any image under the {threat} threat model: .*zero gradient"):
            export_attack([entry], micro, tmp_path / "out", spec, threat, progress=False)
        assert not (tmp_path / "out").exists()
        return
    plan = planned(micro, threat, spec, net)
    batch = next(iter(attack_batches(plan, spec, batch_size=len(micro.query))))
    moved = (batch.adversarial - batch.clean).flatten(1).abs().amax(1) > 0
    assert int(moved.sum()) >= len(moved) // 2, f"{method} moved {int(moved.sum())} of {len(moved)} probes"
    unmoved = ~moved
    assert torch.equal(batch.counts.zero_gradient[unmoved], batch.counts.backward[unmoved])  # counted, never silent


def test_self_cli_refuses_ifgsm_and_pgd_without_random_start_before_any_output(
    tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["attack", "--checkpoint", str(tiny_model_checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    for extra in (["--method", "ifgsm"], ["--method", "pgd", "--method-option", "random_start=false"]):
        assert main([*base, "--out", str(tmp_path / "out"), "--threat", "self", *extra]) == 2
        err = capsys.readouterr().err
        assert f"attack method {extra[1]} cannot move any image under the self threat model" in err and "random start" in err
        assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_entry(tiny_model_checkpoint: Path) -> ModelEntry:
    return ModelEntry(load_model(Path(tiny_model_checkpoint)), EuclideanMetric(), {"label": "tiny"})


def test_self_with_pgd_lowers_the_query_side_map_of_a_trained_model(
    tiny_entry: ModelEntry, tiny_dataset_root: Path, tmp_path: Path
) -> None:
    data = load_dataset("folder", tiny_dataset_root)
    result = export_attack([tiny_entry], data, tmp_path / "self", make_spec(method="pgd", eps=8), "self", batch_size=16, progress=False)
    row = result["evaluations"][0]
    assert result["attacked_split"] == "query" and result["num_attacked"] == len(data.query)
    assert result["calls"]["zero_gradient"]["images"] == 0
    assert row["adversarial_disk"]["mAP"] < 0.9 * row["clean"]["mAP"]  # measured: 0.66 -> 0.56


# ---------------------------------------------------------------------------------------------- opposite
def test_opposite_is_the_distance_to_the_opposite_feature(micro: ReIDDataset) -> None:
    model = LinearNet().eval()
    plan = planned(micro, "opposite", make_spec(method="pgd", eps=4), model)
    threat = THREATS.get("opposite")
    assert plan.split == "query" and bool(plan.active.all()) and threat.minimise and not threat.needs_labels
    clean, indices = query_images(micro, plan)
    shifted = (clean + 0.01 * torch.rand(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        expected = (model(shifted) + model(clean)).pow(2).sum(1)  # ‖f(x') − (−f(x))‖²
        assert torch.allclose(plan.objective(shifted, indices), expected, rtol=1e-5)
    batch = next(iter(attack_batches(plan, make_spec(method="pgd", eps=4), batch_size=len(micro.query))))
    with torch.no_grad():
        before, after = plan.objective(batch.clean, batch.indices), plan.objective(batch.adversarial, batch.indices)
    assert bool((after < before).all())  # every probe moved toward its opposite feature


def test_opposite_on_normalised_features_is_self_with_a_zero_gradient_at_the_clean_image(micro: ReIDDataset) -> None:
    """The reason opposite refuses I-FGSM: ‖e' + e‖² = 4 − ‖e' − e‖² on the unit sphere."""
    model = NormalisedLinearNet().eval()
    opposite = planned(micro, "opposite", make_spec(method="pgd", eps=4), model)
    own = planned(micro, "self", make_spec(method="pgd", eps=4), model)
    clean, indices = query_images(micro, opposite)
    shifted = (clean + 0.05 * torch.rand(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        assert torch.allclose(opposite.objective(shifted, indices), 4 - own.objective(shifted, indices), atol=1e-5)
    grads = []
    for point in (clean, shifted):
        x = point.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(opposite.objective(x, indices).sum(), x)[0].flatten(1).norm(dim=1))
    assert bool((grads[0] < 1e-2 * grads[1]).all())  # round-off at the clean image (its sign is no direction)


# ---------------------------------------------------------------------------------------------- fna
def test_fna_pushes_from_the_identity_and_pulls_toward_the_farthest_other_identity(micro: ReIDDataset) -> None:
    model = LinearNet().eval()
    plan = planned(micro, "fna", make_spec(method="ifgsm", eps=4), model)
    q_pids = [r.pid for r in micro.query]
    assert plan.split == "query" and plan.active.tolist() == [p > 0 for p in q_pids]
    clean, indices = query_images(micro, plan)
    with torch.no_grad():
        f = model(clean)[indices.argsort()]  # split order
        members = {p: [i for i, q in enumerate(q_pids) if q == p] for p in sorted(set(q_pids))}
        centroid = {p: f[m].mean(0) for p, m in members.items()}
        shifted = (clean + 0.02 * torch.rand(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        g = model(shifted)
        loss = plan.objective(shifted, indices)
    for row, i in enumerate(indices.tolist()):
        pid = q_pids[i]
        far = max((p for p in centroid if p != pid), key=lambda p: float((f[i] - centroid[p]).pow(2).sum()))
        push = torch.stack([(g[row] - f[j]).pow(2).sum() for j in members[pid]]).mean()
        pull = torch.stack([(g[row] - f[j]).pow(2).sum() for j in members[far]]).mean()
        assert torch.allclose(loss[row], push - pull, rtol=1e-4, atol=1e-5), (i, pid, far)


def test_fna_reads_only_query_labels_and_needs_two_identities(micro: ReIDDataset) -> None:
    fna = THREATS.get("fna")
    assert fna.needs_labels and fna.references == "guides"
    no_gallery = ReIDDataset(micro.name, micro.root, micro.train, micro.query, ())
    assert fna.select(no_gallery, 0).active.tolist() == [r.pid > 0 for r in micro.query]
    one_identity = ReIDDataset(micro.name, micro.root, micro.train, tuple(r for r in micro.query if r.pid == micro.query[0].pid), ())
    with pytest.raises(MetricAttackError, match="fna threat model .* needs at least 2"):
        fna.select(one_identity, 0)


@pytest.mark.parametrize("threat, method", [("opposite", "pgd"), ("fna", "ifgsm")])
def test_guide_free_threats_lower_the_query_side_map_of_a_trained_model(
    tiny_entry: ModelEntry, tiny_dataset_root: Path, tmp_path: Path, threat: str, method: str
) -> None:
    data = load_dataset("folder", tiny_dataset_root)
    result = export_attack([tiny_entry], data, tmp_path / threat, make_spec(method=method, eps=8), threat, batch_size=16, progress=False)
    row = result["evaluations"][0]
    assert result["attacked_split"] == "query" and result["mode"] == threat
    assert row["adversarial_disk"]["mAP"] < 0.9 * row["clean"]["mAP"]
