"""``"python"``: a network of one's own (``python:MODULE:FUNCTION``) made trainable, so it can be
fine-tuned or defended (``metricattack defend --model python:...``).

``MODULE.FUNCTION()`` returns an ``nn.Module`` mapping images ``[B,3,H,W]`` in [0,1] (any size) to
features ``[B,D]``, resizing and normalising inside, as ``--model python:`` requires everywhere
(:mod:`~metricattack.models.sources`). :class:`PythonNet` wraps it: its features are the
retrieval features and the embedding the triplet loss trains; a BN neck and a linear classifier
on them (as the base models' ``bnneck``: no shift, no bias) give the identity logits
cross-entropy trains. Our choice: the neck, because retrieval features are usually L2-normalised
and a linear classifier on unit vectors starts with near-zero logits (cross-entropy stayed at
chance for epochs without it); it is used in training only, the features are the module's own. The spec records
the ``python:`` spec; loading a checkpoint imports ``MODULE`` by name from the Python path (as
for a registered backbone, :mod:`~metricattack.models.plugins`) and calls ``FUNCTION()`` before
the saved weights are loaded. :meth:`PythonNet.module_state` is the wrapped module's own state
dict, loadable with ``--model python:MODULE:FUNCTION --weights FILE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import MetricAttackError
from .base import IMAGENET_MEAN, IMAGENET_STD, ReIDNet, TrainOutputs, register_architecture


@register_architecture("python")
class PythonNet(ReIDNet):
    """``FUNCTION()``'s module (attribute ``net``) plus a BN neck and a linear identity classifier on its features.

    Args:
        num_classes: identities of the training set (the classifier's outputs).
        source: ``python:MODULE:FUNCTION``.
        input_size: ``(H, W)`` the training loader resizes images to (the module resizes itself).
        mean, std: recorded for the contract only; the module normalises itself.
    """

    derived_spec_keys = ("architecture", "feature_dim", "feature_space")

    def __init__(
        self,
        num_classes: int,
        source: str,
        input_size: Sequence[int] = (256, 128),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std)
        from .sources import PYTHON_PREFIX, load_python

        if not source.startswith(PYTHON_PREFIX):
            raise MetricAttackError(f"a python model's source must be python:MODULE:FUNCTION, got {source!r}")
        self.source = source
        self.net, _ = load_python(source, None)
        self.net.eval()
        with torch.no_grad():
            probe = self.net(torch.zeros(2, 3, *self.input_size))
        if probe.ndim != 2 or probe.shape[0] != 2:
            raise MetricAttackError(f"{source}: the module must map images [B,3,H,W] to features [B,D], got shape {tuple(probe.shape)}")
        self.feature_dim = int(probe.shape[1])
        self.feature_space = "python"
        self.neck = nn.BatchNorm1d(self.feature_dim)
        self.neck.bias.requires_grad_(False)  # BNNeck: no shift
        self.classifier = nn.Linear(self.feature_dim, self.num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The module's features ``[B,D]`` of images ``[B,3,H,W]`` in [0,1]."""
        return self.net(images)

    def forward_train(self, images: torch.Tensor) -> TrainOutputs:
        """The module's features (embedding) and the classifier's logits on their BN-neck output."""
        features = self.net(images)
        return TrainOutputs(embedding=features, logits=(self.classifier(self.neck(features)),))

    def spec(self) -> dict[str, Any]:
        return {**self.base_spec(), "source": self.source}

    def module_state(self) -> dict[str, torch.Tensor]:
        """The wrapped module's state dict (for ``--model SOURCE --weights FILE``)."""
        return {k: v.detach().clone().contiguous() for k, v in self.net.state_dict().items()}
