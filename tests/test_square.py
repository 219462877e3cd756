"""Square attack: the paper's schedule, per-image draws, forward passes only, and parity with
torchattacks 3.5.1's Square (bit-identical images when its random draws are replayed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metricattack.attacks.margin import QueryGallery, RankingMargin
from metricattack.attacks.methods.square import square_fraction, square_run, square_side
from metricattack.attacks.perturb import perturb
from metricattack.attacks.problem import AttackProblem
from metricattack.attacks.spec import make_spec
from metricattack.data.layouts import load_dataset
from metricattack.data.loading import read_image
from metricattack.evaluation.features import extract_features
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.checkpoint import load_model


class SmallNet(nn.Module):
    """A bias-free conv + linear classifier on 16x16 images whose predictions depend on the input."""

    def __init__(self, seed: int = 0, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(64, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.avg_pool2d(torch.relu(self.conv((x - 0.5) * 4)), 4).flatten(1))


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return features.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise AssertionError("Square asked for a gradient")


class ForwardOnly(nn.Module):
    """A model whose backward pass raises."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NoBackward.apply(self.model(x))


def test_schedule_of_the_paper_rescaled() -> None:
    # 10,000 iterations: p_init until 10, halved after 10, 50, 200, ..., 8000
    assert [square_fraction(i, 10_000) for i in (0, 10, 11, 50, 51, 8000, 8001, 9999)] == [
        0.8,
        0.8,
        0.4,
        0.4,
        0.2,
        0.8 / 256,
        0.8 / 512,
        0.8 / 512,
    ]
    # 1,000 iterations: the same marks at a tenth
    assert square_fraction(1, 1000) == 0.8 and square_fraction(2, 1000) == 0.4 and square_fraction(801, 1000) == 0.8 / 512
    assert square_side(0.8, 16, 16) == 14 and square_side(0.001, 16, 16) == 1
    assert square_side(0.8, 64, 32) == 32  # round(√(0.8·2048)) = 40, clipped to the image's width


class Scored:
    """Cross-entropy w.r.t. the clean prediction, with a goal: the image is misclassified (margin ≤ 0)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, goal: bool = True) -> None:
        self.model, self.labels, self.goal = model, model(x).argmax(1), goal

    def __call__(self, im: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(im), self.labels[idx], reduction="none")

    def score(self, im: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(im)
        rows, y = torch.arange(len(idx)), self.labels[idx]
        others = logits.clone()
        others[rows, y] = -float("inf")
        done = logits[rows, y] - others.amax(1) <= 0
        return F.cross_entropy(logits, y, reduction="none"), done & self.goal


def test_square_stays_in_the_ball_draws_per_image_and_raises_the_loss() -> None:
    model = SmallNet().eval()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    objective = Scored(model, x, goal=False)
    spec = make_spec("test", method="square", eps=8, seed=2, queries=40)
    whole = perturb(x, objective, spec, indices=torch.arange(6))
    part = perturb(x[4:], objective, spec, indices=torch.arange(4, 6))
    assert torch.equal(part.images, whole.images[4:])
    assert (whole.images - x).abs().max() <= 8 / 255 + 1e-7 and whole.images.min() >= 0 and whole.images.max() <= 1
    assert (objective(whole.images, torch.arange(6)) > objective(x, torch.arange(6))).all()
    assert whole.counts.forward.tolist() == [41] * 6 and whole.counts.backward.sum() == 0


@pytest.mark.slow
def test_square_lowers_map_of_a_model_whose_backward_raises(tiny_dataset_root: Path, tiny_model_checkpoint: Path) -> None:
    dataset = load_dataset("folder", tiny_dataset_root)
    model = ForwardOnly(load_model(tiny_model_checkpoint)).eval()
    gallery = extract_features(model, dataset.gallery, batch_size=64, progress=False)
    side = QueryGallery(
        EuclideanMetric(),
        gallery,
        [r.pid for r in dataset.query],
        [r.camid for r in dataset.query],
        [r.pid for r in dataset.gallery],
        [r.camid for r in dataset.gallery],
    )
    queries = torch.nonzero(side.has_match()).flatten()[:8]
    clean = torch.stack([read_image(dataset.query[i].path) for i in queries.tolist()])
    with torch.no_grad():
        before = side.ap(side.distances(model(clean)), queries)
    result = perturb(clean, RankingMargin(model, side), make_spec("test", method="square", eps=8, queries=200), indices=queries)
    with torch.no_grad():
        after = side.ap(side.distances(model(result.images)), queries)
    assert np.nanmean(after) < np.nanmean(before) - 0.05
    assert (result.images - clean).abs().max() <= 8 / 255 + 1e-7 and result.counts.backward.sum() == 0


def test_parity_with_torchattacks_square() -> None:
    """Our Square and torchattacks' Square (3.5.1, L∞, loss "ce") give bit-identical images when
    fed the same random draws: a replay of torchattacks' draws (global RNG: the stripes' signs,
    then per iteration the row, the column and the channels' signs, one square for the whole
    batch) goes through the :class:`SquareDraws` interface. Our own draws are per image (batching
    does not change an image's attack) and place a square anywhere in ``{0, …, H − h}`` as the
    paper says (torchattacks' ``random_int(0, H − h)`` never reaches ``H − h``), so without the
    replay the images differ by design. Both stop an image once it is misclassified (our scorer's
    ``done``) and accept the misclassifying candidate even if its loss is lower. Square 16x16
    images: torchattacks does not clip a square to a narrower image.
    """
    torchattacks = pytest.importorskip("torchattacks")
    model = SmallNet().eval()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = Scored(model, x).labels
    eps, iterations = 8 / 255, 200

    class Replay:
        def stripes(self, shape: torch.Size) -> torch.Tensor:
            return torch.sign(2 * torch.rand(shape) - 1)

        def square(self, i: int, side: int, h: int, w: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            top = ((h - side) * torch.rand([1])).long()
            left = ((w - side) * torch.rand([1])).long()
            signs = torch.sign(2 * torch.rand([3, 1, 1]) - 1).view(1, 3)
            return top.expand(len(rows)), left.expand(len(rows)), signs.expand(len(rows), 3)

    atk = torchattacks.Square(model, eps=eps, n_queries=iterations, loss="ce", seed=0)
    atk.init_hyperparam(x)
    assert all(square_fraction(i, iterations) == atk.p_selection(i) for i in range(iterations))
    torch.manual_seed(0)
    their_queries, theirs = atk.attack_single_run(x, y)
    torch.manual_seed(0)
    p = AttackProblem(x, Scored(model, x), indices=torch.arange(6), active=torch.ones(6, dtype=torch.bool), radius=eps)
    ours = square_run(p, iterations=iterations, draws=Replay())
    assert ours.done.any() and not ours.done.all()  # both stopping and searching images are compared
    assert torch.equal(ours.best, theirs)
    assert p.counts.forward.tolist() == their_queries.long().tolist()
