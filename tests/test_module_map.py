"""DEVELOPERS.md's module map names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "metricattack"


def mapped_paths(text: str) -> set[str]:
    """The backticked ``*.py`` files and ``folder/`` packages in the first column of the module map's table."""
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {token for cell in first_cells for token in re.findall(r"`([^`]+)`", cell) if token.endswith((".py", "/"))}


def unmapped(modules: list[str], mapped: set[str]) -> list[str]:
    """``modules`` (paths relative to the package) neither listed nor inside a listed package
    (a subpackage's ``__init__.py`` counts as listed when a module beside it is)."""
    folders = tuple(p for p in mapped if p.endswith("/"))
    with_listed = {p.rpartition("/")[0] for p in mapped if "/" in p.rstrip("/")}

    def listed(m: str) -> bool:
        folder, _, name = m.rpartition("/")
        return m in mapped or m.startswith(folders) or (name == "__init__.py" and folder in with_listed)

    return [m for m in modules if not listed(m)]


def test_every_module_is_in_the_map_and_every_entry_exists() -> None:
    mapped = mapped_paths((ROOT / "DEVELOPERS.md").read_text(encoding="utf-8"))
    modules = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
    assert len(mapped) > 40 and {"stages.py", "defense/", "benchmark/experiments/"} <= mapped  # the map was read
    assert unmapped(modules, mapped) == [], "modules missing from DEVELOPERS.md's module map"
    assert sorted(p for p in mapped if not (PACKAGE / p).exists()) == [], "module map entries that do not exist"


def test_a_missing_module_is_found() -> None:
    text = "## Module map\n| module | contract |\n|---|---|\n| `a.py`, `pkg/` | x `b.py` |\n| `sub/m.py` | |\n## Next\n| `c.py` | |\n"
    mapped = mapped_paths(text)
    assert mapped == {"a.py", "pkg/", "sub/m.py"}
    modules = ["a.py", "pkg/x.py", "b.py", "c.py", "sub/__init__.py", "sub/n.py", "other/__init__.py"]
    assert unmapped(modules, mapped) == ["b.py", "c.py", "sub/n.py", "other/__init__.py"]
