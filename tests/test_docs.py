"""The documentation site lists the whole public API (the site itself is built by `make test`: mkdocs.yml)."""

from __future__ import annotations

import re
from pathlib import Path

import metricattack as ma

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_documents_every_public_name() -> None:
    page = (ROOT / "docs" / "reference" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: metricattack\.(\w+)$", page, flags=re.MULTILINE))
    public = set(ma.__all__) - {"__version__"}
    assert sorted(public - documented) == [], "public names missing from docs/reference/api.md"
    assert sorted(documented - public) == [], "docs/reference/api.md documents names that are not public"
