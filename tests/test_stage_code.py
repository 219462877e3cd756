"""Every cached stage's key covers the code its work runs: a stage's ``code`` packages must be closed
under imports, or a change in an imported package would reuse a stale result (the defense leaderboard's
robust stage once ran the robustness protocol without ``robustness`` in its key)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from metricattack.benchmark import resources
from metricattack.benchmark.experiments import robustness, table5
from metricattack.commands import evaluate
from metricattack.stages import PACKAGE_ROOT

# Top-level modules (errors, io, registry, config, wording, distributed, overlap, progress, ...) hold
# plumbing, not numerics: they are not part of any stage's code; except these, which change what a model
# computes (autocast, the fp16 gradient scale) and so must be in the code of every stage that imports them.
NUMERIC_TOP_LEVEL = {"compute"}
CODES = {
    "data": resources.CODE_DATA,
    "train": resources.CODE_TRAIN,
    "features": resources.CODE_FEATURES,
    "attack": resources.CODE_ATTACK,
    "defense": table5.CODE_DEFENSE,
    "robustness": robustness.CODE,
    "learned metric": resources.CODE_LEARNED,
    "evaluate --features-cache": evaluate.CODE_FEATURES_CACHE,
}


def imported_modules(path: Path) -> set[str]:
    """``metricattack`` modules imported anywhere in ``path`` (lazy imports included), as paths relative
    to the package root without suffix (``attacks/engine``); names imported from a package count as modules."""
    parts = list(path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
    here = parts[:-1]  # the package the file is in
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "metricattack":
                module = node.module.split(".")[1:]
            else:
                continue
            found.add("/".join(module))
            found.update("/".join([*module, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update("/".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "metricattack")
    return {m for m in found if "/" in m or m in NUMERIC_TOP_LEVEL or (m and (PACKAGE_ROOT / m).is_dir())}  # plumbing left out


def files_of(entry: str) -> list[Path]:
    target = PACKAGE_ROOT / entry
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


def covered(module: str, code: tuple[str, ...]) -> bool:
    return any(module == entry or module.startswith(f"{entry}/") for entry in code)


@pytest.mark.parametrize("stage", sorted(CODES))
def test_stage_code_is_closed_under_imports(stage: str) -> None:
    code = CODES[stage]
    missing: dict[str, str] = {}
    for entry in code:
        for path in files_of(entry):
            for module in imported_modules(path):
                exists = (PACKAGE_ROOT / module).is_dir() or (PACKAGE_ROOT / module).with_suffix(".py").is_file()
                if exists and not covered(module, code):
                    missing.setdefault(module, str(path.relative_to(PACKAGE_ROOT)))
    assert not missing, f"stage code {code} misses what it imports (module <- importer): {missing}"


def test_the_check_sees_a_missing_package() -> None:
    """The defense code without ``robustness`` in it (as it once was) is caught."""
    importers = {m for p in files_of("defense") for m in imported_modules(p)}
    assert "robustness/evaluate" in importers and not covered("robustness/evaluate", ("data", "defense"))


def test_the_check_sees_a_missing_numeric_module() -> None:
    """Attack code imports ``compute`` (autocast, the fp16 gradient scale): a key without it is caught."""
    importers = {m for p in files_of("attacks") for m in imported_modules(p)}
    assert "compute" in importers and not covered("compute", ("data", "models", "metrics", "attacks", "evaluation"))
