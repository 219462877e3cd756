"""Checkpoints: weights as safetensors, everything else as a JSON sidecar.

``save_checkpoint(model, "run/model.safetensors", meta)`` writes

* ``run/model.safetensors``: the model's state dict;
* ``run/model.json``: ``{"format", "spec" (the model's ``spec()``: its ``architecture``
  name, classes, input size, normalisation, retrieval ``feature_space``, ...),
  "weights_sha256", "modules", "environment" (code versions), "meta"}`` where ``meta`` is the
  caller's provenance (config, dataset fingerprint, epoch, seed, ...) and ``modules`` names
  the user modules that registered the model's architecture or backbone
  (``{"backbone": "mynets.backbones"}``), imported on load only when that name is not
  registered yet and the user allowed the module (:mod:`.plugins`).

:func:`load_model` rebuilds the architecture the spec names (``models.base.ARCHITECTURES``);
a spec without ``architecture`` (written before architectures existed) is a ``ReIDModel``.

Both files are written atomically, weights first; the JSON records the weights' SHA-256, so
a pair torn by a crash between the two writes is detected on load. The optimiser state for
resuming lives in a third file ``*.train-state.pt`` (tensors and plain containers only,
read back with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, MetricAttackError
from ..io import atomic_path, atomic_write_json, environment_versions, sha256_file
from .base import ReIDNet, architecture_of, build_from_spec
from .plugins import defining_modules, require_registered

FORMAT = "metricattack.reid-checkpoint/1"


def meta_path(path: Path) -> Path:
    """The JSON sidecar of checkpoint ``path``."""
    return Path(path).with_suffix(".json")


def train_state_path(path: Path) -> Path:
    """The resume-state file (optimiser, epoch, RNG) of checkpoint ``path``."""
    return Path(path).with_suffix(".train-state.pt")


def save_checkpoint(model: ReIDNet, path: Path, meta: dict[str, Any]) -> Path:
    """Write ``model``'s weights to ``path`` (.safetensors) and its JSON sidecar; return ``path``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint path {path} must end in .safetensors")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    record = {
        "format": FORMAT,
        "spec": model.spec(),
        "weights_file": path.name,
        "weights_sha256": sha256_file(path),
        "modules": defining_modules(model),  # user modules that registered its architecture / backbone (.plugins)
        "environment": environment_versions(),
        "meta": meta,
    }
    atomic_write_json(meta_path(path), record)
    return path


def save_train_state(path: Path, state: dict[str, Any]) -> Path:
    """Atomically write resume state (tensors / numbers / containers only) beside checkpoint ``path``."""
    target = train_state_path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)  # through a Python file: a full disk surfaces as OSError(ENOSPC), not a bare RuntimeError
    return target


def load_train_state(path: Path) -> dict[str, Any]:
    """Read the resume state written by :func:`save_train_state` for checkpoint ``path``."""
    target = train_state_path(path)
    if not target.is_file():
        raise CheckpointError(f"training state {target} does not exist (needed to resume from {path})")
    try:
        return torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"cannot read training state {target}: {exc}") from None


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """The parsed JSON sidecar of checkpoint ``path`` (validated to hold a model spec)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint {path} must be the .safetensors weights file (its .json sidecar is found beside it)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a .safetensors file written by `metricattack train`)")
    sidecar = meta_path(path)
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint metadata {sidecar} is missing (every checkpoint {path.name} needs its .json sidecar)")
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {sidecar} is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("spec"), dict):
        raise CheckpointError(
            f"checkpoint metadata {sidecar} is not a metricattack checkpoint record (expected format {FORMAT!r} and a 'spec')"
        )
    return record


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_expected(spec: dict[str, Any], expect: dict[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` when ``spec`` disagrees with any key of ``expect``."""
    for key, wanted in expect.items():
        if key not in spec:
            raise CheckpointError(f"checkpoint {path} has no {key!r} in its architecture spec (expected {wanted!r})")
        if _normalise(spec[key]) != _normalise(wanted):
            raise CheckpointError(f"checkpoint {path} has {key}={spec[key]!r} but the config expects {key}={wanted!r}")


def _backbone(spec: dict[str, Any]) -> str:
    return f" (backbone {spec['backbone']!r})" if "backbone" in spec else ""


def load_model(
    path: Path, device: str | torch.device = "cpu", expect: dict[str, Any] | None = None, *, allow_modules: Iterable[str] = ()
) -> ReIDNet:
    """Rebuild the model saved at ``path`` and load its weights; returned in eval mode on ``device``.

    ``expect`` maps spec keys (``backbone``, ``num_classes``, ``input_size``, ...) to the values
    a config requires; any disagreement raises :class:`CheckpointError`. ``allow_modules``: user
    modules the checkpoint may import when its architecture or backbone is not registered yet
    (:func:`~.plugins.require_registered`; nothing is imported otherwise).
    """
    path = Path(path)
    record = checkpoint_meta(path)
    spec = record["spec"]
    check_expected(spec, expect or {}, path)
    if record.get("weights_sha256") and sha256_file(path) != record["weights_sha256"]:
        raise CheckpointError(f"checkpoint {path} does not match the SHA-256 recorded in {meta_path(path)} (torn or replaced file)")
    require_registered(spec, record.get("modules"), path, allow_modules)
    try:
        model = build_from_spec(spec)
    except (MetricAttackError, TypeError) as exc:
        raise CheckpointError(f"checkpoint metadata {meta_path(path)} has an unusable spec: {exc}") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint weights {path}: {exc}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint weights {path} do not match its {architecture_of(spec)!r} architecture{_backbone(spec)}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    model.load_state_dict(state)
    return model.to(device).eval()
