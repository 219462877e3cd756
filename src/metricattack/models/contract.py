"""The model contract, checked on a probe: one message naming the model instead of a traceback.

Every model metricattack evaluates or attacks maps images ``[B,3,H,W]`` float32 in [0,1] to
features ``[B,D]`` (:mod:`.base`). Models from elsewhere (``--model python:MODULE:FUNCTION``, the
Python API) break this in ways that used to surface as a traceback deep inside the work or,
worse, as numbers that mean nothing. :func:`check_model` runs the model once on a probe (two
seeded random images of Market-1501's crop size, 128×64; the model resizes them itself) and
turns each case into one :class:`~metricattack.errors.MetricAttackError` naming the model, or a
:class:`ModelContractWarning` when the model still gives valid (if degenerate) numbers:

============================================  =====================  ===========================
the model ...                                 evaluate (features)    attack
============================================  =====================  ===========================
has parameters on the meta / another device   refused (move it)      refused
raises in ``forward()``                       refused (the error's   refused
                                              one line; float64 /
                                              device hints)
returns a tuple / list / dict                 refused: wrap it to    refused
(``(features, logits)``)                      return the features
returns ``[B, 0]`` or not ``[B, D]``          refused                refused
returns NaN / inf                             refused                refused
returns the same features for every image     warned (it scores      warned (the attack counts
                                              exactly chance)        its zero gradients)
differs between two passes in eval mode       warned (with the size  warned
                                              of the difference)
modifies its input in place                   accepted (harmless)    refused
returns integer features                      warned, cast to float  refused if the method
                                                                     takes gradients
returns features not connected to the images  accepted               refused if the method
in the autograd graph (detached, no_grad)                            takes gradients
============================================  =====================  ===========================

A tuple or dict is refused rather than one of its elements taken: torchreid's models return
``(logits, features)`` in train mode and others ``(features, logits)``, so no element is right
for all; a module whose forward returns the features alone (``return net(x)[0]``) says which.

The probe costs two forward passes of two images (evaluate) plus one with a backward pass
(gradient attacks), once per model object and need (see ``benchmarks/bench_contract.py``).
:func:`extract_features <metricattack.evaluation.features.extract_features>` applies the same
output checks (:func:`forward_features`) to every batch, naming the image file of a bad row.
:func:`feature_drift` is the non-determinism measure on its own.
"""

from __future__ import annotations

import itertools
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import MetricAttackError, MetricAttackWarning

Purpose = Literal["features", "attack"]
PROBE_IMAGES = 2
PROBE_SIZE = (128, 64)
#: Two passes whose normalised features of one image lie farther apart than this are non-deterministic
#: (identical inputs give bit-identical features on CPU; GPU kernels may differ by ~1e-7); the robustness flag's.
DRIFT_TOLERANCE = 1e-4


class ModelContractWarning(MetricAttackWarning):
    """A model whose numbers are valid but degenerate or unstable (constant, integer or non-deterministic features)."""


@dataclass(frozen=True)
class ProbeReport:
    """What the probe saw.

    Attributes:
        name: the model's name in messages.
        purpose: ``"features"`` or ``"attack"`` (the attack's checks include the features').
        feature_dim: D.
        dtype: the features' dtype as the model returns them.
        drift: :func:`feature_drift` of the probe (0: deterministic).
        constant: the two probe images got identical features.
        seconds: wall time of the probe.
    """

    name: str
    purpose: str
    feature_dim: int
    dtype: str
    drift: float
    constant: bool
    seconds: float


@dataclass
class _State:
    name: str
    reports: dict[tuple[int, str], ProbeReport] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)


_STATES: weakref.WeakKeyDictionary[nn.Module, _State] = weakref.WeakKeyDictionary()


def model_name(model: nn.Module) -> str:
    """The name ``model`` was checked under (its spec, when loaded from a source), else its class name."""
    state = _STATES.get(model)
    return state.name if state is not None else type(model).__name__


def _state(model: nn.Module, name: str | None) -> _State:
    state = _STATES.get(model)
    if state is None:
        state = _STATES[model] = _State(name or type(model).__name__)
    elif name is not None:
        state.name = name
    return state


def warn_once(model: nn.Module, key: str, message: str) -> None:
    """Warn ``message`` (a :class:`ModelContractWarning`) unless ``model`` was already warned about ``key``."""
    state = _state(model, None)
    if key not in state.warned:
        state.warned.add(key)
        warnings.warn(message, ModelContractWarning, stacklevel=3)


def one_line(exc: BaseException) -> str:
    """``"TypeError: first line of the message"``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return itertools.chain(model.named_parameters(), model.named_buffers())


def check_device(model: nn.Module, name: str, device: str | torch.device | None = None) -> None:
    """MetricAttackError when ``model`` holds meta tensors (no data), or (``device`` given) tensors on another device."""
    want = None if device is None else torch.device(device)
    for key, tensor in _tensors(model):
        if tensor.device.type == "meta":
            raise MetricAttackError(
                f"model {name}: {key!r} is on the meta device (a shape without data); build the model on a real device "
                "or load its weights with load_state_dict(..., assign=True)"
            )
        if want is not None and not _same_device(tensor.device, want):
            raise MetricAttackError(
                f"model {name}: {key!r} is on {tensor.device} but the images are on {want}; move the model with .to({str(want)!r})"
            )


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else index) == (b.index if b.index is not None else index)


def _hint(model: nn.Module, exc: BaseException) -> str:
    """Why ``forward`` may have raised ``exc``: a floating dtype other than float32, or a device mismatch."""
    dtypes = sorted({str(t.dtype) for _, t in _tensors(model) if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:
        return f" (its parameters are {', '.join(dtypes)}: metricattack feeds float32 images; cast the model with .float())"
    if "device" in str(exc):
        return " (a tensor inside forward() is on another device than the images: register it as a buffer or create it on x.device)"
    return ""


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"[{', '.join(map(str, value.shape))}] {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def forward_features(
    model: nn.Module, images: torch.Tensor, name: str, what: Callable[[int | None], str], *, cast: bool = True
) -> torch.Tensor:
    """``model(images)`` checked against the contract: the features ``[B, D]`` (D ≥ 1, finite; integer
    features are warned about and cast to float32), else one MetricAttackError naming the model and
    the images: ``what(None)`` describes the batch, ``what(i)`` its i-th image (e.g. its file). The
    result keeps the model's graph (and, with ``cast=False``, its dtype)."""
    try:
        out = model(images)
    except Exception as exc:  # any error of user code becomes one message; KeyboardInterrupt passes
        raise MetricAttackError(f"model {name}: forward() raised {one_line(exc)} on {what(None)}{_hint(model, exc)}") from None
    batch = images.shape[0]
    if isinstance(out, tuple | list):
        parts = ", ".join(_describe(v) for v in out)
        raise MetricAttackError(
            f"model {name} returned a {type(out).__name__} ({parts}) instead of one features tensor [B, D]; give metricattack "
            "a module whose forward returns the retrieval features alone (e.g. `return net(x)[0]` for (features, logits))"
        )
    if isinstance(out, dict):
        parts = ", ".join(f"{k!r}: {_describe(v)}" for k, v in out.items())
        raise MetricAttackError(
            f"model {name} returned a dict ({parts}) instead of one features tensor [B, D]; give metricattack a module "
            "whose forward returns the retrieval features alone (e.g. `return net(x)['features']`)"
        )
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch:
        raise MetricAttackError(f"model {name} returned {_describe(out)} for a batch of {batch} images; expected features [B, D]")
    if out.shape[1] == 0:
        raise MetricAttackError(f"model {name} returned features of width 0 ([{batch}, 0]); expected [B, D] with D ≥ 1")
    if not out.is_floating_point():
        warn_once(
            model,
            "integer",
            f"model {name} returns {str(out.dtype).removeprefix('torch.')} features: they are ranked as float32, where equal "
            "distances are frequent (ties count as the expectation over their orders) and no attack gradient exists",
        )
        out = out.float() if cast else out
    finite = torch.isfinite(out).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        more = f" (and {len(bad) - 1} more of the batch)" if len(bad) > 1 else ""
        raise MetricAttackError(f"model {name} returned NaN or infinite features for {what(bad[0])}{more}; expected finite features")
    return out


def feature_drift(model: nn.Module, images: torch.Tensor, first: torch.Tensor | None = None) -> float:
    """Largest L2 distance between the L2-normalised features of one image in two eval-mode passes of
    ``model`` on ``images`` (0 for a deterministic model, at most 2; the measure of
    :func:`metricattack.robustness.flags.feature_change`). ``first``: the first pass's features, if computed."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = model(images) if first is None else first
            b = model(images)
    finally:
        model.train(was_training)
    if not len(a):
        return 0.0
    a, b = F.normalize(a.detach().float(), dim=1), F.normalize(b.detach().float(), dim=1)
    return float((a - b).norm(dim=1).max())


def warn_if_nondeterministic(model: nn.Module, name: str, drift: float) -> None:
    """Warn (once per model) when :func:`feature_drift` exceeds :data:`DRIFT_TOLERANCE`."""
    if drift > DRIFT_TOLERANCE:
        warn_once(
            model,
            "drift",
            f"model {name} is not deterministic in eval mode: the L2-normalised features of one image lie up to {drift:.3g} "
            "apart in two passes on the same images (of at most 2; dropout or noise left on?); its rankings change from run to run, and an attack "
            "on it can report an adversarial mAP above the clean one",
        )


def probe_images(device: str | torch.device = "cpu") -> torch.Tensor:
    """The probe: ``[2, 3, 128, 64]`` float32 in [0, 1], seeded (the global RNG is not touched)."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(PROBE_IMAGES, 3, *PROBE_SIZE, generator=generator).to(device)


def _probe_text(row: int | None) -> str:
    size = f"{PROBE_SIZE[0]}x{PROBE_SIZE[1]}"
    return f"{PROBE_IMAGES} random probe images of {size}" if row is None else f"random probe image {row} of {size}"


def check_model(
    model: nn.Module,
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    purpose: Purpose = "features",
    gradient: bool = True,
) -> ProbeReport:
    """Check ``model`` on the probe (table in the module docstring); once per model object, device and need.

    ``name`` names the model in messages (a spec or label; default: the name it was checked under, or
    its class name); ``device``: where the images will be (default: where its first parameter is);
    ``gradient`` (attacks only): the attack method takes gradients (a
    gradient-free method needs none). The model is run in eval mode and put back in its previous mode.
    """
    if purpose not in ("features", "attack"):
        raise ValueError(f"purpose must be 'features' or 'attack', got {purpose!r}")
    level = 0 if purpose == "features" else 2 if gradient else 1
    state = _state(model, name)
    name = state.name
    first = next((t for _, t in _tensors(model)), None)
    where = torch.device(device) if device is not None else first.device if first is not None else torch.device("cpu")
    for done in range(2, level - 1, -1):  # a stricter check done before covers this one
        if (done, str(where)) in state.reports:
            return state.reports[(done, str(where))]
    check_device(model, name, where)
    start = time.perf_counter()
    images = probe_images(where)
    pristine = images.clone()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward_features(model, images, name, _probe_text, cast=False)
        drift = feature_drift(model, pristine.clone(), out)
        warn_if_nondeterministic(model, name, drift)
        constant = bool(torch.equal(out[0], out[1]))
        if constant:
            warn_once(
                model,
                "constant",
                f"model {name} gives the same features to different images: every distance ties, so it scores exactly the "
                "chance level (and no attack can move it)",
            )
        if level and not torch.equal(images, pristine):
            raise MetricAttackError(
                f"model {name} modifies its input images in place (e.g. x.sub_(mean)); an attack needs them unchanged: "
                "compute on a new tensor (x = x - mean)"
            )
        if level == 2:
            _check_gradient(model, name, pristine, out)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    report = ProbeReport(name, purpose, int(out.shape[1]), str(out.dtype).removeprefix("torch."), drift, constant, seconds)
    state.reports[(level, str(where))] = report
    return report


def _check_gradient(model: nn.Module, name: str, images: torch.Tensor, out: torch.Tensor) -> None:
    """A gradient attack's need: float features connected to the images in the autograd graph (a gradient
    that is zero is the attack's to count, not an error: the model may be built to mask gradients)."""
    if not out.is_floating_point():
        raise MetricAttackError(
            f"model {name} returns {str(out.dtype).removeprefix('torch.')} features: integer features carry no gradient, "
            "so a gradient attack cannot work (a gradient-free attack method can)"
        )
    x = images.clone().requires_grad_(True)
    with torch.enable_grad():
        feats = forward_features(model, x, name, _probe_text)
        grad = None
        if feats.requires_grad:
            (grad,) = torch.autograd.grad(feats.float().sum(), x, allow_unused=True)
    if grad is None:
        raise MetricAttackError(
            f"model {name} returns features that carry no gradient to the images (computed under torch.no_grad(), "
            ".detach()ed, or through a non-differentiable step), so a gradient attack cannot work; make forward() "
            "differentiable or use a gradient-free attack method"
        )
