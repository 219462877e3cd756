"""The robustness protocol's parts on hand-made inputs: the cascade's bookkeeping, the flags, the
trap models and their BPDA counterparts, and the result's intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metricattack.data.loading import read_image
from metricattack.errors import MetricAttackError
from metricattack.robustness import flags
from metricattack.robustness.cascade import CLEAN, RunOutcome, run_cascade, standing
from metricattack.robustness.diffjpeg import differentiable_jpeg
from metricattack.robustness.evaluate import EXTRA_START, START_IDS, cascade_runs, evaluation_cost, step_budget
from metricattack.robustness.protocol import VERSIONS
from metricattack.robustness.result import RobustnessResult, epsilon_result, schema_markdown
from metricattack.robustness.traps import TRANSFORMS, Preprocessed, counterpart, jpeg


def fake_run(values: dict[int, float], hits: dict[int, float] | None = None, calls: list | None = None):
    """A run that sets query q's AP to values[q] (unchanged queries keep a high AP)."""

    def run(queries: np.ndarray) -> RunOutcome:
        if calls is not None:
            calls.append(queries.tolist())
        ap = np.array([values.get(int(q), 1.0) for q in queries])
        hit = np.array([(hits or {}).get(int(q), 1.0) for q in queries])
        return RunOutcome(queries, ap, hit, forwards=10 * len(queries), backwards=5 * len(queries), zero_gradient=0)

    return run


def test_cascade_attacks_only_standing_queries_and_keeps_the_worst() -> None:
    clean = np.array([0.8, 0.6, np.nan, 0.05, 0.9])
    chance = np.array([0.1, 0.1, np.nan, 0.1, 0.1])
    hits = np.array([1.0, 1.0, np.nan, 0.0, 1.0])
    calls: list = []
    result = run_cascade(
        [
            ("a", fake_run({0: 0.05, 1: 0.7, 4: 0.5}, {0: 0.0}, calls)),
            ("a", fake_run({1: 0.3, 4: 0.6}, calls=calls)),
            ("b", fake_run({4: 0.2}, {4: 0.0}, calls)),
        ],
        clean,
        hits,
        chance,
    )
    # query 2 has no match, query 3 starts below chance: never attacked; query 0 falls below chance after the first run
    assert calls == [[0, 1, 4], [1, 4], [1, 4]]
    assert np.allclose(result.ap[[0, 1, 3, 4]], [0.05, 0.3, 0.05, 0.2]) and np.isnan(result.ap[2])
    assert result.hit.tolist()[:2] == [0.0, 1.0] and result.hit[4] == 0.0
    assert result.decisive.tolist() == [0, 1, CLEAN, CLEAN, 2]
    assert result.decisive_counts() == {"a": 2, "b": 1, "clean": 1}
    assert [(e.attack, e.run, e.attacked, e.lowered) for e in result.log] == [("a", 0, 3, 2), ("a", 1, 2, 1), ("b", 0, 2, 1)]
    assert result.log[-1].mAP_after == pytest.approx(100 * np.mean([0.05, 0.3, 0.05, 0.2]))
    assert result.mAP == pytest.approx(result.log[-1].mAP_after)
    assert standing(result.ap, chance).tolist() == [1, 4]


def test_cascade_refuses_a_run_that_answers_for_other_queries() -> None:
    def bad(queries: np.ndarray) -> RunOutcome:
        return RunOutcome(queries[:1], np.zeros(1), np.zeros(1), 0, 0)

    with pytest.raises(MetricAttackError, match="other queries"):
        run_cascade([("x", bad)], np.array([0.9, 0.9]), np.ones(2), np.array([0.1, 0.1]))


def test_epsilon_result_intervals_from_the_protocol_bootstrap() -> None:
    protocol = VERSIONS.get("fast")
    clean = np.array([0.9, 0.8, 0.7, np.nan, 0.6])
    result = run_cascade(
        [("apgd-metric", fake_run({0: 0.1, 1: 0.2}, {0: 0.0, 1: 0.0}))], clean, np.array([1, 1, 1, np.nan, 1.0]), np.full(5, 0.05)
    )
    row = epsilon_result(8, result, protocol)
    assert row.mAP.value == pytest.approx(100 * np.mean([0.1, 0.2, 0.7, 0.6]))
    assert row.mAP.low <= row.mAP.value <= row.mAP.high and row.mAP.high - row.mAP.low > 0
    assert row.rank1.value == pytest.approx(50.0)
    assert row.attacks[0].method == "apgd" and row.attacks[0].forwards == 40 and row.decisive == {"apgd-metric": 2, "clean": 2}
    assert epsilon_result(8, result, protocol) == row  # seeded


def test_flags_on_hand_made_numbers() -> None:
    assert flags.never_weaker({8: 10.0}, {8: {"ifgsm": 12.0, "pgd": 11.0}}).status == "ok"
    weaker = flags.never_weaker({8: 10.0}, {8: {"ifgsm": 9.0, "pgd": 11.0}})
    assert weaker.status == "flagged" and weaker.value == pytest.approx(1.0) and "ifgsm" in weaker.summary
    # every ε is checked: FGSM beating the ensemble at ε 5 trips it although ε 8 is fine
    at_five = flags.never_weaker({8: 10.0, 5: 20.0}, {8: {"fgsm": 30.0, "ifgsm": 12.0}, 5: {"fgsm": 18.5, "ifgsm": 21.0}})
    assert at_five.status == "flagged" and at_five.value == pytest.approx(1.5) and "ε 5: robust mAP 20.00" in at_five.summary
    assert "weaker than fgsm by 1.50" in at_five.summary and "ε 8: robust mAP 10.00" in at_five.summary
    assert flags.never_weaker({8: 10.0}, {}).status == flags.never_weaker({8: 10.0}, {8: {}}).status == "not measured"

    assert flags.eps_sweep({2: 50.0, 8: 20.0, 64: 2.0}, clean_map=70.0, chance_map=1.5).status == "ok"
    rising = flags.eps_sweep({2: 50.0, 8: 51.0, 64: 2.0}, clean_map=70.0, chance_map=1.5)
    assert rising.status == "flagged" and "from ε 2 to 8" in rising.summary
    stuck = flags.eps_sweep({2: 50.0, 64: 40.0}, clean_map=70.0, chance_map=1.5)
    assert stuck.status == "flagged" and stuck.threshold == pytest.approx(1.5 + 0.1 * 68.5)

    assert flags.convergence(10.0, 9.6).status == "ok" and flags.convergence(10.0, 9.5).status == "flagged"
    assert flags.black_box(10.0, 9.7).status == "ok" and flags.black_box(10.0, 4.0).status == "flagged"
    assert flags.zero_gradient(0, 90).status == "ok" and flags.zero_gradient(3, 90).value == pytest.approx(3 / 90)
    assert flags.zero_gradient(0, 0).status == "not measured"
    same = torch.randn(4, 8)
    assert flags.feature_change(same, same.clone()) == 0.0
    assert flags.randomness(flags.feature_change(same, same + 0.1 * torch.randn(4, 8)), eot=20).status == "flagged"


class Linear(nn.Module):
    feature_dim = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 8 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("name", [n for n in TRANSFORMS if counterpart(n) == "bpda"])
def test_deterministic_traps_mask_the_gradient_and_bpda_restores_it(name: str) -> None:
    x = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(0))
    plain, bpda, model = Preprocessed(Linear(), name), Preprocessed(Linear(), name, bpda=True), Linear()
    approximation = TRANSFORMS.get(name).approximation or (lambda z: z)
    assert plain.feature_dim == 3
    assert torch.equal(plain(x), bpda(x))  # same features
    assert not torch.equal(plain(x), model(x))  # the transform changes the input
    grads = []
    for m in (plain, bpda, lambda z: model(approximation(z))):
        leaf = x.clone().requires_grad_(True)
        m(leaf).sum().backward()
        grads.append(leaf.grad)
    assert grads[0].abs().sum() == 0  # masked
    assert torch.allclose(grads[1], grads[2])  # BPDA: the gradient of the model through the approximation (identity or smooth chain)
    assert grads[1].abs().sum() > 0


def test_noise_trap_is_random_and_refuses_bpda() -> None:
    x = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(0))
    noisy = Preprocessed(Linear(), "noise")
    assert flags.feature_change(noisy(x), noisy(x)) > flags.RANDOM_TOLERANCE
    assert counterpart("noise") == "eot"
    with pytest.raises(MetricAttackError, match="EOT"):
        Preprocessed(Linear(), "noise", bpda=True)


def test_protocol_versions_and_schema() -> None:
    standard, fast = VERSIONS.get("standard"), VERSIONS.get("fast")
    assert [s.name for s in standard.cascade] == ["apgd-metric", "apgd-margin-t", "apgd-self", "square"]
    assert standard.step("square").steps == 5000 and fast.step("square").steps == 1000
    # two starts of the untargeted APGD attacks in both (fast had one: its convergence check flagged, RESULTS.md)
    assert all(v.step(a).runs == 2 for v in (standard, fast) for a in ("apgd-metric", "apgd-self"))
    assert standard.step("apgd-margin-t").runs == 3 and fast.step("apgd-margin-t").runs == 1
    assert standard.epsilons[0] == fast.epsilons[0] == 8 and 5 in standard.epsilons
    for version in VERSIONS.names():  # never-weaker compares with the paper's three attacks (and PGD)
        assert {"fgsm", "ifgsm", "mifgsm", "pgd"} <= set(VERSIONS.get(version).reference_methods), version
    assert "- `robust`: one per ε of the protocol" in schema_markdown()
    assert {"robust", "flags", "cost", "protocol"} <= set(RobustnessResult.model_fields)


def test_schema_document_is_up_to_date() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "robustness-schema.md").read_text(encoding="utf-8")
    assert doc == schema_markdown(), "regenerate with python -m metricattack.robustness.result docs/robustness-schema.md"


def test_differentiable_jpeg_is_close_to_pils(tiny_dataset_root: Path) -> None:
    """The JPEG trap's BPDA stand-in against PIL's JPEG (quality 75), in 0..255 units. Measured: on
    random images (4 of 64x32, 1 of 37x29) max 32.0, mean 2.66, where JPEG itself moves a pixel by
    47.0 on average; on 16 synthetic pedestrians (128x64) max 16.6, mean 0.93, where JPEG moves one by
    5.03. The residue: libjpeg computes in integers, and a coefficient near half a step rounds the other way."""
    seeded = torch.Generator().manual_seed(0)
    noise = [torch.rand(4, 3, 64, 32, generator=seeded), torch.rand(1, 3, 37, 29, generator=seeded)]
    people = [torch.stack([read_image(p) for p in sorted((tiny_dataset_root / "bounding_box_test").glob("0*.jpg"))[:16]])]
    for images, max_error, mean_error in ((noise, 40, 3.5), (people, 24, 1.4)):
        error = torch.cat([(differentiable_jpeg(x) - jpeg(x)).abs().flatten() for x in images]) * 255
        change = torch.cat([(jpeg(x) - x).abs().flatten() for x in images]) * 255
        assert error.max() < max_error and error.mean() < mean_error and error.mean() < 0.3 * change.mean()
    x = people[0][:2].clone().requires_grad_(True)
    differentiable_jpeg(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_cost_counts_the_runs_the_cascade_skipped() -> None:
    """A run that attacked no query (every query already at chance) saved its whole budget: it once counted as
    nothing on both sides, and a cascade that skipped every run after the first reported a 0% saving."""
    protocol = VERSIONS.get("fast")
    clean = np.array([0.8, 0.6, 0.5])
    chance = np.full(3, 0.05)
    first = RunOutcome(np.arange(3), np.array([0.01, 0.02, 0.03]), np.zeros(3), forwards=3 * 102, backwards=3 * 101)
    skipped = RunOutcome(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), 0, 0)
    cascade = run_cascade(
        [("apgd-metric", lambda q: first), ("apgd-self", lambda q: skipped), ("square", lambda q: skipped)], clean, np.ones(3), chance
    )
    assert [e.attacked for e in cascade.log] == [3, 0, 0]
    cost = evaluation_cost(protocol, 1, [cascade], [9999, 999], valid=3, num_queries=3, seconds=1.0)
    assert step_budget(protocol.step("apgd-self"), 1) == (102, 101) and step_budget(protocol.step("square"), 1) == (1002, 0)
    assert (cost.cascade_forwards, cost.cascade_backwards) == (306, 303)
    assert (cost.without_cascade_forwards, cost.without_cascade_backwards) == (306 + 3 * 102 + 3 * 1002, 303 + 3 * 101)
    assert step_budget(protocol.step("apgd-self"), 4) == (4 * 101 + 1, 4 * 101)  # EOT: every step's samples


def test_the_convergence_check_doubles_every_apgd_attacks_starts() -> None:
    """The cascade's runs, then one more start per start of every APGD attack (per target for the targeted
    margin, each target's run from one start id), with start ids apart from the cascade's."""

    class Recorder:
        protocol = VERSIONS.get("standard")

        def step_run(self, step, run, eps, start, tag=""):
            return (step.name, run, start, tag)

    runs = [run for _, run in cascade_runs(Recorder(), 8, extra=True)]
    m, t, s = START_IDS["apgd-metric"], START_IDS["apgd-margin-t"], START_IDS["apgd-self"]
    cascade = [("apgd-metric", 0, m, ""), ("apgd-metric", 1, m + 1, "")] + [("apgd-margin-t", r, t, "") for r in range(3)]
    cascade += [("apgd-self", 0, s, ""), ("apgd-self", 1, s + 1, ""), ("square", 0, 0, "")]
    extra = [(name, run, start + EXTRA_START, "extra") for name, run, start, _ in cascade if name != "square"]
    assert runs == cascade + extra
    assert len(cascade_runs(Recorder(), 8, extra=False)) == len(cascade)
