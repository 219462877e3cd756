"""The contract of every registered attack method × threat model, over the registries.

A method or threat model registered later is covered by these tests without changing them:
every pair a threat model accepts stays in the ε-ball and [0,1], leaves inactive images
unchanged, moves the features of the images it attacks and gives the same images whatever the
batching; a covering set of pairs (every method and every threat model at least once, see
:func:`covering_pairs`) resumes after a kill to the same bytes and records its resolved options;
every pair it refuses is refused before any output folder exists. An image an accepted pair leaves
unmoved must have seen only zero gradients, counted (e.g. DI under ``self`` when none of its random
transformations was applied): never a silent no-op. Methods run with their quick options
(``AttackMethod.quick``: a small budget, or a small random file the method reads, e.g. ``uap``'s δ)
on a micro synthetic dataset and a model whose output for an image is bit-for-bit independent of
the batch it is in, so any batch dependence comes from the attack itself.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metricattack.attacks.engine import attack_batches, clean_features, plan_attack
from metricattack.attacks.export import ModelEntry, export_attack
from metricattack.attacks.methods import METHODS
from metricattack.attacks.objectives import LossPart, MetricLoss, ReferenceTargets
from metricattack.attacks.report import format_summary
from metricattack.attacks.spec import AttackSpec
from metricattack.attacks.threats import THREATS, Selection, SplitFeatures, ThreatModel
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.data.types import ReIDDataset
from metricattack.errors import ConfigError
from metricattack.metrics.distance import EuclideanMetric, Metric

EPS = 4.0


class InvariantNet(nn.Module):
    """Resize to 8x4, a pixel-wise non-linearity and per-image weighted sums: each image's features,
    logits and input gradient are the same bit for bit whatever the batch (no batched matmul or conv)."""

    input_size = (8, 4)
    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(6, 3, 8, 4, generator=gen))
        self.classes = nn.Parameter(torch.randn(5, 6, generator=gen))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(3 * F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True) - 1.5)
        return (z.unsqueeze(1) * self.weight).sum((2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw(x), dim=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x).unsqueeze(1) * self.classes).sum(2)


QUICK_FILES = Path(tempfile.mkdtemp(prefix="metricattack-contract-"))  # files quick options name (a trained delta)
atexit.register(shutil.rmtree, QUICK_FILES, ignore_errors=True)


def quick_spec(method: str) -> AttackSpec:
    return AttackSpec.model_validate({"method": method, "eps": EPS, "seed": 5, **METHODS.get(method).quick(QUICK_FILES, EPS)})


def pairs(accepted: bool) -> list[tuple[str, str]]:
    """(method, threat model) pairs the threat model accepts (``accepted``) or refuses."""
    return [(m, t) for m in METHODS for t in THREATS if (THREATS.get(t).refusal(quick_spec(m).build()) is None) == accepted]


def covering_pairs() -> list[tuple[str, str]]:
    """Accepted pairs that cover every method (with the first threat model it is accepted by) and every
    threat model (with ``pgd``, whose random start draws from the seeded generator, when accepted).
    The export's resumption is the same code for every pair; what a pair adds is its determinism per
    batch, which ``test_stays_in_ball_moves_features_and_ignores_batching`` checks for every pair."""
    accepted = pairs(accepted=True)
    chosen = {next(p for p in accepted if p[0] == m) for m in METHODS if any(p[0] == m for p in accepted)}
    for t in THREATS:
        with_threat = [p for p in accepted if p[1] == t]
        if with_threat and not any(p[1] == t for p in chosen):
            chosen.add(next((p for p in with_threat if p[0] == "pgd"), with_threat[0]))
    return sorted(chosen)


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> ReIDDataset:
    """4 test identities x 2 cameras x 2 images at 32x16, 2 distractors, 1 junk image (19 gallery, 8 query)."""
    cfg = SynthConfig(seed=1, num_train_ids=2, num_test_ids=4, num_cameras=2, images_per_camera=2, height=32, width=16)
    cfg = cfg.model_copy(update={"num_distractors": 2, "num_junk": 1})
    return load_dataset("folder", generate(tmp_path_factory.mktemp("micro") / "micro", cfg))


def in_memory(dataset: ReIDDataset, threat: str, spec: AttackSpec, batch_size: int) -> tuple[dict[int, torch.Tensor], ...]:
    """Per split position: clean image, adversarial image, (forward, backward, zero-gradient) counts."""
    model = InvariantNet().eval()
    plan = plan_attack([model], EuclideanMetric(), dataset, threat, spec, clean_features([model], dataset, batch_size=4))
    clean, adv, counts = {}, {}, {}
    for batch in attack_batches(plan, spec, batch_size=batch_size):
        for row, index in enumerate(batch.indices.tolist()):
            clean[index], adv[index] = batch.clean[row], batch.adversarial[row]
            counts[index] = torch.stack([batch.counts.forward[row], batch.counts.backward[row], batch.counts.zero_gradient[row]])
    return clean, adv, counts, {i: bool(plan.active[i]) for i in clean}


def moved_or_counted_zero(model: nn.Module, clean: torch.Tensor, adv: torch.Tensor, counts: torch.Tensor) -> bool:
    """The image's features moved, or every gradient it got was zero and was counted (``counts``:
    forward, backward, zero-gradient)."""
    with torch.no_grad():
        moved = float((model(adv[None]) - model(clean[None])).abs().max()) > 0
    return moved or 0 < int(counts[1]) == int(counts[2])


@pytest.mark.parametrize("method, threat", pairs(accepted=True))
def test_stays_in_ball_moves_features_and_ignores_batching(micro: ReIDDataset, method: str, threat: str) -> None:
    spec = quick_spec(method)
    clean, adv, counts, active = in_memory(micro, threat, spec, batch_size=3)
    _, alone, alone_counts, _ = in_memory(micro, threat, spec, batch_size=1)
    assert any(active.values())
    model = InvariantNet().eval()
    for i in clean:
        assert torch.equal(adv[i], alone[i]), f"image {i} depends on its batch"
        assert torch.equal(counts[i], alone_counts[i])
        assert float((adv[i] - clean[i]).abs().max()) <= EPS / 255 + 1e-6 and 0 <= float(adv[i].min()) and float(adv[i].max()) <= 1
        if not active[i]:
            assert torch.equal(adv[i], clean[i]) and int(counts[i].sum()) == 0
            continue
        assert moved_or_counted_zero(model, clean[i], adv[i], counts[i]), f"image {i}'s features did not move"
        assert int(counts[i][0]) > 0 if METHODS.get(method).uses_model else int(counts[i].sum()) == 0
        if not METHODS.get(method).uses_gradient:
            assert int(counts[i][1]) == 0
    assert any(not torch.equal(adv[i], clean[i]) for i in clean if active[i])


@pytest.mark.parametrize("method, threat", covering_pairs())
def test_resumes_after_a_kill_to_the_same_bytes_and_records_options(micro: ReIDDataset, tmp_path: Path, method: str, threat: str) -> None:
    spec = quick_spec(method)

    def export(out: Path, **kwargs) -> dict:
        entry = ModelEntry(InvariantNet().eval(), EuclideanMetric(), {"label": "invariant"})
        return export_attack([entry], micro, out, spec, threat, batch_size=3, progress=False, **kwargs)

    class Killed(Exception):
        pass

    def kill_after_first(number: int) -> None:
        raise Killed

    full = export(tmp_path / "full")
    with pytest.raises(Killed):
        export(tmp_path / "resumed", on_batch=kill_after_first)
    resumed = export(tmp_path / "resumed")
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    attacked = [f["output"] for f in manifest["files"] if f["attacked"]]
    assert attacked and all((tmp_path / "full" / f).read_bytes() == (tmp_path / "resumed" / f).read_bytes() for f in attacked)
    assert resumed["evaluations"] == full["evaluations"] and resumed["calls"] == full["calls"]
    assert resumed["attack"] == manifest["attack"] == spec.resolved()
    assert resumed["threat_model"] == manifest["threat_model"] == threat and resumed["mode"] == THREATS.get(threat).mode
    assert spec.options_text() in format_summary(resumed) or spec.options_text() == "(no options)"


class OwnFeature(ThreatModel):
    """A test-only threat model: push each gallery image away from its own clean feature (the loss and
    its gradient are zero at the clean image)."""

    name = mode = "own-feature"
    summary = "push each gallery image away from its own clean feature"
    references = "self"
    zero_gradient_at_clean = True

    def select(self, dataset: ReIDDataset, seed: int) -> Selection:
        return Selection(torch.tensor([r.pid > 0 for r in dataset.gallery]))

    def part(self, model: nn.Module, metric: Metric, features: SplitFeatures, selection: Selection, objective: str) -> LossPart:
        own = [(i,) for i in range(len(features.gallery))]
        return MetricLoss(model, metric, ReferenceTargets.build(metric, features.gallery, own))


@pytest.mark.parametrize("method", list(METHODS))
def test_a_pair_that_cannot_move_an_image_is_refused_before_any_output(
    micro: ReIDDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    monkeypatch.setitem(THREATS._items, "own-feature", OwnFeature())
    spec = quick_spec(method)
    built = spec.build()
    entry = ModelEntry(InvariantNet().eval(), EuclideanMetric(), {"label": "invariant"})
    if built.uses_gradient and built.first_gradient_at_clean:
        with pytest.raises(ConfigError, match=rf"{method} cannot move any image under the own-feature threat model: .*zero gradient"):
            export_attack([entry], micro, tmp_path / "out", spec, "own-feature", progress=False)
        assert not (tmp_path / "out").exists()
    else:
        clean, adv, counts, active = in_memory(micro, "own-feature", spec, batch_size=4)
        model = InvariantNet().eval()
        assert all(moved_or_counted_zero(model, clean[i], adv[i], counts[i]) for i in clean if active[i])
        assert any(not torch.equal(adv[i], clean[i]) for i in clean if active[i])


@pytest.mark.parametrize("method, threat", pairs(accepted=False))
def test_refused_registered_pairs_write_nothing(micro: ReIDDataset, tmp_path: Path, method: str, threat: str) -> None:
    entry = ModelEntry(InvariantNet().eval(), EuclideanMetric(), {"label": "invariant"})
    with pytest.raises(ConfigError):
        export_attack([entry], micro, tmp_path / "out", quick_spec(method), threat, progress=False)
    assert not (tmp_path / "out").exists()
