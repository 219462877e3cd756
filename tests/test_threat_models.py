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
from metricattack.errors import ConfigError
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


@pytest.mark.parametrize("method", list(METHODS))
def test_self_refuses_methods_whose_first_gradient_is_at_the_clean_image(micro: ReIDDataset, tmp_path: Path, method: str) -> None:
    entry = ModelEntry(LinearNet().eval(), EuclideanMetric(), {"label": "linear"})
    spec = AttackSpec.model_validate({"method": method, "eps": 4, **METHODS.get(method).quick_options})
    built = spec.build()
    if built.uses_gradient and built.first_gradient_at_clean:
        with pytest.raises(ConfigError, match=rf"{method} cannot move any image under the self threat model: .*zero gradient"):
            export_attack([entry], micro, tmp_path / "out", spec, "self", progress=False)
        assert not (tmp_path / "out").exists()


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
