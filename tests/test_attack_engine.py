"""The engine (in-memory split attack), the evaluation's measurements and notes, on hand-made data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metricattack.attacks.engine import FeatureModel, attack_batches, attack_split, clean_features, plan_attack
from metricattack.attacks.evaluation import above_clean_reasons, evaluate_attack_model, feature_instability, target_ranks
from metricattack.attacks.ops import quantize
from metricattack.attacks.report import format_summary
from metricattack.attacks.spec import make_spec
from metricattack.attacks.threats import THREATS, SplitFeatures
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.data.types import ImageRecord, ReIDDataset
from metricattack.metrics.distance import EuclideanMetric


def records(pids_cams: list[tuple[int, int]], split: str) -> tuple[ImageRecord, ...]:
    return tuple(ImageRecord(Path(f"/nowhere/{split}/{i}.jpg"), pid, cam) for i, (pid, cam) in enumerate(pids_cams))


def test_target_ranks_count_ties_against_the_attack() -> None:
    """Probe 0 (identity 1, camera 0); gallery images 0..3 are of identity 2 and 3, camera 1."""
    data = ReIDDataset("handmade", Path("/nowhere"), (), records([(1, 0)], "q"), records([(2, 1), (2, 1), (3, 1), (3, 1)], "g"))
    metric = EuclideanMetric()
    probe = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([0, 0, -1, 0])  # images 0, 1 and 3 are pulled toward probe 0
    distinct = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    assert target_ranks(metric, probe, distinct, data, targets).tolist() == [0, 1, 3]
    tied = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # all four at the same distance
    assert target_ranks(metric, probe, tied, data, targets).tolist() == [3, 3, 3]  # each after the three others


def test_feature_instability_finds_a_noisy_model() -> None:
    x = torch.rand(4, 3, 8, 4)
    steady = nn.Sequential(nn.Flatten(), nn.Linear(96, 5)).eval()

    class Noisy(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return steady(images) + 0.01 * torch.randn(len(images), 5)

    assert feature_instability(steady, x) == 0.0
    assert feature_instability(Noisy(), x) > 0


def test_reasons_for_an_adversarial_map_above_the_clean_one() -> None:
    gallery = THREATS.get("gallery")
    quiet = {"zero_gradient": {"images": 0}, "unmoved": {"images": 0}}
    common = {"variant": "adversarial_disk", "threat": gallery, "calls": quiet, "memory_mAP": 0.6}
    found = above_clean_reasons(0.5, 0.6, white_box=True, instability=0.02, **common)
    assert len(found) == 1 and "not deterministic in eval mode" in found[0] and "0.02" in found[0]
    assert "black-box transfer" in above_clean_reasons(0.5, 0.6, white_box=False, instability=0.0, **common)[0]
    assert "8-bit" in above_clean_reasons(0.5, 0.6, white_box=True, instability=0.0, **{**common, "memory_mAP": 0.4})[0]
    calls = {"zero_gradient": {"images": 3}, "unmoved": {"images": 1}}
    both = above_clean_reasons(0.5, 0.6, white_box=True, instability=0.0, **{**common, "calls": calls})
    assert both == ["3 attacked images had a zero input gradient at some step", "1 attacked image did not move"]
    targeted = above_clean_reasons(0.5, 0.6, white_box=True, instability=0.0, **{**common, "threat": THREATS.get("targeted")})
    assert "pulls images toward chosen references" in targeted[0]
    none = above_clean_reasons(0.5, 0.6, white_box=True, instability=0.0, **common)
    assert none[0].startswith("no cause found")


def test_an_adversarial_map_above_the_clean_one_is_noted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    q = records([(1, 0), (2, 0)], "q")
    g = records([(1, 1), (2, 1), (3, 1)], "g")
    data = ReIDDataset("handmade", Path("/nowhere"), (), q, g)
    queries = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    clean = SplitFeatures(queries, torch.tensor([[9.0, 0.0], [1.0, 0.0], [5.0, 0.0]]))  # both probes rank the wrong image first
    better = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0]])  # after the "attack" both rank their match first

    class Noisy(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.flatten(1)[:, :2] + torch.rand(len(images), 2)

    kwargs = {"white_box": True, "dataset": data, "threat": THREATS.get("gallery"), "targets": None, "clean": clean}
    kwargs |= {"memory": better, "disk": better, "calls": {}, "probe_images": torch.rand(2, 3, 4, 2), "ap": "market"}
    with caplog.at_level("WARNING", logger="metricattack"):
        row = evaluate_attack_model(Noisy(), EuclideanMetric(), {"label": "noisy"}, **kwargs)
    assert row["adversarial_disk"]["mAP"] > row["clean"]["mAP"]
    assert len(row["notes"]) == 2 and all("noisy: the adversarial" in n and "not deterministic" in n for n in row["notes"])
    assert "above the clean mAP" in caplog.text
    steady = evaluate_attack_model(
        Noisy(), EuclideanMetric(), {"label": "noisy"}, **{**kwargs, "memory": clean.gallery, "disk": clean.gallery}
    )
    assert steady["notes"] == []
    summary = format_summary(
        {
            "attack": make_spec(eps=4).resolved(),
            "threat_model": "gallery",
            "attacked_split": "gallery",
            "num_attacked": 3,
            "num_images": 3,
            "ap_convention": "market",
            "linf_255": {"max_disk": 4, "max_memory": 4.0, "bound": 4.0},
            "calls": {"forward": {"mean": 5}, "backward": {"mean": 5}, "zero_gradient": {"images": 0}, "unmoved": {"images": 0}},
            "evaluations": [row],
        }
    )
    assert "note: noisy: the adversarial disk mAP" in summary


class PixelNet(nn.Module):
    """Per-image weighted sums of a pixel-wise non-linearity (batch-invariant bit for bit)."""

    input_size = (8, 4)

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 8, 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(3 * F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True) - 1.5)
        return F.normalize((z.unsqueeze(1) * self.weight).sum((2, 3, 4)), dim=1)


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> ReIDDataset:
    cfg = SynthConfig(seed=2, num_train_ids=2, num_test_ids=3, num_cameras=2, images_per_camera=2, height=32, width=16, num_junk=1)
    return load_dataset("folder", generate(tmp_path_factory.mktemp("micro") / "micro", cfg))


@pytest.mark.parametrize("saved", [False, True])
def test_attack_split_collects_the_streamed_features_and_counts(micro: ReIDDataset, saved: bool) -> None:
    model, spec = PixelNet().eval(), make_spec(method="mifgsm", eps=4, steps=2)
    feats = clean_features([model], micro, batch_size=4)
    plan = plan_attack([model], EuclideanMetric(), micro, "gallery", spec, feats)
    whole = attack_split(plan, spec, [FeatureModel(model, feats[0].gallery)], batch_size=3, saved=saved)
    seen = 0
    for batch in attack_batches(plan, spec, batch_size=3):
        images = quantize(batch.adversarial, batch.clean, 4).float() / 255 if saved else batch.adversarial
        with torch.no_grad():
            expected = torch.where(batch.active[:, None], model(images), feats[0].gallery[batch.indices])
        assert torch.equal(whole.features[0][batch.indices], expected)
        assert torch.equal(whole.counts["backward"][batch.indices], batch.counts.backward)
        seen += len(batch.indices)
    assert seen == len(micro.gallery) and torch.equal(whole.active, plan.active)
    assert int(whole.counts["backward"][~whole.active].sum()) == 0 and bool((whole.counts["backward"][whole.active] == 2).all())
    assert float(whole.linf_255.max()) <= 4 + 1e-4 and float(whole.linf_255[~whole.active].max()) == 0
