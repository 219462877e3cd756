"""Attack methods and objectives on hand-made torch modules (no dataset, no checkpoint)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metricattack.attacks import perturb as perturb_module
from metricattack.attacks.methods import METHODS, paper_steps
from metricattack.attacks.methods.mifgsm import MIFGSM
from metricattack.attacks.methods.pgd import PGD, PGDOptions
from metricattack.attacks.objectives import ClassificationLoss, EnsembleLoss, MetricLoss, ReferenceTargets, metrics_per_model
from metricattack.attacks.ops import linf_255, per_image_l1_normalise, quantize
from metricattack.attacks.spec import AttackSpec, make_spec
from metricattack.attacks.threats import THREATS
from metricattack.attacks.threats.gallery import gallery_reference_sets
from metricattack.attacks.threats.query import query_reference_sets
from metricattack.attacks.threats.targeted import targeted_reference_sets
from metricattack.errors import MetricAttackError
from metricattack.metrics.distance import CosineMetric, EuclideanMetric, MahalanobisMetric


class TinyNet(nn.Module):
    """Resizes to its own input size, normalises, conv + pool + linear, L2-normalised features."""

    def __init__(self, dim: int = 8, input_size: tuple[int, int] = (16, 8), classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.input_size, self.feature_dim = input_size, dim
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 2, dim)
        self.cls = nn.Linear(dim, classes)
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False) - self.mean
        x = F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), (4, 2))
        return self.fc(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw(x), dim=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.raw(x))


def images(n: int = 6, h: int = 20, w: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g).float() / 255


def perturb(images: torch.Tensor, objective, spec: AttackSpec, **kwargs) -> torch.Tensor:
    """The adversarial images of :func:`metricattack.attacks.perturb.perturb`."""
    return perturb_module.perturb(images, objective, spec, **kwargs).images


def metric_loss(model: nn.Module, metric, refs_imgs: torch.Tensor, ref_sets) -> MetricLoss:
    with torch.no_grad():
        feats = model.eval()(refs_imgs)
    return MetricLoss(model, metric, ReferenceTargets.build(metric, feats, ref_sets))


# ---------------------------------------------------------------- spec
def test_paper_steps_and_spec_defaults() -> None:
    assert [paper_steps(e) for e in (1, 2, 4, 5, 8, 10, 16, 20)] == [1, 2, 5, 6, 10, 12, 20, 24]
    assert AttackSpec().options.model_dump() == {"alpha": 1.0, "steps": 6}
    assert AttackSpec(eps=10).resolved()["options"] == {"alpha": 1.0, "steps": 12}
    assert AttackSpec(eps=0.5).resolved()["options"] == {"alpha": 0.5, "steps": 1}  # alpha = min(1, eps)
    assert AttackSpec(method="fgsm", eps=8).resolved() == {"method": "fgsm", "eps": 8.0, "seed": 0, "objective": None, "options": {}}
    assert AttackSpec(method="mifgsm").resolved()["options"] == {"alpha": 1.0, "steps": 6, "mu": 1.0}
    assert AttackSpec(method="pgd").build().first_gradient_at_clean is False
    assert AttackSpec(method="pgd", random_start=False).build().first_gradient_at_clean
    assert AttackSpec(method="ifgsm").build().first_gradient_at_clean


def test_options_beside_or_under_options_are_one_spec_and_records_round_trip() -> None:
    flat = make_spec(method="mifgsm", eps=4, mu=0.5, steps=3)
    nested = AttackSpec.model_validate({"method": "mifgsm", "eps": 4, "options": {"mu": 0.5, "steps": 3}})
    assert flat == nested and flat.resolved() == AttackSpec.model_validate(flat.resolved()).resolved()
    assert flat.options_text() == "alpha=1 steps=3 mu=0.5"
    with pytest.raises(MetricAttackError, match="'mu' is given both"):
        make_spec(method="mifgsm", mu=1, options={"mu": 0.5})


@pytest.mark.parametrize(
    "values, culprit",
    [
        ({"eps": 0}, "eps"),
        ({"eps": -1}, "eps"),
        ({"eps": 256}, "eps"),
        ({"eps": 2, "alpha": 3}, "alpha"),
        ({"method": "cw"}, "method"),
        ({"method": "fgsm", "steps": 3}, "fgsm has no option 'steps'"),
        ({"method": "ifgsm", "random_start": True}, r"ifgsm has no option 'random_start' \(its options: alpha, steps\)"),
        ({"method": "mifgsm", "mu": -1}, "mifgsm option mu"),
        ({"epsilon": 5}, "epsilon"),
    ],
)
def test_spec_rejects_bad_values(values: dict, culprit: str) -> None:
    with pytest.raises(MetricAttackError, match=culprit):
        make_spec(**values)


def test_unknown_method_lists_the_registered_ones() -> None:
    assert {"fgsm", "ifgsm", "mifgsm", "pgd"} <= set(METHODS.names())
    with pytest.raises(MetricAttackError, match=f"unknown attack method 'cw'; available: {', '.join(METHODS.names())}"):
        make_spec(method="cw")


class MomentumPGDOptions(PGDOptions):
    mu: float = 1.0


class MomentumPGD(MIFGSM):
    """MI-FGSM from PGD's random start: a method made of two others' parts."""

    summary = "MI-FGSM from a random start"
    Options = MomentumPGDOptions
    start = PGD.start  # type: ignore[assignment]
    first_gradient_at_clean = PGD.first_gradient_at_clean


def test_a_registered_method_is_accepted_with_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method registered in METHODS (here: MI-FGSM from PGD's random start) is accepted by the spec and perturb."""
    monkeypatch.setitem(METHODS._items, "mipgd", MomentumPGD)
    spec = make_spec(method="mipgd", eps=4, seed=3)
    assert spec.resolved()["options"] == {"alpha": 1.0, "steps": paper_steps(4), "random_start": True, "mu": 1.0}
    x = images(3)

    def objective(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # gradient signs flip within the ε-ball
        return torch.sin(400 * a).flatten(1).sum(1)

    adv = perturb(x, objective, spec, indices=torch.arange(3))
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6
    for other in ("mifgsm", "pgd"):  # both flags act: neither the momentum nor the random start alone gives it
        assert not torch.equal(adv, perturb(x, objective, make_spec(method=other, eps=4, seed=3), indices=torch.arange(3)))
    with pytest.raises(MetricAttackError, match=f"available: {', '.join(METHODS.names())}$"):
        make_spec(method="bim")


def test_threat_registry_holds_the_paper_settings() -> None:
    paper = {"gallery": ("gallery", "nontargeted"), "targeted": ("gallery", "targeted"), "query": ("query", "query")}
    paper["classification"] = ("gallery", "classification")
    assert set(paper) <= set(THREATS.names())
    assert {n: (THREATS.get(n).split, THREATS.get(n).mode) for n in paper} == paper
    assert THREATS.get("targeted").minimise and THREATS.get("classification").needs_classifier


# ---------------------------------------------------------------- methods
def quadratic(weights: torch.Tensor):
    """loss_i = w_i · ‖x_i − 0.3‖² · (1 + i-dependent tilt): gradients differ in scale per image."""

    def objective(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return weights[idx] * ((x - 0.3) ** 2 * (1 + 0.1 * torch.arange(x[0].numel()).view_as(x[0]).sin())).flatten(1).sum(1)

    return objective


def test_fgsm_is_one_step_of_size_eps() -> None:
    x = images(4)
    before = x.clone()
    calls = []
    base = quadratic(torch.ones(4))

    def objective(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return base(z, idx)

    adv = perturb(x, objective, AttackSpec(method="fgsm", eps=8), indices=torch.arange(len(x)))
    assert len(calls) == 1
    assert torch.equal(x, before)
    step = (adv - x) * 255
    grad_sign = torch.sign(x - 0.3)
    expected = (x + 8 / 255 * grad_sign).clamp(0, 1)
    assert torch.equal(adv, expected)
    inside = (expected > 0) & (expected < 1) & (grad_sign != 0)
    assert torch.allclose(step[inside].abs(), torch.full_like(step[inside], 8.0), atol=1e-4)


@pytest.mark.parametrize("method", ["ifgsm", "mifgsm", "pgd"])
def test_iterative_methods_stay_in_ball_and_range(method: str) -> None:
    x = images(5)
    before = x.clone()
    adv = perturb(x, quadratic(torch.ones(5)), AttackSpec(method=method, eps=4, alpha=1), indices=torch.arange(len(x)))
    assert torch.equal(x, before)
    assert float(linf_255(adv, x).max()) <= 4 + 1e-4
    assert adv.min() >= 0 and adv.max() <= 1
    assert float(linf_255(adv, x).min()) > 0


def reference_mifgsm(x: torch.Tensor, objective, eps: float, alpha: float, steps: int, mu: float) -> torch.Tensor:
    """MI-FGSM written out image by image (so the normalisation is per image by construction)."""
    out = []
    for i in range(x.shape[0]):
        x0, xi, g = x[i : i + 1], x[i : i + 1].clone(), torch.zeros_like(x[i : i + 1])
        for _ in range(steps):
            xi.requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(xi, torch.tensor([i])).sum(), xi)
            g = mu * g + grad / grad.abs().sum() * grad.numel()
            xi = torch.minimum(torch.maximum(xi.detach() + alpha / 255 * g.sign(), x0 - eps / 255), x0 + eps / 255).clamp(0, 1)
        out.append(xi)
    return torch.cat(out)


def test_mifgsm_normalises_per_image() -> None:
    g = torch.randn(3, 3, 4, 5) * torch.tensor([1e-3, 1.0, 1e4]).view(3, 1, 1, 1)
    normed = per_image_l1_normalise(g)
    assert torch.allclose(normed.abs().mean(dim=(1, 2, 3)), torch.ones(3))
    assert torch.equal(per_image_l1_normalise(torch.zeros(2, 3, 2, 2)), torch.zeros(2, 3, 2, 2))
    # gradient scales differ by 10^8 across images and change over iterations (quadratic loss)
    x = images(3)
    objective = quadratic(torch.tensor([1e-4, 1.0, 1e4]))
    adv = perturb(x, objective, AttackSpec(method="mifgsm", eps=6, alpha=1, steps=8, mu=0.5), indices=torch.arange(len(x)))
    ref = reference_mifgsm(x, objective, 6, 1, 8, 0.5)
    assert torch.allclose(adv, ref, atol=1e-6)


def test_inactive_images_are_untouched_and_pgd_noise_is_per_image() -> None:
    x = images(4)
    spec = AttackSpec(method="pgd", eps=5, seed=3)
    active = torch.tensor([True, False, True, False])
    adv = perturb(x, quadratic(torch.ones(14)), spec, indices=torch.arange(10, 14), active=active)
    assert torch.equal(adv[~active], x[~active])
    alone = perturb(x[2:3], quadratic(torch.ones(14)), spec, indices=torch.tensor([12]))
    assert torch.equal(adv[2:3], alone)
    again = perturb(x, quadratic(torch.ones(14)), spec, indices=torch.arange(10, 14), active=active)
    assert torch.equal(adv, again)
    other_seed = perturb(x, quadratic(torch.ones(14)), spec.model_copy(update={"seed": 4}), indices=torch.arange(10, 14), active=active)
    assert not torch.equal(adv, other_seed)


def test_quantize_stays_on_grid_inside_ball() -> None:
    x = images(3)
    wild = x + (torch.rand_like(x) - 0.5) * 0.2
    for eps in (5.0, 2.5):
        q = quantize(wild, x, eps).float()
        assert (q - x * 255).abs().max() <= int(eps) + 1e-4
        assert q.min() >= 0 and q.max() <= 255


# ---------------------------------------------------------------- objectives
@pytest.mark.parametrize(
    "metric", [EuclideanMetric(), CosineMetric(), MahalanobisMetric(torch.randn(8, 5, generator=torch.Generator().manual_seed(2)))]
)
def test_metric_loss_equals_mean_distance_to_references(metric) -> None:
    model = TinyNet().eval()
    refs = images(5, seed=7)
    sets = [(0, 1, 2), (3,), (), (1, 4)]
    loss = metric_loss(model, metric, refs, sets)
    x = images(4)
    got = loss(x, torch.arange(4))
    with torch.no_grad():
        fr, fx = model(refs), model(x)
    for i, s in enumerate(sets):
        if s:
            want = metric.paired(fr[list(s)], fx[i : i + 1].expand(len(s), -1)).mean()
            assert torch.allclose(got[i], want, atol=1e-5)


def test_non_targeted_increases_and_targeted_decreases_distance() -> None:
    model = TinyNet().eval()
    refs, x = images(3, seed=5), images(3)
    loss = metric_loss(model, EuclideanMetric(), refs, [(0,), (1,), (2,)])
    idx = torch.arange(3)
    clean = loss(x, idx)
    pushed = loss(perturb(x, loss, AttackSpec(eps=8), indices=idx), idx)
    pulled = loss(perturb(x, loss, AttackSpec(eps=8), indices=idx, minimise=True), idx)
    assert (pushed > clean).all() and (pulled < clean).all()


def test_batch_of_many_identities_equals_identity_by_identity() -> None:
    model = TinyNet().eval()
    q_pids, g_pids = [1, 1, 2, 3, 3], [1, 2, 2, 3, -1, 0, 1, 3]
    probes, gallery = images(5, seed=9), images(8, h=22, w=11)
    sets = gallery_reference_sets(g_pids, q_pids)
    loss = metric_loss(model, EuclideanMetric(), probes, sets)
    active = torch.tensor([bool(s) for s in sets])
    spec = AttackSpec(method="mifgsm", eps=5)
    together = perturb(gallery, loss, spec, indices=torch.arange(8), active=active)
    for pid in (1, 2, 3):
        ids = torch.tensor([i for i, p in enumerate(g_pids) if p == pid])
        one = perturb(gallery[ids], loss, spec, indices=ids, active=active[ids])
        assert torch.equal(quantize(one, gallery[ids], 5), quantize(together[ids], gallery[ids], 5))
        assert torch.allclose(one, together[ids], atol=1e-6)
    assert torch.equal(together[4:6], gallery[4:6])  # junk and distractor untouched


def test_one_model_ensemble_equals_single_model() -> None:
    model = TinyNet().eval()
    loss = metric_loss(model, CosineMetric(), images(2, seed=4), [(0,), (1,), (0, 1)])
    x, spec = images(3), AttackSpec(method="ifgsm", eps=5)
    idx = torch.arange(len(x))
    assert torch.equal(perturb(x, loss, spec, indices=idx), perturb(x, EnsembleLoss([loss]), spec, indices=idx))


def test_ensemble_is_mean_of_models_with_own_input_sizes() -> None:
    a, b = TinyNet(seed=0).eval(), TinyNet(dim=6, input_size=(12, 6), seed=1).eval()
    refs, x, idx = images(2, seed=4), images(2), torch.arange(2)
    la, lb = metric_loss(a, EuclideanMetric(), refs, [(0,), (1,)]), metric_loss(b, EuclideanMetric(), refs, [(0,), (1,)])
    assert torch.allclose(EnsembleLoss([la, lb])(x, idx), (la(x, idx) + lb(x, idx)) / 2)


def test_shared_metric_of_one_space_rejects_models_of_other_dims() -> None:
    a, b = TinyNet(dim=8), TinyNet(dim=6)
    maha = MahalanobisMetric(torch.eye(8))
    with pytest.raises(MetricAttackError, match="8-d feature space.*6-d"):
        metrics_per_model([a, b], maha)
    assert len(metrics_per_model([a, b], EuclideanMetric())) == 2
    with pytest.raises(MetricAttackError, match="2 metrics for 1 models"):
        metrics_per_model([a], [maha, maha])


def test_non_psd_matrix_is_an_error() -> None:
    with pytest.raises(MetricAttackError, match="positive semidefinite"):
        MahalanobisMetric.from_matrix(torch.diag(torch.tensor([1.0, -1.0])), on_non_psd="error")


def test_classification_loss_uses_clean_prediction() -> None:
    model = TinyNet().eval()
    x, idx = images(4), torch.arange(4)
    loss = ClassificationLoss(model)
    loss.prepare(x, idx)
    with torch.no_grad():
        want = F.cross_entropy(model.classify(x), model.classify(x).argmax(1), reduction="none")
    assert torch.allclose(loss(x, idx), want)
    adv = perturb(x, loss, AttackSpec(eps=8), indices=torch.arange(len(x)))
    assert (loss(adv, idx) > want).all()
    with pytest.raises(MetricAttackError, match="classif"):
        ClassificationLoss(nn.Linear(2, 2))


def test_reference_sets() -> None:
    q_pids, q_cams = [1, 1, 2], [0, 1, 0]
    g_pids, g_cams = [1, 1, 2, 2, -1, 0, 3], [0, 2, 0, 1, 0, 1, 0]
    assert gallery_reference_sets(g_pids, q_pids) == [(0, 1), (0, 1), (2,), (2,), (), (), ()]
    assert query_reference_sets(q_pids, q_cams, g_pids, g_cams) == [(1,), (0, 1), (3,)]
    sets, targets = targeted_reference_sets(g_pids, q_pids, seed=0)
    assert targets[4:].tolist() == [-1, -1, -1]
    for g in range(4):
        assert q_pids[int(targets[g])] != g_pids[g] and sets[g] == (int(targets[g]),)
    assert torch.equal(targeted_reference_sets(g_pids, q_pids, seed=0)[1], targets)
    draws = {tuple(targeted_reference_sets([1] * 30, [1, 2, 3, 4], seed=s)[1].tolist()) for s in range(3)}
    assert len(draws) == 3


# ---------------------------------------------------------------- the paper's four methods, pinned
def legacy_perturb(x: torch.Tensor, objective, method: str, eps: float, seed: int, indices, active, minimise: bool) -> torch.Tensor:
    """The four methods as metricattack computed them before methods became objects (commit 185298d's
    ``attacks/methods.py``, written out): the redesign must give the same images bit for bit."""
    original, mask = x.detach(), active.to(x.dtype).view(-1, 1, 1, 1)
    eps_, alpha, direction = eps / 255.0, 1.0 / 255.0, -1.0 if minimise else 1.0
    steps = 1 if method == "fgsm" else max(1, int(min(eps + 4.0, 1.25 * eps)))
    z = original.clone()
    if method == "pgd":
        rows = []
        for index in indices.tolist():
            gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (1 << 62))
            rows.append(torch.rand(original.shape[1:], generator=gen, dtype=torch.float32))
        z = (original + mask * ((torch.stack(rows) * 2.0 - 1.0) * eps_)).clamp_(0.0, 1.0)
    momentum = torch.zeros_like(original)
    for _ in range(steps):
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(z, indices).sum(), z)
        if method == "fgsm":
            return (original + (direction * eps_) * mask * grad.sign()).clamp_(0.0, 1.0)
        if method == "mifgsm":
            momentum = 1.0 * momentum + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
            grad = momentum
        z = torch.minimum(torch.maximum(z + (direction * alpha) * mask * grad.sign(), original - eps_), original + eps_).clamp_(0.0, 1.0)
    return z.detach()


@pytest.mark.parametrize("method", ["fgsm", "ifgsm", "mifgsm", "pgd"])
@pytest.mark.parametrize("minimise", [False, True])
def test_paper_methods_equal_their_formulas_before_the_redesign_bit_for_bit(method: str, minimise: bool) -> None:
    model = TinyNet().eval()
    loss = metric_loss(model, EuclideanMetric(), images(3, seed=5), [(0,), (1, 2), (), (2,), (0, 1, 2)])
    x, indices, active = images(5), torch.arange(10, 15), torch.tensor([True, True, False, True, True])
    shifted = lambda z, idx: loss(z, idx - 10)  # noqa: E731 - positions 10..14 of a split, references of rows 0..4
    for eps in (2.0, 5.0, 8.0):
        got = perturb(x, shifted, make_spec(method=method, eps=eps, seed=7), indices=indices, active=active, minimise=minimise)
        assert torch.equal(got, legacy_perturb(x, shifted, method, eps, 7, indices, active, minimise))


# ---------------------------------------------------------------- what a method cannot get wrong
def test_zero_gradients_are_counted_per_image_and_calls_per_image() -> None:
    x = images(3)

    def objective(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # image 1's loss is constant: zero gradient
        return (z * torch.tensor([1.0, 0.0, 2.0]).view(3, 1, 1, 1)[: len(z)]).flatten(1).sum(1)

    result = perturb_module.perturb(x, objective, make_spec(method="ifgsm", eps=4), indices=torch.arange(3))
    assert result.counts.zero_gradient.tolist() == [0, 5, 0]
    assert result.counts.forward.tolist() == result.counts.backward.tolist() == [5, 5, 5]
    assert torch.equal(result.images[1], x[1])


def test_non_finite_losses_are_refused_naming_the_image() -> None:
    x = images(3)

    def objective(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return z.flatten(1).sum(1) * torch.tensor([1.0, float("nan"), 1.0])

    with pytest.raises(MetricAttackError, match=r"not finite \(nan\) on image 21 \(position 1 of its batch"):
        perturb(x, objective, make_spec(eps=4), indices=torch.arange(20, 23))


def test_the_caller_enforces_the_ball_inactive_images_and_gradient_free_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    from metricattack.attacks.methods import AttackMethod, MethodOptions

    class Wild(AttackMethod[MethodOptions]):
        summary = "jumps far outside the ball and, when it must not, takes a gradient"
        uses_gradient = False

        def run(self, problem):
            if problem.seed == 1:
                problem.gradient(problem.images)
            return problem.images + 0.5

    monkeypatch.setitem(METHODS._items, "wild", Wild)
    x, active = images(3), torch.tensor([True, False, True])
    adv = perturb(x, lambda z, idx: z.flatten(1).sum(1), make_spec(method="wild", eps=3), indices=torch.arange(3), active=active)
    assert torch.equal(adv[1], x[1]) and float(linf_255(adv, x).max()) <= 3 + 1e-4 and adv.max() <= 1
    with pytest.raises(RuntimeError, match="uses_gradient = False but took an input gradient"):
        perturb(x, lambda z, idx: z.flatten(1).sum(1), make_spec(method="wild", eps=3, seed=1), indices=torch.arange(3))
