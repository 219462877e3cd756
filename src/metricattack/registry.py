"""One registry class for every kind of named, pluggable thing.

Backbones, model architectures, dataset layouts, metrics, attack methods, threat models
and benchmark experiments are each listed in one :class:`Registry`; code elsewhere takes
the names from there (``registry.names()``), never from a copied tuple. A registry is
filled by decorator or by call, refuses a duplicate name, and turns an unknown name into a
:class:`~metricattack.errors.MetricAttackError` that lists what is available.

Example::

    BACKBONES: Registry[Builder] = Registry("backbone")

    @BACKBONES.register("resnet18")
    def build_resnet18(pretrained, last_stride): ...

    BACKBONES.register("mynet", build_mynet)   # the call form
    BACKBONES.get("resnet18")                  # the builder
    BACKBONES.get("resnet81")                  # MetricAttackError: unknown backbone 'resnet81'; available: ...
    BackboneName = Annotated[str, AfterValidator(BACKBONES.check)]   # a pydantic field type

A *family* resolves every name under a prefix on demand, for open-ended sets that another
package lists (``timm:<any timm model>``)::

    BACKBONES.register_family("timm:", timm_builder, "any timm model name, e.g. timm:vit_small_patch16_224")
    BACKBONES.get("timm:resnet50")               # timm_builder("resnet50")

Where the registries live: ``models.backbones.BACKBONES``, ``data.layouts.DATASETS``,
``metrics.distance.METRICS``, ``metrics.learned.LEARNED_METRICS``, ``attacks.methods.METHODS``
and ``attacks.threats.THREATS`` (DEVELOPERS.md lists them all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from .errors import MetricAttackError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects of one ``kind`` (used in messages, e.g. ``"backbone"``), in registration order.

    ``error`` is the :class:`MetricAttackError` subclass raised for an unknown name (e.g.
    :class:`~metricattack.errors.DatasetError` for dataset layouts).
    """

    def __init__(self, kind: str, *, error: type[MetricAttackError] = MetricAttackError) -> None:
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}
        self._families: dict[str, tuple[Callable[[str], T], str]] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Add ``obj`` under ``name`` (call form), or return a decorator that does (``obj`` omitted).

        Raises ValueError when ``name`` is empty or already taken (a programming error, not user input).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def register_family(self, prefix: str, resolve: Callable[[str], T], description: str) -> None:
        """Resolve every name ``prefix + rest`` that is not registered itself as ``resolve(rest)``.

        ``resolve`` raises this registry's error (a :class:`MetricAttackError`) naming what is wrong
        (an unknown ``rest``, a package that is not installed); ``description`` says which names
        the family takes (listed with the names, e.g. in ``--help``). ValueError for a taken prefix.
        """
        if not prefix or prefix in self._families:
            raise ValueError(f"{self.kind} family prefix {prefix!r} is empty or already registered")
        self._families[prefix] = (resolve, description)

    def get(self, name: str) -> T:
        """The object registered as ``name`` (or resolved by its family); MetricAttackError naming the available ones otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            pass
        if isinstance(name, str):
            for prefix, (resolve, _) in self._families.items():
                if name.startswith(prefix):
                    return resolve(name[len(prefix) :])
        raise self.error(self.unknown_message(name))

    def unknown_message(self, name: object) -> str:
        """``unknown <kind> 'name'; available: a, b`` (also for validators that must raise ValueError)."""
        return f"unknown {self.kind} {name!r}; available: {', '.join(self.listing()) or '(none)'}"

    def check(self, name: str) -> str:
        """``name`` if registered (or resolved by its family), else ValueError (for pydantic validators:
        ``AfterValidator(REG.check)``) with the registry's message."""
        try:
            self.get(name)
        except MetricAttackError as exc:
            raise ValueError(str(exc)) from None
        return name

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order (families' names are resolved on demand: :meth:`listing`)."""
        return tuple(self._items)

    def listing(self) -> tuple[str, ...]:
        """Registered names, then each family as ``prefix<description>`` (for messages and ``--help``)."""
        return (*self._items, *(f"{prefix}<{description}>" for prefix, (_, description) in self._families.items()))

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        if not isinstance(name, str) or not any(name.startswith(prefix) for prefix in self._families):
            return False
        try:
            self.get(name)
        except MetricAttackError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"
