"""The ``metricattack`` command: one subcommand per stage (see :mod:`metricattack.commands`)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, commands
from .errors import MetricAttackError


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand found in :mod:`metricattack.commands`."""
    parser = argparse.ArgumentParser(
        prog="metricattack",
        description="Adversarial metric attack and defence for person re-identification.",
    )
    parser.add_argument("--version", action="version", version=f"metricattack {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line on stderr and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MetricAttackError as exc:
        print(f"metricattack {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metricattack {args.command}: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
