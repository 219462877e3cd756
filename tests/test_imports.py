"""Every module imports on its own: the typical failure of an import cycle ("partially initialized
module") appears only when a module of the cycle is the *first* one imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# One interpreter: before each module, forget every metricattack module (third-party ones stay
# loaded, so this costs ~2 s of CPU instead of one interpreter per module).
IMPORT_EACH_FIRST = """
import importlib, pkgutil, sys, traceback
import metricattack
names = sorted(m.name for m in pkgutil.walk_packages(metricattack.__path__, "metricattack.") if not m.name.endswith("__main__"))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "metricattack" or m.startswith("metricattack.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-1).strip().splitlines()[-1])
print(len(names))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH_FIRST], capture_output=True, text=True, cwd=SRC, timeout=300)
    assert done.returncode == 0, f"modules that fail when imported first:\n{done.stdout}{done.stderr}"
    assert int(done.stdout.split()[0]) > 50  # the walk found the package's modules
