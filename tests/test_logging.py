"""The library logs and never prints; the CLI configures logging (level options, one line per message)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import metricattack
from metricattack.cli import build_parser, configure_logging

PACKAGE = Path(metricattack.__file__).parent


def _prints(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return [n.lineno for n in calls if isinstance(n.func, ast.Name) and n.func.id == "print"] + [
        n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "print" and not isinstance(n.ctx, ast.Store)
    ]


def test_library_modules_do_not_print() -> None:
    """Only the command modules (results on stdout) and cli.py (errors) may print."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("commands/") or rel == "cli.py":
            continue
        lines = _prints(path)
        if lines:
            offenders[rel] = lines
    assert offenders == {}


@pytest.mark.parametrize(
    "argv, level",
    [
        ([], "info"),
        (["-q"], "warning"),
        (["evaluate", "-v"], "debug"),
        (["--log-level", "error"], "error"),
        (["-q", "evaluate"], "warning"),
    ],
)
def test_level_options_before_or_after_the_command(argv: list[str], level: str) -> None:
    command = [] if "evaluate" in argv else ["evaluate"]
    args = build_parser().parse_args([*argv, *command, "--checkpoint", "m.safetensors", "--data-root", "d", "--dataset", "folder"])
    assert args.log_level == level


def test_one_line_per_message_at_the_chosen_level(capsys) -> None:
    logger = logging.getLogger("metricattack.some.module")
    try:
        configure_logging("info")
        logger.debug("hidden")
        logger.info("epoch 3/8: loss %.2f", 1.5)
        logger.warning("odd counts")
        configure_logging("debug")
        logger.debug("details")
        configure_logging("warning")
        logger.info("quiet now")
    finally:
        configure_logging("warning")
    assert capsys.readouterr().err.splitlines() == [
        "metricattack: epoch 3/8: loss 1.50",
        "metricattack: warning: odd counts",
        "metricattack: debug: [metricattack.some.module] details",
    ]
