"""The generic registry: decorator and call forms, duplicates, unknown names."""

import pytest

from metricattack.errors import MetricAttackError
from metricattack.registry import Registry


def test_decorator_and_call_forms_keep_registration_order() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("b")
    def build_b() -> str:
        return "b"

    returned = reg.register("a", len)
    assert returned is len
    assert reg.names() == ("b", "a")
    assert reg.get("b") is build_b and reg.get("a") is len
    assert "a" in reg and "z" not in reg
    assert list(reg) == ["b", "a"] and len(reg) == 2


def test_duplicate_name_is_refused() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("x", 1)
    with pytest.raises(ValueError, match="widget 'x' is already registered"):
        reg.register("x", 2)
    assert reg.get("x") == 1


def test_unknown_name_lists_what_is_available() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("one", 1)
    reg.register("two", 2)
    with pytest.raises(MetricAttackError, match=r"unknown widget 'three'; available: one, two"):
        reg.get("three")
    with pytest.raises(MetricAttackError, match=r"unknown widget \['x'\]"):
        reg.get(["x"])  # type: ignore[arg-type]


def test_empty_name_is_refused() -> None:
    reg: Registry[int] = Registry("widget")
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", 1)


def test_a_family_resolves_names_under_its_prefix_on_demand() -> None:
    reg: Registry[str] = Registry("widget")
    reg.register("plain", "p")

    def resolve(rest: str) -> str:
        if rest not in ("a", "b"):
            raise MetricAttackError(f"the zoo has no widget {rest!r}")
        return rest.upper()

    reg.register_family("zoo:", resolve, "a zoo widget")
    assert reg.get("zoo:a") == "A" and reg.get("plain") == "p"
    assert "zoo:b" in reg and "zoo:c" not in reg and "other:a" not in reg
    assert reg.names() == ("plain",) and reg.listing() == ("plain", "zoo:<a zoo widget>")
    with pytest.raises(MetricAttackError, match="the zoo has no widget 'c'"):
        reg.get("zoo:c")
    with pytest.raises(ValueError, match="the zoo has no widget 'c'"):
        reg.check("zoo:c")
    with pytest.raises(MetricAttackError, match=r"unknown widget 'other:a'; available: plain, zoo:<a zoo widget>"):
        reg.get("other:a")
    with pytest.raises(ValueError, match="already registered"):
        reg.register_family("zoo:", resolve, "again")
