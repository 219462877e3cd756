"""Typed configuration: YAML files plus ``a.b.c=value`` overrides, validated by pydantic.

Each stage defines its own pydantic model (``extra="forbid"`` so typos are caught);
:func:`load_config` turns a YAML file into that model and reports every invalid value
in one :class:`~metricattack.errors.ConfigError` naming the file and the field.

YAML is read by :func:`parse_yaml` (files and override values alike), which refuses with one
``ConfigError`` naming the place: a key given twice in one mapping (YAML would keep the last
value silently; ``<<:`` merges still override), a document whose aliases would expand to more
than :data:`MAX_VALUES` values (counted on the parsed graph without expanding it: a 9-line
"billion laughs" file is refused at once instead of filling the memory), tags that ask for
Python objects (``!!python/...``), text that is not UTF-8, and malformed YAML.
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


#: Most values (scalars, lists, mappings) a config may hold once its aliases are expanded.
MAX_VALUES = 100_000


class _Refused(Exception):
    """A YAML document :func:`parse_yaml` refuses: ``message`` at 1-based ``line``."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _Refused(f"key {key!r} is given twice in one mapping (first on line {first_line[key]}); keep one", line)
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values ``node`` stands for once every alias is expanded; each node counted once (no expansion)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _Refused("an alias refers to the collection that contains it (a recursive structure)", node.start_mark.line + 1)
    open_nodes.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes) for k, v in node.value)
    else:
        size = 1
    open_nodes.discard(key)
    sizes[key] = size
    return size


def parse_yaml(text: str, source: str) -> Any:
    """The data of YAML ``text`` (one document); ConfigError naming ``source`` (and the line) otherwise.

    Refuses duplicate keys, alias expansions beyond :data:`MAX_VALUES` values, recursive aliases
    and tags other than YAML's plain types (e.g. ``!!python/object``).
    """
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_VALUES:
            raise _Refused(f"its aliases expand to {size:,} values, more than the {MAX_VALUES:,} a config may hold", 1)
        return loader.construct_document(node)
    except _Refused as exc:
        raise ConfigError(f"{source}, line {exc.line}: {exc}") from None
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        if "tag" in str(exc.problem):
            raise ConfigError(
                f"{source}, line {line}: {exc.problem}; a config holds plain data (numbers, strings, lists, mappings), "
                "no Python objects or other tags"
            ) from None
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a config") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with a clear error when it is missing or malformed (:func:`parse_yaml`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (expected a YAML file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    data = parse_yaml(text, f"config file {path}")
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
                    node[index] = parse_yaml(raw, f"override {item!r}")
                else:
                    node = _section(node[index], ".".join(keys[: depth + 1]), item)
            elif last:
                node[key] = parse_yaml(raw, f"override {item!r}")
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
