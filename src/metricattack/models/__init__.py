"""Re-ID models: one contract, several architectures, safe checkpoints.

Every model is a :class:`~metricattack.models.base.ReIDNet` registered by name in
:data:`~metricattack.models.base.ARCHITECTURES`:

* ``"reid"``: :class:`~metricattack.models.reid.ReIDModel`, a torchvision backbone + BN neck
  (the paper's B1–B4);
* ``"hacnn"``: :class:`~metricattack.models.hacnn.HACNN`, the Harmonious Attention CNN
  (Li, Zhu, Gong, CVPR 2018), and ``"mancs"``: :class:`~metricattack.models.mancs.Mancs`
  (Wang et al., ECCV 2018): the paper's two state-of-the-art targets;
* ``"python"``: :class:`~metricattack.models.python_net.PythonNet`, a network of one's own
  (``python:MODULE:FUNCTION``) with a classifier on its features, so it can be trained and defended.

The contract every architecture obeys (full text in :mod:`metricattack.models.base`):
``forward(images [B,3,H,W] in [0,1], any size) -> features [B,D]`` (L2-normalised retrieval
features, except models loaded from torchreid ResNet-50 checkpoints, which keep torchreid's
unnormalised test features; resize + normalise inside, differentiable; in eval mode each image's output depends
on that image only); attributes ``input_size``, ``feature_dim``, ``num_classes``, ``mean``,
``std``, ``feature_space``; ``classify(images) -> logits [B,C]``;
``forward_train(images) -> TrainOutputs`` for the losses; ``spec()`` / ``from_spec(spec)``.

Checkpoints (:mod:`~metricattack.models.checkpoint`) record the architecture name in the spec
and :func:`~metricattack.models.checkpoint.load_model` rebuilds the right class; other
projects' checkpoints load through :mod:`~metricattack.models.foreign`.
"""

from . import hacnn, mancs, python_net, reid  # noqa: F401  (register their architectures)
from .base import ARCHITECTURES, ReIDNet, TrainOutputs, build_from_spec, register_architecture

__all__ = ["ARCHITECTURES", "ReIDNet", "TrainOutputs", "build_from_spec", "register_architecture"]
