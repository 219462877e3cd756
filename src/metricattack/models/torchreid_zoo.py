"""Every model of torchreid's builder, built through torchreid (``pip install metricattack[torchreid]``).

``--model torchreid:<name> --weights FILE`` for each name of torchreid's
``torchreid.models.__model_factory`` (:data:`TORCHREID_MODELS`, torchreid 0.2.5 from PyPI; a test
checks the list against the installed torchreid). The network is torchreid's own
(``torchreid.models.build_model(name, num_classes, pretrained=False)``, the number of classes
read from the file's ``classifier*`` weights), wrapped with :func:`~.wrap.wrap` so it takes images
in [0,1] at any size: resized to torchreid's test size (256x128; HACNN 160x64) and normalised with
ImageNet's mean and std, as torchreid's test transform (``Resize``, ``ToTensor``, ``Normalize``)
does. Its state-dict keys are torchreid's, so the file loads as it is (plain state dicts,
``save_checkpoint`` files with ``state_dict``, ``module.`` prefixes: :func:`~.weights.read_state_dict`).
The features are the network's eval-mode output, the ones torchreid's engine ranks at test time
(``normalize_feature=False``, squared Euclidean distance by default).

``torchreid:resnet50`` and ``torchreid:hacnn`` are mapped onto metricattack's own models instead
(:mod:`.foreign`) and need no torchreid.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import MetricAttackError
from .base import IMAGENET_MEAN, IMAGENET_STD
from .wrap import wrap

TORCHREID_MODELS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnet50_fc512",
    "se_resnet50",
    "se_resnet50_fc512",
    "se_resnet101",
    "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet161",
    "densenet121_fc512",
    "inceptionresnetv2",
    "inceptionv4",
    "xception",
    "resnet50_ibn_a",
    "resnet50_ibn_b",
    "nasnsetmobile",  # sic: torchreid's name for NASNet-A Mobile
    "mobilenetv2_x1_0",
    "mobilenetv2_x1_4",
    "shufflenet",
    "squeezenet1_0",
    "squeezenet1_0_fc512",
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "mudeep",
    "resnet50mid",
    "hacnn",
    "pcb_p6",
    "pcb_p4",
    "mlfn",
    "osnet_x1_0",
    "osnet_x0_75",
    "osnet_x0_5",
    "osnet_x0_25",
    "osnet_ibn_x1_0",
    "osnet_ain_x1_0",
    "osnet_ain_x0_75",
    "osnet_ain_x0_5",
    "osnet_ain_x0_25",
)
"""The names of torchreid 0.2.5's ``torchreid.models.__model_factory``, in its order."""

_PAPERS = (
    (r"^resnet\d+$", "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"),
    (r"^resnext", "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017"),
    (r"^resnet50_fc512$", "He et al., CVPR 2016 (ResNet-50 with a 512-d fc layer, torchreid's variant)"),
    (r"^se_", "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018"),
    (r"^densenet", "Huang et al., Densely Connected Convolutional Networks, CVPR 2017"),
    (r"^inception", "Szegedy et al., Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning, AAAI 2017"),
    (r"^xception$", "Chollet, Xception: Deep Learning with Depthwise Separable Convolutions, CVPR 2017"),
    (r"_ibn_[ab]$", "Pan et al., Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net, ECCV 2018"),
    (r"^nasnsetmobile$", "Zoph et al., Learning Transferable Architectures for Scalable Image Recognition, CVPR 2018"),
    (r"^mobilenetv2", "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018"),
    (r"^shufflenet$", "Zhang et al., ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices, CVPR 2018"),
    (r"^squeezenet", "Iandola et al., SqueezeNet: AlexNet-level accuracy with 50x fewer parameters, arXiv:1602.07360"),
    (r"^shufflenet_v2", "Ma et al., ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design, ECCV 2018"),
    (r"^mudeep$", "Qian et al., Multi-scale Deep Learning Architectures for Person Re-identification, ICCV 2017"),
    (
        r"^resnet50mid$",
        "Yu et al., The Devil is in the Middle: Exploiting Mid-level Representations for Cross-Domain Instance Matching, arXiv:1711.08106",
    ),
    (r"^hacnn$", "Li et al., Harmonious Attention Network for Person Re-identification, CVPR 2018"),
    (r"^pcb_", "Sun et al., Beyond Part Models: Person Retrieval with Refined Part Pooling, ECCV 2018"),
    (r"^mlfn$", "Chang et al., Multi-Level Factorisation Net for Person Re-identification, CVPR 2018"),
    (r"^osnet_x", "Zhou et al., Omni-Scale Feature Learning for Person Re-Identification, ICCV 2019"),
    (r"^osnet_(ain|ibn)_", "Zhou et al., Learning Generalisable Omni-Scale Representations for Person Re-Identification, TPAMI 2021"),
)

TEST_SIZE = (256, 128)
"""torchreid's default test size (``height``, ``width`` of its data manager), the size its model zoo was trained at."""
NATIVE_SIZES = {"hacnn": (160, 64)}  # HACNN asserts its input size


def paper(name: str) -> str:
    """The paper that introduced torchreid model ``name`` (as torchreid's docstrings cite it)."""
    for pattern, reference in _PAPERS:
        if re.search(pattern, name):
            return reference
    raise KeyError(f"no paper recorded for torchreid model {name!r}")


def input_size(name: str) -> tuple[int, int]:
    """``(H, W)`` torchreid tests model ``name`` at."""
    return NATIVE_SIZES.get(name, TEST_SIZE)


def import_torchreid() -> Any:
    """The ``torchreid`` package (its import-time warning about the missing Cython evaluator silenced);
    MetricAttackError saying how to install it otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchreid
    except ImportError as exc:
        raise MetricAttackError(
            f"this model is built by torchreid, which cannot be imported ({exc}): pip install 'metricattack[torchreid]' "
            "(torchreid and the packages it imports: opencv-python-headless, gdown, tensorboard)"
        ) from None
    return torchreid


def num_classes(state: dict[str, torch.Tensor]) -> int:
    """The number of identities of a torchreid state dict: the rows of its ``classifier*`` weights (ValueError otherwise)."""
    rows = {int(v.shape[0]) for k, v in state.items() if re.search(r"(^|\.)classifier[^.]*(\.\d+)?\.weight$", k) and v.ndim == 2}
    if len(rows) != 1:
        raise ValueError(
            "its classifier weights (classifier*.weight) " + ("are missing" if not rows else f"disagree on the classes: {sorted(rows)}")
        )
    return rows.pop()


def build_torchreid(name: str, state: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """torchreid's network ``name`` with ``state``'s number of classes (random weights), wrapped; ``state`` unchanged."""
    torchreid = import_torchreid()
    net = torchreid.models.build_model(name, num_classes=num_classes(state), loss="softmax", pretrained=False, use_gpu=False)
    return wrap(net, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=input_size(name)), state  # torchreid's norm_mean / norm_std
