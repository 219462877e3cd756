"""``metricattack.MetricAttack``: the one-call attack of a batch, on any feature extractor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import metricattack as ma
from metricattack.errors import MetricAttackError, MetricAttackWarning


class TinyNet(nn.Module):
    """A feature extractor without ``input_size`` or ``feature_dim``: any image size, features [B, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(24, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


@pytest.fixture()
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 24x12 images and, per image, three reference features [4, 3, 8]."""
    gen = torch.Generator().manual_seed(3)
    return torch.rand(4, 3, 24, 12, generator=gen), torch.randn(4, 3, 8, generator=gen)


def mean_distance(net: nn.Module, images: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (net(images)[:, None] - refs).pow(2).sum(-1).mean(1)


def test_non_targeted_pushes_away_within_eps(net: TinyNet, batch) -> None:
    images, refs = batch
    before = images.clone()
    net.train()
    adv = ma.MetricAttack(net, eps=4)(images, refs)
    assert torch.equal(images, before) and adv.data_ptr() != images.data_ptr()  # inputs untouched, new tensor
    assert net.training  # mode restored
    net.eval()
    assert (adv - images).abs().max() <= 4 / 255 + 1e-7 and adv.min() >= 0 and adv.max() <= 1
    assert (mean_distance(net, adv, refs) > mean_distance(net, images, refs)).all()


def test_targeted_pulls_toward(net: TinyNet, batch) -> None:
    images, refs = batch
    adv = ma.MetricAttack(net, method="mifgsm", eps=8, targeted=True)(images, refs)
    net.eval()
    assert (mean_distance(net, adv, refs) < mean_distance(net, images, refs)).all()


def test_list_references_of_any_length_and_empty_ones(net: TinyNet, batch) -> None:
    images, refs = batch
    atk = ma.MetricAttack(net, eps=4, steps=3)
    as_tensor = atk(images, refs)
    as_list = atk(images, [refs[0], refs[1], refs[2], refs[3]])
    assert torch.equal(as_tensor, as_list)
    ragged = atk(images, [refs[0, :1], refs[1], torch.empty(0, 8), refs[3, :2]])
    assert torch.equal(ragged[2], images[2])  # no reference: not attacked
    assert torch.equal(ragged[1], as_tensor[1])  # the other images do not change image 1's attack
    assert not torch.equal(ragged[0], as_tensor[0])  # image 0 has other references now


def test_batch_independent(net: TinyNet, batch) -> None:
    images, refs = batch
    atk = ma.MetricAttack(net, method="mifgsm", eps=4, steps=3)
    together = atk(images, refs)
    alone = torch.cat([atk(images[i : i + 1], refs[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::metricattack.metrics.distance.NonPSDMatrixWarning")  # KISSME on random features
@pytest.mark.parametrize("kind", ["xqda", "kissme"])
def test_learned_metric_object(kind: str, net: TinyNet, batch) -> None:
    images, refs = batch
    torch.manual_seed(1)
    feats, pids = torch.randn(60, 8), torch.arange(12).repeat_interleave(5)
    fit = ma.fit_learned(kind, feats, pids)
    atk = ma.MetricAttack(net, metric=fit, eps=4)
    assert atk.metric is fit.metric
    adv = atk(images, refs)
    net.eval()
    with torch.no_grad():
        d = fit.metric.paired
        assert d(net(adv), refs[:, 0]).mean() > d(net(images), refs[:, 0]).mean()
    with pytest.raises(MetricAttackError, match=r"expects reference features of dimension 8, got dimension 5"):
        atk(images, torch.randn(4, 2, 5))


def test_wrong_inputs_are_one_clear_error(net: TinyNet, batch) -> None:
    images, refs = batch
    atk = ma.MetricAttack(net)
    with pytest.raises(MetricAttackError, match=r"values in \[0, 1\].*not normalised"):
        atk(images * 2 - 1, refs)
    with pytest.raises(MetricAttackError, match=r"\[B, 3, H, W\]"):
        atk(images[0], refs)
    with pytest.raises(MetricAttackError, match="references for 3 images but 4 images"):
        atk(images, refs[:3])
    with pytest.raises(MetricAttackError, match=r"references\[:, None\]"):
        atk(images, refs[:, 0])
    with pytest.raises(MetricAttackError, match="the model gives 8-d features but the references are 6-d"):
        atk(images, torch.randn(4, 2, 6))
    with pytest.raises(MetricAttackError, match="must be fitted first"):
        ma.MetricAttack(net, metric="xqda")
    with pytest.raises(MetricAttackError, match=r"alpha \(step size 1\) must not exceed eps \(0.5\)"):
        ma.MetricAttack(net, eps=0.5, alpha=1)
    with pytest.raises(MetricAttackError, match="fgsm has no option 'alpha'"):
        ma.MetricAttack(net, method="fgsm", alpha=1)
    with pytest.raises(MetricAttackError, match="method"):
        ma.MetricAttack(net, method="cw")


def test_repr_shows_the_resolved_attack(net: TinyNet) -> None:
    assert repr(ma.MetricAttack(net, eps=5)) == (
        "MetricAttack(model=TinyNet, metric='euclidean', method='ifgsm', eps=5, targeted=False, seed=0, alpha=1, steps=6)"
    )
    assert repr(ma.MetricAttack(net, method="mifgsm", eps=8, mu=0.5)).endswith("seed=0, alpha=1, steps=10, mu=0.5)")


def test_the_engine_refuses_a_slice_without_its_indices(net: TinyNet, batch) -> None:
    """The trap of the old API: ``perturb(images[2:], loss, spec)`` used the references of images 0 and 1."""
    from metricattack.attacks.objectives import MetricLoss, ReferenceTargets
    from metricattack.metrics.distance import EuclideanMetric

    images, refs = batch
    metric = EuclideanMetric()
    targets = ReferenceTargets.build(metric, refs.reshape(12, 8), [tuple(range(3 * i, 3 * i + 3)) for i in range(4)])
    from metricattack.attacks.perturb import perturb

    loss, spec = MetricLoss(net.eval(), metric, targets), ma.AttackSpec(eps=4, steps=2)
    with pytest.raises(TypeError, match="indices"):
        perturb(images[2:], loss, spec)  # type: ignore[call-arg]
    with pytest.raises(MetricAttackError, match=r"indices 2..5 are outside the 4 images"):
        perturb(images, loss, spec, indices=torch.arange(2, 6))
    sliced = perturb(images[2:], loss, spec, indices=torch.arange(2, 4)).images
    assert torch.equal(sliced, ma.MetricAttack(net, eps=4, steps=2)(images, refs)[2:])


def test_public_names_resolve() -> None:
    for name in ma.__all__:
        assert getattr(ma, name) is not None
    with pytest.raises(AttributeError):
        ma.no_such_name  # noqa: B018
    assert set(ma.__all__) == {"__version__", *ma._PUBLIC}


# ----------------------------------------------------------------------------- inputs the API refuses or keeps (issue 19)
def test_non_finite_images_references_and_outputs_name_the_image(net: TinyNet, batch) -> None:
    images, refs = batch
    atk = ma.MetricAttack(net, eps=4, steps=2)
    bad = images.clone()
    bad[2, 0, 3, 3] = float("nan")
    with pytest.raises(MetricAttackError, match=r"images \[2\] contain NaN or inf"):
        atk(bad, refs)
    bad_refs = refs.clone()
    bad_refs[1, 2, 0] = float("inf")
    with pytest.raises(MetricAttackError, match="references of image 1 contain NaN or inf"):
        atk(images, bad_refs)

    class NaNOnThird(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = net(x)
            return torch.where((x.flatten(1)[:, :1] == images[3].flatten()[0]), torch.full_like(out, float("nan")), out)

    with pytest.raises(MetricAttackError, match=r"not finite \(nan\) on image 3"):
        ma.MetricAttack(NaNOnThird(), eps=4, steps=2)(images, refs)


@pytest.mark.parametrize("kwargs, message", [({"targeted": "no"}, "targeted must be True or False, got 'no'"), ({"targeted": 1}, "got 1")])
def test_flags_take_only_real_bools(net: TinyNet, kwargs: dict, message: str) -> None:
    with pytest.raises(MetricAttackError, match=message):
        ma.MetricAttack(net, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": True}, "eps must be a number, got True"),
        ({"steps": True}, "steps must be a number, got True"),
        ({"method": "pgd", "random_start": "no"}, "random_start must be true or false, got 'no'"),
    ],
)
def test_numbers_are_never_bools(net: TinyNet, kwargs: dict, message: str) -> None:
    with pytest.raises(MetricAttackError, match=message):
        ma.MetricAttack(net, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_the_output_keeps_its_dtype_within_eps_exactly(net: TinyNet, batch, dtype: torch.dtype) -> None:
    images, refs = batch
    x = images.to(dtype)
    adv = ma.MetricAttack(net, eps=5, steps=3)(x, refs)
    assert adv.dtype == dtype and adv.shape == x.shape
    assert float((adv.double() - x.double()).abs().max()) <= 5 / 255 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert not torch.equal(adv, x)


def test_in_dtype_steps_back_what_rounding_pushed_out_of_the_ball() -> None:
    from metricattack.attacks.api import in_dtype

    x = torch.linspace(0, 0.98, 500).to(torch.float16)
    radius = 5 / 255
    pushed = x.float() + radius  # at the edge of the ball; in float16 the edge rounds outward for some pixels
    outward = (pushed.to(torch.float16).double() - x.double()).abs() > radius
    assert 0 < int(outward.sum()) < len(x)  # the cast alone breaks the bound for some
    fitted = in_dtype(pushed, x, radius)
    assert fitted.dtype == torch.float16 and float((fitted.double() - x.double()).abs().max()) <= radius and float(fitted.max()) <= 1
    assert torch.equal(fitted[~outward], pushed.to(torch.float16)[~outward])  # the others are the plain cast


def test_an_empty_batch_gives_an_empty_result(net: TinyNet) -> None:
    empty = torch.empty(0, 3, 24, 12, dtype=torch.float16)
    out = ma.MetricAttack(net, eps=4)(empty, torch.empty(0, 3, 8))
    assert out.shape == (0, 3, 24, 12) and out.dtype == torch.float16
    assert ma.MetricAttack(net, eps=4)(empty, []).shape == (0, 3, 24, 12)


def test_images_a_zero_gradient_leaves_unchanged_are_named(batch) -> None:
    images, refs = batch

    class Blind(nn.Module):  # ignores images 1 and 3 (their features are constants): zero input gradient
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keep = (x.flatten(1)[:, :1] != images[1].flatten()[0]) & (x.flatten(1)[:, :1] != images[3].flatten()[0])
            return x.mean((2, 3)).repeat(1, 3)[:, :8] * keep.float()

    atk = ma.MetricAttack(Blind(), eps=4, steps=2)
    with pytest.warns(MetricAttackWarning, match=r"images \[1, 3\] were left unchanged"):
        adv = atk(images, refs)
    assert torch.equal(adv[1], images[1]) and atk.counts is not None and atk.counts.zero_gradient.tolist() == [0, 2, 0, 2]
