"""English for generated sentences: a count with its noun, a verb that agrees with a count.

>>> counted(1, "image"), counted(3, "query", "queries")
('1 image', '3 queries')
>>> agree(1, "holds", "hold"), agree(2, "was", "were")
('holds', 'were')
"""

from __future__ import annotations


def agree(n: int, singular: str, plural: str) -> str:
    """``singular`` when ``n`` is 1, else ``plural`` (a noun or a verb agreeing with ``n``)."""
    return singular if n == 1 else plural


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` followed by its noun: ``counted(1, "image")`` → ``"1 image"``, ``counted(2, "image")`` →
    ``"2 images"`` (``plural`` defaults to ``singular + "s"``)."""
    return f"{n} {agree(n, singular, plural or singular + 's')}"
