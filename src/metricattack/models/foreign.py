"""Models trained with other re-ID projects (torchreid, fast-reid), loaded into metricattack models.

A *format* such as ``"torchreid:resnet50"`` names one architecture of one other project. Its
adapter builds the metricattack model with the same computation and maps the other
project's state-dict keys onto it, so the loaded model gives the features that project
computes at test time, from images in [0,1] (resizing and normalisation happen inside
``forward``, with the project's test preprocessing, recorded in :class:`Preprocessing`).

Formats (:data:`FORMATS`, a :class:`~metricattack.registry.Registry`):

* ``torchreid:resnet50`` -- torchreid's ``resnet50`` (Zhou et al.; ``torchreid/models/resnet.py``):
  last stride 2, global average pooling, no neck; the test feature is the pooled 2048-d vector,
  *not* normalised (torchreid's default test: squared Euclidean, ``normalize_feature=False``).
  Keys ``conv1.*``, ``bn1.*``, ``layer1..4.*``, ``classifier.{weight,bias}``.
* ``fastreid:bot_r50`` -- fast-reid's BoT baseline with ResNet-50 (``configs/Market1501/bagtricks_R50.yml``):
  last stride 1, global average pooling, BN neck; the test feature is the BN-neck output,
  L2-normalised (fast-reid tests with the cosine distance). Two key layouts, told apart by
  the head's keys (the stem's max-pool has no weights, so the file cannot say which it had):

  - v0.1 (release v0.1.1 of July 2020, whose ``market_bot_R50.pth`` / ``duke_bot_R50.pth`` the
    model zoo links): ``heads.bnneck.*``, ``heads.classifier.weight``, ``pixel_mean`` /
    ``pixel_std``; torchvision's stem (3x3/2 max-pool, padding 1) -> backbone ``resnet50``;
  - v1 (from September 2020): ``heads.bottleneck.0.*``, ``heads.classifier.weight`` or (from
    March 2021) ``heads.weight``; fast-reid's stem since August 2020 (3x3/2 max-pool without
    padding, ceil mode) -> backbone ``fastreid_resnet50``. A file trained between 14 August and
    10 September 2020 has the ceil-mode stem with the v0.1 keys and loads with the wrong stem.
* ``torchreid:hacnn`` -- torchreid's ``HACNN`` (``torchreid/models/hacnn.py``, model zoo
  ``hacnn_*_xent.pth.tar``) onto :class:`~metricattack.models.hacnn.HACNN`: 160x64 input;
  the test feature is the L2-normalised global ⊕ L2-normalised local feature (ours is that,
  scaled by 1/√2 to unit norm; the ranking is the same). Widths, feature size, regions and
  classes are read from the tensor shapes.
* ``torchreid:<name>`` for every other model of torchreid's builder (OSNet, MobileNetV2, MLFN,
  PCB, ...; :data:`~.torchreid_zoo.TORCHREID_MODELS`) -- torchreid's own network, built through
  torchreid when it is installed and wrapped with its test preprocessing
  (:mod:`~.torchreid_zoo`); the file loads with its own keys.

More formats are registered the same way, e.g.::

    from metricattack.models.foreign import FORMATS, ForeignFormat, Preprocessing

    FORMATS.register("otherproject:net", ForeignFormat(
        project="otherproject", architecture="Net",
        preprocessing=Preprocessing(input_size=(256, 128), resize="bilinear (PIL)", features="..."),
        build=build_net,   # state dict in the project's keys -> (model, state dict in the model's keys)
    ))

Loading a file (``torch.load(weights_only=True)`` or safetensors, see :mod:`.weights`)::

    model = load_foreign("torchreid:resnet50", "resnet50_market_xent.pth.tar")   # eval mode
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, MetricAttackError
from ..registry import Registry
from .hacnn import HACNN
from .reid import IMAGENET_MEAN, IMAGENET_STD, ReIDModel
from .torchreid_zoo import TORCHREID_MODELS, build_torchreid, input_size, paper
from .weights import load_exact, read_state_dict

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Preprocessing:
    """The other project's test-time preprocessing, as the loaded model reproduces it.

    Attributes:
        input_size: ``(H, W)`` images are resized to.
        mean, std: per-channel normalisation in [0,1] units (RGB).
        resize: how the other project resizes (metricattack resizes bilinearly inside
            ``forward``; images already at ``input_size`` are not resized at all).
        features: what the test feature is and how the other project compares features.
    """

    input_size: tuple[int, int] = (256, 128)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "bilinear"
    features: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (for provenance in results and manifests)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ForeignFormat:
    """One architecture of another project and how to load its checkpoints.

    Attributes:
        project: ``"torchreid"``, ``"fast-reid"``, ...
        architecture: human-readable architecture name.
        preprocessing: the project's test preprocessing (what the built model does).
        build: ``build(state) -> (model, mapped)``: ``state`` in the project's key names (wrappers
            and ``module.`` prefixes already removed, see :func:`~.weights.read_state_dict`);
            returns the metricattack model (random weights, any mode) and ``state`` renamed to
            its keys. Keys it cannot place stay in ``mapped`` under their own names, so the
            exact load reports them.
        paper: the paper that introduced the architecture (authors, title, venue).
    """

    project: str
    architecture: str
    preprocessing: Preprocessing
    build: Callable[[StateDict], tuple[nn.Module, StateDict]]
    paper: str = ""


FORMATS: Registry[ForeignFormat] = Registry("model format")


def load_foreign(name: str, weights: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of format ``name`` with the weights in file ``weights``, in eval mode on ``device``.

    Raises :class:`~metricattack.errors.CheckpointError` naming the file and the format when
    the file is unreadable or its state dict is not one of this format.
    """
    fmt = FORMATS.get(name)
    path = Path(weights)
    state = read_state_dict(path, f"{name} weights file")
    expected = f"a {fmt.project} {fmt.architecture} state dict ({name})"
    try:
        model, mapped = fmt.build(state)
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"weights {path} are not {expected}: {exc}") from None
    return load_exact(model, mapped, str(path), expected).to(device).eval()


def rename_prefixes(state: StateDict, table: Sequence[tuple[str, str]], drop: Sequence[str] = ()) -> StateDict:
    """``state`` with each key's first matching prefix of ``table`` (``(theirs, ours)``) replaced.

    Keys in ``drop`` are left out; keys without a matching prefix are kept as they are.
    """
    out: StateDict = {}
    for key, value in state.items():
        if key in drop:
            continue
        for theirs, ours in table:
            if key.startswith(theirs):
                key = ours + key[len(theirs) :]
                break
        out[key] = value
    return out


def _require(state: StateDict, *keys: str) -> torch.Tensor:
    """The first of ``keys`` present in ``state``; KeyError naming them all otherwise."""
    for key in keys:
        if key in state:
            return state[key]
    raise KeyError(f"it has no {' or '.join(repr(k) for k in keys)}")


def _resnet_trunk_table(prefix: str) -> list[tuple[str, str]]:
    """``(theirs, ours)`` prefixes of a torchvision-style ResNet trunk (``conv1``, ``bn1``, ``layer1..4``)
    under ``prefix``, onto :class:`ReIDModel`'s ``trunk`` (a Sequential: conv1, bn1, relu, maxpool, layer1..4)."""
    table = [(f"{prefix}conv1.", "trunk.0."), (f"{prefix}bn1.", "trunk.1.")]
    return table + [(f"{prefix}layer{i}.", f"trunk.{3 + i}.") for i in range(1, 5)]


# ----------------------------------------------------------------------------- torchreid
TORCHREID_RESNET50 = Preprocessing(
    input_size=(256, 128),
    resize="bilinear (PIL, torchvision Resize)",
    features="pooled 2048-d layer4 output, not normalised; torchreid tests with the squared Euclidean distance",
)


def _torchreid_resnet50(state: StateDict) -> tuple[nn.Module, StateDict]:
    classes = _require(state, "classifier.weight").shape[0]
    prep = TORCHREID_RESNET50
    model = ReIDModel(
        "resnet50",
        num_classes=classes,
        input_size=prep.input_size,
        mean=prep.mean,
        std=prep.std,
        last_stride=2,
        neck="none",
        normalize=False,
        classifier_bias=True,
    )
    return model, rename_prefixes(state, _resnet_trunk_table(""))


FORMATS.register("torchreid:resnet50", ForeignFormat("torchreid", "ResNet-50", TORCHREID_RESNET50, _torchreid_resnet50, paper("resnet50")))


TORCHREID_HACNN = Preprocessing(
    input_size=(160, 64),
    resize="bilinear (PIL, torchvision Resize)",
    features="L2-normalised global (512-d) ⊕ L2-normalised local (512-d) feature; ours is scaled by 1/sqrt(2) (unit norm, same ranking)",
)


def _torchreid_hacnn_table() -> list[tuple[str, str]]:
    """``(theirs, ours)`` key prefixes of torchreid's HACNN (levels and streams counted from 1) onto ours."""
    table = [("conv.", "stem.")]
    for level in (1, 2, 3):
        ours = f"levels.{level - 1}."
        for block in (0, 1):
            table += [(f"inception{level}.{block}.stream{s}.", f"{ours}inception.{block}.streams.{s - 1}.") for s in (1, 2, 3, 4)]
        soft = f"ha{level}.soft_attn."
        table += [
            (f"{soft}spatial_attn.conv1.", f"{ours}attention.soft.spatial.conv."),
            (f"{soft}spatial_attn.conv2.", f"{ours}attention.soft.spatial.scale."),
            (f"{soft}channel_attn.conv1.", f"{ours}attention.soft.channel.reduce."),
            (f"{soft}channel_attn.conv2.", f"{ours}attention.soft.channel.expand."),
            (f"{soft}conv.", f"{ours}attention.soft.fuse."),
            (f"ha{level}.hard_attn.fc.", f"{ours}attention.hard.fc."),
        ]
        table += [(f"local_conv{level}.stream{s}.", f"local_levels.{level - 1}.streams.{s - 1}.") for s in (1, 2, 3)]
    for branch in ("global", "local"):
        table += [
            (f"fc_{branch}.0.", f"{branch}_head.fc."),
            (f"fc_{branch}.1.", f"{branch}_head.bn."),
            (f"classifier_{branch}.", f"{branch}_classifier."),
        ]
    return table


TORCHREID_HACNN_KEYS = _torchreid_hacnn_table()
"""How torchreid's ``HACNN`` state-dict keys map onto :class:`~metricattack.models.hacnn.HACNN`'s (prefixes)."""


def _torchreid_hacnn(state: StateDict) -> tuple[nn.Module, StateDict]:
    channels = [_require(state, f"ha{level}.soft_attn.conv.conv.weight").shape[0] for level in (1, 2, 3)]
    branch_dim = _require(state, "fc_global.0.weight").shape[0]
    regions = _require(state, "ha1.hard_attn.fc.weight").shape[0] // 2
    classes = _require(state, "classifier_global.weight").shape[0]
    prep = TORCHREID_HACNN
    try:
        model = HACNN(classes, prep.input_size, prep.mean, prep.std, channels=channels, branch_dim=branch_dim, regions=regions)
    except MetricAttackError as exc:
        raise ValueError(f"its shapes fit no HACNN ({exc})") from None
    return model, rename_prefixes(state, TORCHREID_HACNN_KEYS)


FORMATS.register("torchreid:hacnn", ForeignFormat("torchreid", "HACNN", TORCHREID_HACNN, _torchreid_hacnn, paper("hacnn")))


def _register_torchreid_builds() -> None:
    """``torchreid:<name>`` built through torchreid for every name of its builder not mapped above."""
    for name in TORCHREID_MODELS:
        if f"torchreid:{name}" in FORMATS:
            continue
        prep = Preprocessing(
            input_size=input_size(name),
            resize="bilinear (PIL, torchvision Resize)",
            features=f"eval-mode output of torchreid's {name}, not normalised; torchreid tests with the squared Euclidean distance",
        )
        build = partial(build_torchreid, name)
        FORMATS.register(f"torchreid:{name}", ForeignFormat("torchreid", name, prep, build, paper(name)))


_register_torchreid_builds()


# ----------------------------------------------------------------------------- fast-reid
FASTREID_BOT_R50 = Preprocessing(
    input_size=(256, 128),
    resize="bicubic (PIL, interpolation=3)",
    features="BN-neck output (2048-d), L2-normalised; fast-reid tests with the cosine distance",
)


def _fastreid_bot_r50(state: StateDict) -> tuple[nn.Module, StateDict]:
    """Both key layouts of fast-reid's BoT ResNet-50 (see the module docstring)."""
    classes = _require(state, "heads.weight", "heads.classifier.weight").shape[0]
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if "pixel_mean" in state and "pixel_std" in state:  # stored by fast-reid before 2021-03, in 0..255 units
        mean = tuple(float(v) / 255.0 for v in state["pixel_mean"].flatten())  # type: ignore[assignment]
        std = tuple(float(v) / 255.0 for v in state["pixel_std"].flatten())  # type: ignore[assignment]
    v01 = "heads.bnneck.weight" in state  # v0.1 (the model zoo's files): BNneckHead, torchvision's padded max-pool
    model = ReIDModel(
        "resnet50" if v01 else "fastreid_resnet50",
        num_classes=classes,
        input_size=FASTREID_BOT_R50.input_size,
        mean=mean,
        std=std,
        last_stride=1,
        neck="bnneck",
        normalize=True,
    )
    table = [
        *_resnet_trunk_table("backbone."),
        ("heads.bnneck.", "neck."),
        ("heads.bottleneck.0.", "neck."),
        ("heads.classifier.weight", "classifier.weight"),
        ("heads.weight", "classifier.weight"),
    ]
    return model, rename_prefixes(state, table, drop=("pixel_mean", "pixel_std"))


FORMATS.register(
    "fastreid:bot_r50",
    ForeignFormat(
        "fast-reid",
        "BoT ResNet-50",
        FASTREID_BOT_R50,
        _fastreid_bot_r50,
        "Luo et al., Bag of Tricks and A Strong Baseline for Deep Person Re-identification, CVPRW 2019",
    ),
)
