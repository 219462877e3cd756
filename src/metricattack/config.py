"""Typed configuration: YAML files plus ``a.b.c=value`` overrides, validated by pydantic.

Each stage defines its own pydantic model (``extra="forbid"`` so typos are caught);
:func:`load_config` turns a YAML file into that model and reports every invalid value
in one :class:`~metricattack.errors.ConfigError` naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (expected a YAML file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.sub=value`` overrides applied (values parsed as YAML).

    A key inside a list is an index (``models.3.train.seed=1``) or the ``name`` of an entry
    (``models.B4.train.seed=1``); neither may add a list entry.
    """
    result: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key")
        node: dict[str, Any] | list[Any] = result
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                index = _list_index(node, key, item)
                if last:
                    node[index] = yaml.safe_load(raw)
                else:
                    node = _section(node[index], ".".join(keys[: depth + 1]), item)
            elif last:
                node[key] = yaml.safe_load(raw)
            else:
                node = _section(node.setdefault(key, {}), ".".join(keys[: depth + 1]), item)
    return result


def _section(child: Any, where: str, item: str) -> dict[str, Any] | list[Any]:
    if not isinstance(child, dict | list):
        raise ConfigError(f"override {item!r}: {where!r} is not a section")
    return child


def _list_index(entries: list[Any], key: str, item: str) -> int:
    """Position of ``key`` in a config list: an index (``3``, ``-1``) or the ``name`` of an entry."""
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    if key in names:
        return names.index(key)
    try:
        index = int(key)
    except ValueError:
        index = None
    if index is None or not -len(entries) <= index < len(entries):
        named = f" or one of the names {', '.join(str(n) for n in names)}" if any(n is not None for n in names) else ""
        raise ConfigError(
            f"override {item!r}: {key!r} is not an entry of a list of {len(entries)} (use an index 0..{len(entries) - 1}{named})"
        )
    return index % len(entries)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def validate(model: type[ModelT], data: dict[str, Any], source: str) -> ModelT:
    """Validate ``data`` against ``model``; one ConfigError listing every problem in ``source``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "(top level)"
            problems.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(problems)) from None


def load_config(model: type[ModelT], path: str | Path, overrides: Sequence[str] = ()) -> ModelT:
    """Load YAML ``path``, apply ``overrides`` and validate against ``model``."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate(model, data, str(path))
