"""MkDocs hook (mkdocs.yml ``hooks:``) for the docstrings' Sphinx markup: roles (``:func:`wrap```) become
code, linked to the API reference's entry when the name is a documented public name
(``metricattack.NAME``), and a paragraph's ``::`` before a literal block becomes ``:``."""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:func|class|data|mod|meth|attr|exc|obj):<code>~?([\w.]+)</code>")


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    anchors = set(re.findall(r'id="(metricattack\.[\w.]+)"', html))

    def code(match: re.Match[str]) -> str:
        short = match.group(1).rsplit(".", 1)[-1]  # metricattack.attacks.ops.quantize -> quantize
        text = f"<code>{short}</code>"
        return f'<a href="#metricattack.{short}">{text}</a>' if f"metricattack.{short}" in anchors else text

    return ROLE.sub(code, html).replace("::</p>", ":</p>")
