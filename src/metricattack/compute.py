"""How models compute: numeric precision (autocast), memory format, cuDNN autotuning, automatic batch size.

One :class:`Compute` describes a run (CLI ``--precision fp32|bf16|fp16``, ``--channels-last``,
``--cudnn-benchmark``; configs: a ``compute:`` section; Python: ``precision=``). Every command
goes through the same three pieces:

* :meth:`Compute.applied` (or :meth:`Compute.prepare` for models a run owns) runs each model's
  ``forward`` under :func:`torch.autocast` at the chosen precision and returns its floating
  outputs as float32, so everything outside the network (distances, losses, rankings, the
  attack's sign / normalised gradient, ε-projection and 8-bit quantisation) stays in float32:
  attack images are float32, within ε exactly, at any precision. ``fp32`` changes nothing at all.
* :meth:`Compute.activate` makes the run's compute the :func:`active` one: stage keys
  (:class:`~metricattack.stages.StageSpec`) record it when it is not the default, and in
  ``fp16`` an attack's input gradient is taken of the loss × :data:`FP16_GRADIENT_SCALE`
  (smaller while the gradient overflows), then divided back in float32, so small gradients do
  not underflow in half precision (:meth:`Compute.input_gradient`).
* training: :meth:`Compute.scaler` (a :class:`torch.amp.GradScaler`, enabled in ``fp16``: loss
  scaling) beside the same autocast.

``channels_last`` converts the models and their inputs to the NHWC memory format (faster
convolutions with tensor cores on GPU; the same values up to float rounding);
``cudnn_benchmark`` sets :data:`torch.backends.cudnn.benchmark` (autotuned convolution kernels on
GPU, no effect on CPU). :func:`resolve_batch_size` turns ``--batch-size auto`` into the largest
batch that fits in GPU memory (:func:`largest_batch`); on CPU it takes the command's default.
The default compute (fp32, both off) leaves stage keys and results as they were before it existed;
any other is recorded in stage keys (:meth:`Compute.key`) and, always, in results (:meth:`Compute.record`).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import logging
import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import nn

from .config import StrictModel, validate
from .errors import ConfigError

log = logging.getLogger(__name__)

PrecisionName = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Precision name → the dtype autocast computes in."""

FP16_GRADIENT_SCALE = 2.0**12
"""fp16 attacks: the per-image losses are multiplied by this before the input gradient is taken
(a power of two: dividing back is exact), divided by 16 while the gradient overflows (down to no scale)."""

_PATCHED = "_metricattack_compute"


class Compute(StrictModel):
    """Precision and GPU switches of a run (module docstring)."""

    precision: PrecisionName = Field(
        "fp32",
        description="fp32 (default), bf16 or fp16: the dtype the networks compute in (torch.autocast); fp16 trains with loss scaling",
    )
    channels_last: bool = Field(False, description="models and inputs in the channels-last (NHWC) memory format (GPU tensor cores)")
    cudnn_benchmark: bool = Field(False, description="torch.backends.cudnn.benchmark: autotuned convolution kernels (GPU only)")

    @property
    def is_default(self) -> bool:
        return self == Compute()

    def key(self) -> dict[str, Any]:
        """The non-default fields (``{}`` for the default): what stage keys and resume identities add."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def record(self) -> dict[str, Any]:
        """Every field (results, summaries)."""
        return self.model_dump(mode="json")

    def describe(self) -> str:
        """``bf16, channels-last`` (summaries); ``fp32`` for the default."""
        return ", ".join(
            [self.precision, *(["channels-last"] if self.channels_last else []), *(["cudnn-benchmark"] if self.cudnn_benchmark else [])]
        )

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def gradient_scale(self) -> float:
        """The attack gradient's loss scale: :data:`FP16_GRADIENT_SCALE` in fp16, else 1."""
        return FP16_GRADIENT_SCALE if self.precision == "fp16" else 1.0

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast(device_type, dtype)``, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def scaler(self, device: str | torch.device) -> torch.amp.GradScaler:
        """Training's loss scaler: enabled in fp16 only (bf16 has float32's exponent range)."""
        return torch.amp.GradScaler(torch.device(device).type, enabled=self.precision == "fp16")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Make ``model`` compute this way from now on (in place; returns it): its ``forward`` runs
        under autocast with float32 outputs, channels-last when asked. The default changes nothing."""
        if self.precision != "fp32" or self.channels_last:
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
            _patch_forward(model, self)
        return model

    @contextlib.contextmanager
    def applied(self, models: Sequence[nn.Module]) -> Iterator[None]:
        """:meth:`prepare` ``models`` and :meth:`activate` for the block; the models are restored after it."""
        prepared = [m for m in dict.fromkeys(models) if getattr(m, _PATCHED, None) is None]
        try:
            for model in prepared:
                self.prepare(model)
            with self.activate():
                yield
        finally:
            for model in prepared:
                _unpatch_forward(model)
                if self.channels_last:
                    model.to(memory_format=torch.contiguous_format)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this the :func:`active` compute (and set cuDNN autotuning) for the block."""
        token = _ACTIVE.set(self)
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark or benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = benchmark
            _ACTIVE.reset(token)

    def input_gradient(self, losses: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``d losses.sum() / d x`` in float32; in fp16 through the loss scale (module docstring)."""
        scale = self.gradient_scale
        while scale > 1.0:
            (grad,) = torch.autograd.grad(losses.sum() * scale, x, retain_graph=True)
            if bool(torch.isfinite(grad).all()):
                return grad / scale
            scale /= 16.0
        (grad,) = torch.autograd.grad(losses.sum(), x)
        return grad


class DefaultComputeUnrecorded(StrictModel):
    """Mixin of a config with a ``compute:`` field (declared by the config itself, with its own
    description): its dumps leave the default compute out, so checkpoints, resume checks, stage keys
    and results.json of fp32 runs stay as they were before compute existed."""

    if TYPE_CHECKING:
        compute: Compute

    @model_serializer(mode="wrap")
    def _default_compute_unrecorded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if isinstance(data, dict) and self.compute.is_default:
            data.pop("compute", None)
        return data


_ACTIVE: contextvars.ContextVar[Compute | None] = contextvars.ContextVar("metricattack_compute", default=None)
_DEFAULT = Compute()


def active() -> Compute:
    """The compute of the running command (:meth:`Compute.activate`; the default outside one)."""
    return _ACTIVE.get() or _DEFAULT


def make_compute(source: str = "compute options", **values: Any) -> Compute:
    """A :class:`Compute` from keyword values (None left out); a bad value is one ConfigError naming ``source``."""
    return validate(Compute, {k: v for k, v in values.items() if v is not None}, source)


def _float32(value: Any) -> Any:
    """Floating tensors of ``value`` (a tensor, or tuples / named tuples / lists / dicts of them) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_float32(v) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    return value


def _compute_forward(self: nn.Module, images: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """The patched ``forward`` (bound to the model, so a deep copy of the model calls its own)."""
    compute, own = getattr(self, _PATCHED)
    if compute.channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    inner = own if own is not None else type(self).forward.__get__(self)
    with compute.autocast(images.device.type):
        out = inner(images, *args, **kwargs)
    return _float32(out)


def _patch_forward(model: nn.Module, compute: Compute) -> None:
    """Give ``model`` an instance ``forward`` that runs its own the ``compute`` way."""
    object.__setattr__(model, _PATCHED, (compute, model.__dict__.get("forward")))
    object.__setattr__(model, "forward", types.MethodType(_compute_forward, model))


def _unpatch_forward(model: nn.Module) -> None:
    record = model.__dict__.pop(_PATCHED, None)
    if record is None:
        return
    if record[1] is None:
        model.__dict__.pop("forward", None)
    else:
        object.__setattr__(model, "forward", record[1])


# ------------------------------------------------------------------ --batch-size auto

AUTO = "auto"


def batch_size_option(text: str) -> int | str:
    """argparse type of ``--batch-size``: a positive integer or ``auto``."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto' (the largest batch that fits on the GPU), got {text!r}")
    return value


def largest_batch(trial: Callable[[int], None], *, start: int, limit: int) -> int:
    """The largest ``b`` in ``1..limit`` for which ``trial(b)`` runs without :class:`torch.OutOfMemoryError`:
    doubling from ``start``, then bisection between the last size that fit and the first that did not.
    ConfigError when not even one image fits."""

    def fits(b: int) -> bool:
        try:
            trial(b)
            return True
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return False

    good, bad = 0, limit + 1
    size = max(1, min(start, limit))
    while fits(size):  # doubling until a size fails or the limit fits
        good = size
        if size >= limit:
            break
        size = min(size * 2, limit)
    else:
        bad = size
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    if good == 0:
        raise ConfigError("--batch-size auto: not even one image fits in GPU memory; free memory or use a smaller model")
    return good


def resolve_batch_size(
    value: int | str, default: int, device: str | torch.device, trial: Callable[[int], None], *, limit: int, option: str = "--batch-size"
) -> int:
    """``value`` as a number: an integer stays; ``auto`` on a GPU is :func:`largest_batch` (from ``default``,
    at most ``limit``, the images there are); ``auto`` elsewhere is ``default``, with a message saying so."""
    if value != AUTO:
        return int(value)
    if torch.device(device).type != "cuda":
        log.warning("%s auto: %s has no GPU memory to fill; using the default batch size %d", option, device, default)
        return default
    size = largest_batch(trial, start=default, limit=max(1, limit))
    log.warning("%s auto: %d images per batch fit on %s", option, size, device)
    return size


def model_trial(
    models: Sequence[nn.Module], image_size: tuple[int, int], device: str | torch.device, *, backward: bool
) -> Callable[[int], None]:
    """A :func:`largest_batch` trial: every model's forward (and input backward: an attack) on ``b`` random images of ``image_size``."""

    def trial(b: int) -> None:
        x = torch.rand(b, 3, *image_size, device=device, requires_grad=backward)
        with torch.set_grad_enabled(backward):
            total = sum(m(x).float().sum() for m in models)
            if backward:
                torch.autograd.grad(total, x)

    return trial


def auto_batch_size(
    value: int | str, default: int, device: str | torch.device, models: Sequence[nn.Module], records: Sequence[Any], *, backward: bool
) -> int:
    """:func:`resolve_batch_size` for ``models`` on images like ``records[0]`` (one of the images the command will
    process; at most ``len(records)``); ``backward``: the trial takes an input gradient (attacks).
    Call it inside :meth:`Compute.applied`, so the trial runs at the command's precision."""
    if value != AUTO or not records:
        return default if value == AUTO else int(value)
    from .data.loading import read_image  # image I/O only when asked for

    size = tuple(read_image(records[0].path).shape[-2:])
    trial = model_trial(models, (int(size[0]), int(size[1])), device, backward=backward)
    return resolve_batch_size(value, default, device, trial, limit=len(records))


# ------------------------------------------------------------------ the commands' options


def add_compute_options(
    parser: argparse.ArgumentParser, *, batch_size: int | None = None, batch_help: str = "images per batch", config: bool = False
) -> None:
    """Add ``--precision``, ``--channels-last``, ``--cudnn-benchmark`` (and, with a default ``batch_size``,
    ``--batch-size N|auto``) to a command's parser. ``config``: the command reads a config whose
    ``compute:`` section the options override (:func:`compute_overrides`; default: the config's)."""
    group = parser.add_argument_group("compute", "how the models compute (recorded in results and stage keys when not the default)")
    fields = Compute.model_fields
    default = "the config's compute.precision" if config else "fp32"
    group.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=None if config else "fp32",
        help=f"{fields['precision'].description} (default {default})",
    )
    group.add_argument("--channels-last", action="store_true", help=fields["channels_last"].description)
    group.add_argument("--cudnn-benchmark", action="store_true", help=fields["cudnn_benchmark"].description)
    if batch_size is not None:
        group.add_argument(
            "--batch-size",
            type=batch_size_option,
            default=batch_size,
            help=f"{batch_help} (default {batch_size}); auto: the largest batch that fits in GPU memory (on CPU: the default)",
        )


def compute_overrides(args: argparse.Namespace, prefix: str = "compute") -> list[str]:
    """The config overrides (``compute.precision=bf16``, ...) of the compute options given on the command line."""
    given = [
        ("precision", args.precision),
        ("channels_last", args.channels_last or None),
        ("cudnn_benchmark", args.cudnn_benchmark or None),
    ]
    return [f"{prefix}.{name}={str(value).lower()}" for name, value in given if value is not None]


def compute_of(args: argparse.Namespace) -> Compute:
    """The :class:`Compute` of the parsed :func:`add_compute_options`."""
    return make_compute(
        "--precision / --channels-last / --cudnn-benchmark",
        precision=args.precision,
        channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark,
    )
