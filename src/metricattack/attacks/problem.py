"""What an attack method receives (:class:`AttackProblem`) and returns (:class:`MethodResult`).

An *objective* is any callable ``objective(images [B,3,H,W], indices [B]) -> losses [B]`` where
``losses[i]`` depends on image ``i`` only (models in eval mode), so a batch can mix images of
many identities; ``indices`` are the images' positions in the attacked split (the objective
looks up each image's references by them).

A method never calls the objective itself: it asks the problem for :meth:`AttackProblem.loss`
(forward only; :meth:`AttackProblem.loss_and_done` also says which images reached the
objective's goal, when the objective has one) or :meth:`AttackProblem.loss_and_gradient`, which

* return the *signed* loss, to be **maximised** (a targeted threat model's descent is folded in
  by ``direction``), so every method is written as an ascent;
* count forward and backward passes per image (``counts``: the cost benchmark's units) and
  gradients that are exactly zero on an image (a zero gradient is never a silent no-op);
* refuse a non-finite loss or gradient, naming the image.

Randomness is per image: :meth:`AttackProblem.generators` gives image ``i`` a generator keyed
by ``(seed, indices[i], purpose)`` (:func:`~.ops.image_seed`), so results never depend on the
batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import compute
from ..errors import MetricAttackError
from .ops import image_generators, project

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about an attacked model.

    Attributes:
        input_size: ``(h, w)`` the model resizes its input to (e.g. ``(256, 128)``), or None for
            a model that takes any size as it is (scale input-size-dependent choices, such as a
            translation-invariant kernel, by it).
    """

    input_size: tuple[int, int] | None = None

    @classmethod
    def of(cls, model: nn.Module) -> ModelInfo:
        """From a model's ``input_size`` attribute (absent or malformed: None)."""
        size = getattr(model, "input_size", None)
        if isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
            return cls((int(size[0]), int(size[1])))
        return cls(None)


COUNT_NAMES = ("forward", "backward", "zero_gradient")
"""The per-image counters of :class:`CallCounts`, in record order."""


@dataclass
class CallCounts:
    """Per-image counters ``[B]`` (int64) of one attacked batch, for the active images (inactive images
    that share a batch are evaluated with it but cost nothing to the attack: their counters stay 0).

    Attributes:
        forward: forward passes of the objective on each image (one per model ensemble call).
        backward: backward passes (input gradients) on each image.
        zero_gradient: gradient calls at which the image's whole input gradient was exactly zero.
    """

    forward: torch.Tensor
    backward: torch.Tensor
    zero_gradient: torch.Tensor

    @classmethod
    def zeros(cls, batch: int) -> CallCounts:
        return cls(*(torch.zeros(batch, dtype=torch.long) for _ in range(3)))


@dataclass(frozen=True)
class MethodResult:
    """Adversarial ``images [B,3,H,W]`` (in the ε-ball and [0,1]; inactive images unchanged) and the per-image ``counts``."""

    images: torch.Tensor
    counts: CallCounts


@dataclass
class AttackProblem:
    """One batch to attack.

    Attributes:
        images: ``[B,3,H,W]`` clean images in [0,1] (detached; never modified).
        objective: per-image losses (module docstring); methods go through :meth:`loss` /
            :meth:`loss_and_gradient`, not this.
        indices: ``[B]`` long, the images' positions in the attacked split.
        active: ``[B]`` bool; inactive images are returned unchanged whatever the method does.
        radius: ε in [0,1] pixel units (ε/255).
        direction: ``+1.0`` ascend the objective, ``−1.0`` descend it (targeted threat models).
        seed: the attack's seed (per-image generators, :meth:`generators`).
        models: one :class:`ModelInfo` per attacked model.
        counts: per-image call counters, filled by :meth:`loss` and :meth:`loss_and_gradient`.
    """

    images: torch.Tensor
    objective: Objective
    indices: torch.Tensor
    active: torch.Tensor
    radius: float
    direction: float = 1.0
    seed: int = 0
    models: tuple[ModelInfo, ...] = ()
    counts: CallCounts = field(init=False)

    def __post_init__(self) -> None:
        batch = self.images.shape[0]
        if self.direction not in (1.0, -1.0):
            raise ValueError(f"direction must be +1.0 or -1.0, got {self.direction}")
        if self.active.shape != (batch,) or self.indices.shape != (batch,):
            raise ValueError(f"active and indices must have shape [{batch}], got {tuple(self.active.shape)}, {tuple(self.indices.shape)}")
        self.counts = CallCounts.zeros(batch)

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def mask(self) -> torch.Tensor:
        """``[B,1,1,1]`` 1.0 for active images, 0.0 for inactive ones (dtype and device of ``images``)."""
        return self.active.to(self.images.device, self.images.dtype).view(-1, 1, 1, 1)

    def generators(self, purpose: str) -> list[torch.Generator]:
        """Fresh per-image generators for ``purpose`` (the same purpose again restarts the same streams)."""
        return image_generators(self.seed, self.indices, purpose)

    def project(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``Ψ(x)``: into the ε-ball around the clean images (``rows`` of them, when given) and [0,1]."""
        return project(x, self.images if rows is None else self.images[rows], self.radius)

    def loss(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Signed losses ``[b]`` of ``x [b,3,H,W]`` (the batch, or the batch positions ``rows``), without gradient.

        Counts one forward pass per image; a non-finite loss is an error naming the image.
        """
        rows, indices = self._rows(x, rows)
        with torch.no_grad():
            losses = self._signed(x, indices)
        self.counts.forward[rows] += self.active[rows].long()
        self._check_finite(losses, losses, rows, "loss")
        return losses

    def loss_and_done(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss` and ``done [b]``: whether each image has reached the objective's goal, from
        the same forward pass, when the objective has a ``score(images, indices) -> (losses, done)``
        method (e.g. a probe whose AP fell to chance, :class:`~metricattack.attacks.margin.RankingMargin`);
        otherwise never done. A search (Square) stops an image there."""
        score = getattr(self.objective, "score", None)
        if score is None:
            losses = self.loss(x, rows)
            return losses, torch.zeros(losses.shape, dtype=torch.bool, device=losses.device)
        rows, indices = self._rows(x, rows)
        with torch.no_grad():
            losses, done = score(x, indices)
            losses = losses if self.direction > 0 else -losses
        self.counts.forward[rows] += 1
        self._check_finite(losses, losses, rows, "loss")
        return losses, done.to(losses.device, torch.bool)

    def loss_and_gradient(
        self, x: torch.Tensor, rows: torch.Tensor | None = None, transform: Transform | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed losses ``[b]`` and their input gradient ``[b,3,H,W]`` at ``x`` (model weights get none).

        ``transform`` (e.g. input diversity, a scale copy) is applied to ``x`` inside the
        differentiated function: the loss is that of ``transform(x)``, the gradient w.r.t. ``x``.
        In fp16 (:func:`~metricattack.compute.active`) the gradient is taken through a loss scale
        (:meth:`~metricattack.compute.Compute.input_gradient`), in float32 either way.
        Counts one forward and one backward pass per image, and a zero gradient for each image
        whose gradient is exactly zero; a non-finite loss or gradient is an error naming the image.
        """
        rows, indices = self._rows(x, rows)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            losses = self._signed(x if transform is None else transform(x), indices)
            grad = compute.active().input_gradient(losses, x)
        active = self.active[rows].long()
        self.counts.forward[rows] += active
        self.counts.backward[rows] += active
        self._check_finite(losses, losses, rows, "loss")
        self._check_finite(torch.isfinite(grad).flatten(1).all(1), grad.flatten(1).sum(1), rows, "gradient")
        self.counts.zero_gradient[rows] += (grad.flatten(1).abs().amax(1) == 0).long().cpu() * active
        return losses.detach(), grad

    def gradient(self, x: torch.Tensor, rows: torch.Tensor | None = None, transform: Transform | None = None) -> torch.Tensor:
        """The input gradient of :meth:`loss_and_gradient`."""
        return self.loss_and_gradient(x, rows, transform)[1]

    # ------------------------------------------------------------------ internals
    def _rows(self, x: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(self.batch_size) if rows is None else rows.to("cpu", torch.long)
        if x.dim() != 4 or x.shape[0] != rows.numel():
            raise MetricAttackError(f"an attack method evaluated images of shape {tuple(x.shape)} for {rows.numel()} images of the batch")
        return rows, self.indices[rows]

    def _signed(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        losses = self.objective(x, indices)
        if losses.shape != (x.shape[0],):
            raise MetricAttackError(f"an attack objective must return one loss per image, shape [{x.shape[0]}], got {tuple(losses.shape)}")
        return losses if self.direction > 0 else -losses

    def _check_finite(self, finite: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, what: str) -> None:
        """``finite [b]``: per image, a bool (or the values themselves, checked with isfinite); ``values [b]`` for the message."""
        bad = ~(finite if finite.dtype == torch.bool else torch.isfinite(finite.detach())).cpu()
        if bool(bad.any()):
            row = int(rows[bad][0])
            raise MetricAttackError(
                f"the attack's {what} is not finite ({float(values.detach().cpu()[bad][0])}) on image {int(self.indices[row])} "
                f"(position {row} of its batch; {int(bad.sum())} such images): the model's output or that image's "
                "references contain NaN or inf"
            )
