"""Reading state dicts from files safely, and loading them into a model exactly.

A weights file is a ``.safetensors`` file or a ``torch.save`` file read with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickled
objects. NumPy scalars are allowed besides (torchreid's engine stores its rank-1 as one in every
``model.pth.tar-N`` it saves): they are numbers, rebuilt from their dtype and bytes. The usual
wrappers of other projects are unwrapped: ``{"state_dict": ...}`` (torchreid, plain PyTorch
checkpoints), ``{"model": ...}`` (fast-reid, detectron2-style checkpointers), and the
``module.`` prefix of ``DataParallel`` models.

Example::

    state = read_state_dict(Path("resnet50_market_xent.pth.tar"))
    load_exact(model, state, "resnet50_market_xent.pth.tar")  # CheckpointError naming what does not fit
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
_NUMERIC_CODES = "?bBhHiIlLqQefdg"  # bool, integers, floats: the dtypes of numbers (never object)


def _numpy_scalar_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` must also accept to rebuild NumPy number scalars
    (pickled by NumPy 2 as ``numpy._core.multiarray.scalar``, by NumPy 1 as ``numpy.core.multiarray.scalar``)."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar  # type: ignore[attr-defined]
    dtype_classes = list(dict.fromkeys(type(np.dtype(code)) for code in _NUMERIC_CODES))
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


def read_state_dict(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` state dict stored in ``path`` (see the module docstring).

    Raises :class:`CheckpointError` naming ``what`` and ``path`` when the file is missing, is
    not a safetensors / ``torch.save`` file, holds non-tensor objects that ``weights_only``
    refuses, or does not hold a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist (expected a .safetensors or .pth state dict)")
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a file we cannot use
        raise CheckpointError(
            f"cannot read {what} {path} as safetensors or as a torch.save file of tensors "
            f"(torch.load with weights_only=True; arbitrary pickled objects are refused): {str(exc).splitlines()[0]}"
        ) from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{what} {path} does not hold a state dict (got {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{what} {path} is not a state dict of tensors: entries {bad[:5]} are not named tensors")
    if all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return state


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], source: str, expected: str = "") -> nn.Module:
    """Load ``state`` into ``model`` when keys and shapes match exactly; return ``model``.

    Otherwise raise one :class:`CheckpointError` naming ``source`` (the file), ``expected`` (what
    it should hold, e.g. ``"a torchreid ResNet-50 checkpoint"``) and the first missing,
    unexpected and mis-shaped entries.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        hint = f" (expected {expected})" if expected else ""
        raise CheckpointError(
            f"weights {source} do not fit the model{hint}: {len(missing)} missing {missing[:4]}, "
            f"{len(unexpected)} unexpected {unexpected[:4]}, shape mismatches {wrong[:4]}"
        )
    model.load_state_dict(state)
    return model
