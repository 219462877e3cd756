"""The transfer boosters (DI-, TI-, SI-NI-, VMI-, VNI-FGSM): their formulas on hand-made inputs, the
papers' defaults, their cost, and parity with torchattacks 3.5.1.

Parity. With a cross-entropy objective (our ``ClassificationLoss``: the clean prediction as the label)
on the same model and images, each of our methods gives *bit-identical* images to torchattacks'
DIFGSM, TIFGSM, SINIFGSM, VMIFGSM and VNIFGSM, once three things are aligned:

* randomness: torchattacks draws from torch's global generator, for the whole batch; we draw per image
  from ``problem.generators(purpose)``, in torchattacks' order (DI: resized size, top and left padding,
  then the coin; VMI/VNI: N neighbours per step). Running torchattacks one image at a time with the
  global generator seeded as that image's generator (``image_seed(seed, index, purpose)``) draws the
  same numbers. VMI/VNI's ``torch.randn_like(x).uniform_(a, b)`` first fills the tensor with normal
  draws it then overwrites (the distribution is the paper's uniform); ``randn_like`` is replaced by
  ``empty_like`` in the test so that its uniform draws are the only ones, as ours.
* torchattacks' departures from the papers, which we do not follow by default, set as options:
  DI ``resize_rate=0.9`` (it shrinks; Xie et al. enlarge by 330/299) and ``pad_value=0`` (black; the
  paper pads zeros in its [−1, 1] input space, mid-grey); TI ``nsig=3`` (σ = k/3 as the authors' code;
  the paper's σ = k/√3), ``kernel_reference`` = the image's size (a fixed kernel in the image's
  pixels; ours scales with the model's input) and its default input diversity (p = 0.5, rate 0.9);
  SI ``scale_center=0`` (x/2^i on [0, 1] pixels, toward black; the paper's x/2^i on [−1, 1] inputs
  shrinks toward mid-grey); VMI/VNI ``samples=5`` (the paper's N is 20). torchattacks' DI also squashes
  every image to a square (rnd × rnd from the width) where we keep the aspect ratio: the test images
  are square, where both agree.
* the projection's arithmetic: torchattacks projects as ``x + clip(x' − x, −ε, ε)``, we as
  ``clip(x', x − ε, x + ε)``. They agree to the bit whenever ``x' − x`` is exact, i.e. (Sterbenz)
  whenever ``x'`` is within a factor 2 of ``x``: the parity images lie in [0.1, 0.9], ε = 8/255. On
  images that reach 0 the two roundings differ on a few dark pixels; measured on this test's images in
  [0, 1] the largest difference is 1.9e-9 (a thousandth of one 8-bit step), checked below.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from metricattack.attacks.methods import METHODS
from metricattack.attacks.methods.difgsm import DIOptions, draw_resize
from metricattack.attacks.methods.sinifgsm import scale_copy
from metricattack.attacks.methods.tifgsm import TIOptions, kernel_radii, translation_kernel
from metricattack.attacks.objectives import ClassificationLoss
from metricattack.attacks.ops import image_seed
from metricattack.attacks.perturb import perturb
from metricattack.attacks.problem import CallCounts, ModelInfo
from metricattack.attacks.spec import make_spec

BOOSTERS = ("difgsm", "tifgsm", "sinifgsm", "vmifgsm", "vnifgsm")


class PixelNet(nn.Module):
    """A 5-class classifier on 12x12 inputs (antialiased resize, a pixel-wise tanh, per-image weighted
    sums): an image's logits and gradient are the same bit for bit whatever the batch."""

    input_size = (12, 12)

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(0)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(3 * F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True) - 1.5)
        return (z.unsqueeze(1) * self.weight).sum((2, 3, 4))

    forward = classify  # torchattacks calls the model for logits


def square_images(low: float, n: int = 4) -> torch.Tensor:
    """``n`` random 16x16 images with pixels in [low, 1 − low]."""
    return low + (1 - 2 * low) * torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def ours(model: PixelNet, x: torch.Tensor, method: str, seed: int = 3, **options: object) -> tuple[torch.Tensor, CallCounts]:
    loss = ClassificationLoss(model)
    indices = torch.arange(len(x))
    loss.prepare(x, indices)
    spec = make_spec(method=method, eps=8, seed=seed, alpha=2, steps=5, **options)
    result = perturb(x, loss, spec, indices=indices, models=(ModelInfo.of(model),))
    return result.images, result.counts


def theirs(model: PixelNet, x: torch.Tensor, attack: type, purpose: str | None, seed: int = 3, **kwargs: object) -> torch.Tensor:
    """torchattacks one image at a time, its global generator seeded as our generator of that image."""
    labels = model(x).argmax(1)
    out = []
    for i in range(len(x)):
        if purpose is not None:
            torch.manual_seed(image_seed(seed, i, purpose))
        out.append(attack(model, eps=8 / 255, alpha=2 / 255, steps=5, **kwargs)(x[i : i + 1], labels[i : i + 1]))
    return torch.cat(out)


# (our method, our options reproducing torchattacks, torchattacks' attack, its arguments, our generator purpose)
PARITY = [
    ("difgsm", {"resize_rate": 0.9, "pad_value": 0}, torchattacks.DIFGSM, {}, "diversity"),
    ("difgsm", {"resize_rate": 1.1, "pad_value": 0, "mu": 1}, torchattacks.DIFGSM, {"resize_rate": 1.1, "decay": 1.0}, "diversity"),
    (
        "tifgsm",
        {"kernel_size": 7, "kernel_reference": 16, "nsig": 3, "diversity_prob": 0.5, "resize_rate": 0.9, "pad_value": 0, "mu": 1},
        torchattacks.TIFGSM,
        {"len_kernel": 7, "decay": 1.0},
        "diversity",
    ),
    ("sinifgsm", {"scale_center": 0}, torchattacks.SINIFGSM, {}, None),
    ("vmifgsm", {"samples": 5}, torchattacks.VMIFGSM, {}, "variance"),
    ("vnifgsm", {"samples": 5}, torchattacks.VNIFGSM, {}, "variance"),
]


@pytest.mark.parametrize("method, options, attack, kwargs, purpose", PARITY, ids=[f"{p[0]}-{i}" for i, p in enumerate(PARITY)])
def test_parity_with_torchattacks(
    monkeypatch: pytest.MonkeyPatch, method: str, options: dict, attack: type, kwargs: dict, purpose: str | None
) -> None:
    """Bit-identical images (module docstring: what is aligned and why); on images that reach 0,
    within the projection's rounding."""
    monkeypatch.setattr(torch, "randn_like", torch.empty_like)
    model = PixelNet().eval()
    x = square_images(0.1)
    mine, _ = ours(model, x, method, **options)
    assert torch.equal(mine, theirs(model, x, attack, purpose, **kwargs))
    assert (mine - x).abs().max() > 7.9 / 255  # the attack moved the images to the ball's edge
    if purpose is not None:  # the aligned randomness matters: another seed gives other images
        assert not torch.equal(mine, ours(model, x, method, seed=4, **options)[0])
    full = square_images(0.0)
    assert (ours(model, full, method, **options)[0] - theirs(model, full, attack, purpose, **kwargs)).abs().max() < 1e-8


def test_tifgsm_kernel_equals_torchattacks_at_a_fixed_size() -> None:
    """With the kernel in the image's own pixels and nsig = 3, our kernel is torchattacks' to the bit."""
    for size in (3, 7, 15):
        kernel = translation_kernel((32, 32), [ModelInfo((32, 32))], TIOptions(kernel_size=size, kernel_reference=32, nsig=3))
        assert torch.equal(kernel, torchattacks.TIFGSM(PixelNet(), len_kernel=size, nsig=3).stacked_kernel)


# ---------------------------------------------------------------- defaults: the papers'
def test_defaults_are_the_papers() -> None:
    def options(method: str) -> dict:
        return make_spec(method=method, eps=8).resolved()["options"]

    common = {"alpha": 1.0, "steps": 10}  # Bai et al.'s α = 1, n = min(ε + 4, 1.25 ε), as every method here
    assert options("difgsm") == {**common, "mu": 0.0, "diversity_prob": 0.5, "resize_rate": 330 / 299, "pad_value": 0.5}
    assert options("tifgsm") == {
        **common,
        "mu": 0.0,
        "diversity_prob": 0.0,
        "resize_rate": 330 / 299,
        "pad_value": 0.5,
        "kernel_size": 15,
        "kernel_reference": 299,
        "nsig": math.sqrt(3),
    }
    assert options("sinifgsm") == {**common, "mu": 1.0, "scales": 5, "scale_center": 0.5}
    assert options("vmifgsm") == options("vnifgsm") == {**common, "mu": 1.0, "samples": 20, "beta": 1.5}
    assert [METHODS.get(m).label for m in BOOSTERS] == ["DI-FGSM", "TI-FGSM", "SI-NI-FGSM", "VMI-FGSM", "VNI-FGSM"]
    with pytest.raises(Exception, match="resize_rate 1 would never transform"):
        make_spec(method="difgsm", resize_rate=1)


def test_the_papers_defaults_differ_from_torchattacks_settings() -> None:
    """Each departure we do not follow changes the result (else the parity test would not show it)."""
    model, x = PixelNet().eval(), square_images(0.1)
    for method, torchattacks_like in [
        ("difgsm", {"resize_rate": 0.9, "pad_value": 0}),
        ("difgsm", {"pad_value": 0}),
        ("sinifgsm", {"scale_center": 0}),
    ]:
        assert not torch.equal(ours(model, x, method)[0], ours(model, x, method, **torchattacks_like)[0]), (method, torchattacks_like)
    # TI: the paper's σ = k/√3 is a flatter kernel than torchattacks' k/3 (on this smooth model both give the same signs)
    paper, code = (translation_kernel((16, 16), [], TIOptions(kernel_size=7, kernel_reference=16, nsig=n)) for n in (math.sqrt(3), 3))
    assert paper.shape == code.shape == (3, 1, 7, 7) and paper[0, 0, 3, 3] < code[0, 0, 3, 3] and paper[0, 0, 0, 0] > code[0, 0, 0, 0]


# ---------------------------------------------------------------- formulas on hand-made inputs
def linear(weights: torch.Tensor):
    """loss_i = Σ w·x: a constant gradient w (±1: sums of copies stay exact)."""
    return lambda x, idx: (x * weights).flatten(1).sum(1)


def wavy(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gradient signs flip within the ε-ball, so where a gradient is taken changes the step."""
    return torch.sin(400 * x).flatten(1).sum(1)


def run(method: str, x: torch.Tensor, objective, **options: object) -> tuple[torch.Tensor, CallCounts]:
    result = perturb(x, objective, make_spec(method=method, eps=6, seed=1, steps=4, **options), indices=torch.arange(len(x)))
    return result.images, result.counts


def test_boosters_reduce_to_the_paper_methods_when_their_addition_is_off() -> None:
    """DI with p = 0 and TI with a 1-px kernel are MI-FGSM; μ = 0 is I-FGSM; SI with one copy is NI-FGSM;
    on a linear loss the variance vanishes and VMI / VNI are MI / NI-FGSM, bit for bit."""
    x = square_images(0.1, n=3)
    weights = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5)).sign()
    tilted = lambda z, idx: ((z - 0.3) ** 2 * weights).flatten(1).sum(1)  # noqa: E731 - gradients vary with z
    mifgsm, _ = run("mifgsm", x, tilted)
    assert torch.equal(run("difgsm", x, tilted, diversity_prob=0, mu=1)[0], mifgsm)
    assert torch.equal(run("tifgsm", x, tilted, kernel_size=1, mu=1)[0], mifgsm)
    assert torch.equal(run("difgsm", x, tilted, diversity_prob=0)[0], run("ifgsm", x, tilted)[0])
    assert not torch.equal(run("sinifgsm", x, wavy, scales=1)[0], run("mifgsm", x, wavy)[0])  # the look-ahead acts
    assert torch.equal(run("vmifgsm", x, linear(weights), samples=4)[0], run("mifgsm", x, linear(weights))[0])
    assert torch.equal(run("vnifgsm", x, linear(weights), samples=4)[0], run("sinifgsm", x, linear(weights), scales=1)[0])
    assert not torch.equal(run("vmifgsm", x, wavy, samples=4)[0], run("mifgsm", x, wavy)[0])  # the variance acts on a curved loss


def test_cost_per_image_in_forward_and_backward_passes() -> None:
    """DI and TI: one pass per step; SI: one per scale copy; VMI / VNI: 1 + N, but not the last
    step's N (its variance would never be used)."""
    x = square_images(0.1, n=2)
    objective = lambda z, idx: z.flatten(1).sum(1)  # noqa: E731 - any input size (DI's)
    for method, options, per_image in [
        ("difgsm", {}, 4),
        ("tifgsm", {"diversity_prob": 0.5}, 4),
        ("sinifgsm", {"scales": 3}, 12),
        ("vmifgsm", {"samples": 5}, 4 + 5 * 3),
        ("vnifgsm", {"samples": 5}, 4 + 5 * 3),
    ]:
        _, counts = run(method, x, objective, **options)
        assert counts.forward.tolist() == counts.backward.tolist() == [per_image] * 2, method


def test_input_diversity_keeps_the_aspect_ratio_and_the_papers_sizes() -> None:
    """On a 64x32 pedestrian, rate 330/299: resized to rnd ∈ [64, 70) rows and rnd/2 columns, padded to
    70x35 (the paper: 299 -> [299, 330), padded to 330); below 1 it shrinks and pads back."""
    options = DIOptions(diversity_prob=1.0)
    seen = set()
    for seed in range(60):
        resize = draw_resize(torch.Generator().manual_seed(seed), 64, 32, options)
        assert resize is not None and resize.out == (70, 35)
        (h, w), (top, left) = resize.size, (resize.top, resize.left)
        assert 64 <= h < 70 and w == min(int(h / 2 + 0.5), 34) and 0 <= top < 70 - h and 0 <= left < 35 - w
        seen.add(h)
    assert seen == set(range(64, 70))
    shrink = draw_resize(torch.Generator().manual_seed(0), 64, 32, DIOptions(diversity_prob=1.0, resize_rate=0.9))
    assert shrink is not None and shrink.out == (64, 32) and 57 <= shrink.size[0] < 64
    assert draw_resize(torch.Generator().manual_seed(0), 64, 32, DIOptions(diversity_prob=0.0)) is None
    padded = resize.apply(torch.ones(1, 3, 64, 32), 0.5)  # the last draw's: the resized image in a grey frame
    inside = torch.zeros(70, 35, dtype=torch.bool)
    inside[top : top + h, left : left + w] = True
    assert padded.shape == (1, 3, 70, 35) and padded[0][:, ~inside].eq(0.5).all() and torch.allclose(padded[0][:, inside], torch.ones(1))


def test_input_diversity_transforms_each_image_on_its_own() -> None:
    """An image's gradient through DI does not depend on the other images of its batch, also when some
    are transformed and others not (two groups of calls)."""
    model = PixelNet().eval()
    x = torch.cat([square_images(0.1, n=3), square_images(0.2, n=3)])
    loss = ClassificationLoss(model)
    loss.prepare(x, torch.arange(6))
    spec = make_spec(method="difgsm", eps=8, seed=2, steps=3)
    together = perturb(x, loss, spec, indices=torch.arange(6)).images
    for i in range(6):
        assert torch.equal(perturb(x[i : i + 1], loss, spec, indices=torch.tensor([i])).images, together[i : i + 1])


def test_tifgsm_kernel_scales_with_the_models_input_size() -> None:
    """Radius (k − 1)/2 · √(h·w)/299 at the model's input, mapped to the image's pixels; Gaussian with
    σ = radius/√3 (the paper), normalised."""
    options = TIOptions()
    # 64x32 images, a 64x32 model: 7·√2048/299 = 1.06 px -> a 3x3 kernel
    r = 7 * math.sqrt(64 * 32) / 299
    assert kernel_radii((64, 32), [ModelInfo((64, 32))], options) == pytest.approx((r, r))
    kernel = translation_kernel((64, 32), [ModelInfo((64, 32))], options)
    side = torch.tensor([math.exp(-1.5 / r**2), 1.0, math.exp(-1.5 / r**2)], dtype=torch.float64)  # exp(-(i·√3/r)²/2), i = ±1
    want = torch.outer(side, side) / torch.outer(side, side).sum()
    assert kernel.shape == (3, 1, 3, 3) and torch.allclose(kernel[0, 0].double(), want, atol=1e-7)
    # 128x64 images, a 256x128 model (Market-1501's sizes): 7·√(256·128)/299·(128/256) = 2.12 px -> 5x5
    assert translation_kernel((128, 64), [ModelInfo((256, 128))], options).shape == (3, 1, 5, 5)
    # a 224x224 model on 224x224 images: 15 px at 299 is 11.2 px at 224 -> 11x11 (13 at the reference itself)
    assert translation_kernel((224, 224), [ModelInfo((224, 224))], options).shape[-2:] == (11, 11)
    assert translation_kernel((299, 299), [ModelInfo(None)], options).shape[-2:] == (15, 15)
    # an ensemble averages the radii; a model of another aspect ratio stretches its kernel
    wide = kernel_radii((64, 32), [ModelInfo((32, 32))], options)
    assert wide[0] == pytest.approx(2 * wide[1])  # a square model stretches 2:1 images vertically: a taller kernel
    assert kernel_radii((64, 32), [ModelInfo((64, 32)), ModelInfo((32, 32))], options) == pytest.approx(
        ((r + wide[0]) / 2, (r + wide[1]) / 2)
    )
    assert torch.allclose(translation_kernel((64, 32), [ModelInfo((32, 32))], options).sum((1, 2, 3)), torch.ones(3))


def test_scale_copies_shrink_toward_the_center() -> None:
    x = torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(scale_copy(x, 1, 0.5), torch.tensor([0.25, 0.5, 0.75]))
    assert torch.equal(scale_copy(x, 2, 0.0), torch.tensor([0.0, 0.125, 0.25]))
