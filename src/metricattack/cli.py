"""The ``metricattack`` command: one subcommand per stage (see :mod:`metricattack.commands`)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import pkgutil
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from . import __version__, commands
from .distributed import launched_by_torchrun, process_group, resolve_device
from .errors import MetricAttackError, MetricAttackWarning
from .io import is_disk_full
from .models.plugins import allowing
from .progress import LINE_SECONDS, SECONDS_VARIABLE, bars_allowed, line_seconds
from .registry import Registry

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand found in :mod:`metricattack.commands`."""
    parser = argparse.ArgumentParser(
        prog="metricattack",
        description="Adversarial metric attack and defense for person re-identification.",
    )
    parser.add_argument("--version", action="version", version=f"metricattack {__version__}")
    add_log_options(parser, default="info")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    registered = registered_names()
    for subparser in subparsers.choices.values():
        add_log_options(subparser, default=argparse.SUPPRESS)  # after the command too; the top-level value stays otherwise
        add_allow_module_option(subparser)
        subparser.formatter_class = _LineFormatter
        subparser.epilog = registered
    return parser


def registered_names() -> str:
    """What the registries hold now (the help epilog of every command), one line per kind.

    Names registered by user code (``register_backbone``, ``FORMATS.register``, ...) appear once
    that code is imported, e.g. by a ``--model python:...`` module or a checkpoint that records it.
    """
    from .attack_options import methods_help
    from .attacks.methods import METHODS
    from .attacks.threats import THREATS
    from .data.layouts import DATASETS
    from .metrics.distance import METRICS
    from .metrics.learned import LEARNED_METRICS
    from .models.backbones import BACKBONES
    from .models.base import ARCHITECTURES
    from .models.foreign import FORMATS

    kinds: dict[str, Registry[Any]] = {
        "architectures": ARCHITECTURES,
        "backbones": BACKBONES,
        "datasets": DATASETS,
        "metrics": METRICS,
        "learned metrics": LEARNED_METRICS,
        "attack methods": METHODS,
        "threat models (--threat)": THREATS,
        "model formats (--model)": FORMATS,
    }
    lines = [f"{kind}: {', '.join(registry.listing())}" for kind, registry in kinds.items()]
    return (
        "registered:\n"
        + "\n".join(lines)
        + "\n\nattack methods and their options (an attack: section or --method-option KEY=VALUE):\n"
        + methods_help()
    )


class _LineFormatter(argparse.HelpFormatter):
    """Keeps the line breaks of descriptions and epilogs, wrapping each line on its own."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + "  ") for line in text.splitlines())


def add_log_options(parser: argparse.ArgumentParser, default: str) -> None:
    """``--log-level``, ``-q`` (warnings and errors only) and ``-v`` (debug) into ``args.log_level``;
    ``--no-progress`` into ``args.no_progress`` (see :mod:`metricattack.progress`)."""
    group = parser.add_argument_group("logging")
    group.add_argument("--log-level", choices=LOG_LEVELS, default=default, help="messages shown on stderr (default info)")
    group.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const="warning",
        default=default,
        help="no progress bars and no information lines: warnings, errors and the results only",
    )
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug", default=default, help="debug messages")
    group.add_argument(
        "--no-progress",
        action="store_true",
        default=argparse.SUPPRESS if default == argparse.SUPPRESS else False,
        help="no progress bars; the information lines stay (long loops: one line per stage or epoch, "
        f"else at most one per ${SECONDS_VARIABLE} s, default {LINE_SECONDS:g}). Bars show only when stderr is a terminal",
    )


def add_allow_module_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-module NAME`` (repeatable) into ``args.allow_modules``: see :mod:`metricattack.models.plugins`."""
    parser.add_argument(
        "--allow-module",
        dest="allow_modules",
        action="append",
        default=[],
        metavar="NAME",
        help="a module a checkpoint may import when the architecture or backbone it needs is not registered "
        "(its code runs: only modules you trust; repeatable; also $METRICATTACK_ALLOW_MODULES). "
        "Without it a checkpoint imports nothing",
    )


class _LogFormatter(logging.Formatter):
    """One line per record: ``metricattack: message`` (info), ``metricattack: warning: message``, ..."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        where = f"[{record.name}] " if record.levelno < logging.INFO else ""
        return f"metricattack: {level}{where}{record.getMessage()}"


class _TqdmHandler(logging.Handler):
    """Writes records to stderr through ``tqdm.write`` so progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never stop the work
            self.handleError(record)


def configure_logging(level: str) -> None:
    """Send the library's log records (logger ``metricattack``) at ``level`` and above to stderr, one line each."""
    logger = logging.getLogger("metricattack")
    for handler in [h for h in logger.handlers if isinstance(h, _TqdmHandler)]:
        logger.removeHandler(handler)
    handler = _TqdmHandler()
    handler.setFormatter(_LogFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line on stderr and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    _SHOWN.clear()  # once per run, not per process (a notebook or test calls main() again)
    warnings.showwarning = _show_warning
    try:
        line_seconds()  # a bad $METRICATTACK_PROGRESS_SECONDS stops here, before any work
        # bars are information too; for this run only (a notebook or a test calls main() again)
        with (
            allowing(args.allow_modules),
            bars_allowed(not args.no_progress and args.log_level in ("debug", "info")),
            _every_warning_reaches_the_run(),
        ):
            return int(_run(args) or 0)
    except MetricAttackError as exc:
        print(f"metricattack {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system refusal the checks could not foresee (disk full, a folder removed meanwhile)
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        hint = "; free some space and run the same command again: it resumes from the finished work" if is_disk_full(exc) else ""
        print(f"metricattack {args.command}: error: {where or 'file system'}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metricattack {args.command}: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _every_warning_reaches_the_run() -> Iterator[None]:
    """This package's warnings pass Python's filter every time during a run (:func:`_show_warning` shows
    each once per run): its default keeps, per code location, the texts already shown in this process, so
    a second run in one process (a notebook, a test) would hide a warning the first run showed."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", MetricAttackWarning)
        warnings.showwarning = _show_warning
        yield


_PYTHON_SHOWWARNING = warnings.showwarning
_SHOWN: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """:class:`MetricAttackWarning` s once per run, as one line ``metricattack: warning: ...``
    (stages re-load the same dataset); other warnings as Python shows them."""
    if not issubclass(category, MetricAttackWarning):
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)
        return
    text = f"metricattack: warning: {message}"
    if text not in _SHOWN:
        _SHOWN.add(text)
        print(text, file=sys.stderr if file is None else file)


def _run(args: argparse.Namespace) -> int | None:
    """Run the subcommand; under torchrun, inside the process group its ``torchrun`` default asks for.

    ``torchrun="group"``: the command shards its batch work over the ranks of a group made here
    (on ``--device``); ``"self"``: the command makes its own group (training); unset: the
    command runs in one process and refuses torchrun rather than repeat its work on every rank.
    """
    mode = getattr(args, "torchrun", None)
    device = resolve_device(getattr(args, "device", "cpu"))  # a device this machine lacks stops here, before any work
    if hasattr(args, "device"):
        args.device = str(device)  # auto -> cpu / cuda; cuda -> cuda:LOCAL_RANK under torchrun
    if not launched_by_torchrun() or mode == "self":
        return args.func(args)
    if mode != "group":
        raise MetricAttackError(
            f"'{args.command}' runs in one process; start it without torchrun "
            "(torchrun shards the work of: train, evaluate, fit-metric, attack)"
        )
    with process_group(device):
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
