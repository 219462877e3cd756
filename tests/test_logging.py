"""The library logs and never prints; the CLI configures logging (level options, one line per message); long loops
show bars on a terminal and information lines at a bounded rate elsewhere (:mod:`metricattack.progress`)."""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import sys
from pathlib import Path

import pytest

import metricattack
from metricattack import progress
from metricattack.cli import build_parser, configure_logging, main
from metricattack.progress import Progress

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


# ----------------------------------------------------------------- progress: bars on a terminal, lines elsewhere
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "metricattack.progress"]


def test_a_loop_writes_lines_at_a_bounded_rate_without_a_terminal(monkeypatch, caplog) -> None:
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "30")
    caplog.set_level(logging.INFO, logger="metricattack")
    with Progress[int](desc="attack gallery", total=100, unit="batch") as bar:
        for _ in range(100):
            clock.now += 1.0  # one batch a second: a line at 30, 60 and 90 s, then the closing line
            bar.update()
    assert _lines(caplog) == [
        "attack gallery: 30/100 batches (30 %), 00:30 so far, ~01:10 left",
        "attack gallery: 60/100 batches (60 %), 01:00 so far, ~00:40 left",
        "attack gallery: 90/100 batches (90 %), 01:30 so far, ~00:10 left",
        "attack gallery: 100/100 batches (100 %) in 01:40",
    ]
    caplog.clear()
    list(Progress(range(1000), desc="short", unit="batch"))  # shorter than the interval: nothing
    list(Progress(["B1", "B2", "B3"], desc="base models", unit="stage", lines="each", label=str))  # one line as each stage starts
    clock.now += 600
    list(Progress(range(5), desc="silent", report=False))
    assert _lines(caplog) == [
        "base models 1/3: B1",
        "base models 2/3: B2 (00:00 so far, ~00:00 left)",
        "base models 3/3: B3 (00:00 so far, ~00:00 left)",
    ]


def test_bars_only_on_a_terminal_and_when_allowed(monkeypatch, caplog) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "0")
    caplog.set_level(logging.INFO, logger="metricattack")
    list(Progress(range(3), desc="features", unit="batch"))
    assert "\r" in terminal.getvalue() and "features" in terminal.getvalue() and _lines(caplog) == []
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.bars_allowed(False):
        list(Progress(range(3), desc="features", unit="batch"))
    assert "\r" not in terminal.getvalue() and len(_lines(caplog)) == 4  # a line per batch (interval 0) and the closing line


def _command(argv: list[str], log: Path) -> tuple[int, str, str]:
    """``main(argv)`` with stderr redirected to the file ``log`` (not a terminal: as under nohup or CI); (exit code, stdout, log)."""
    out = io.StringIO()
    with log.open("w", encoding="utf-8") as err, contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue(), log.read_text(encoding="utf-8")


def test_a_command_logged_to_a_file_has_lines_not_bars(tiny_dataset_root: Path, tmp_path: Path, monkeypatch) -> None:
    argv = ["evaluate", "--baseline", "color-histogram-hsv", "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    argv += ["--batch-size", "8"]  # 36 queries and 82 gallery images: 5 + 11 batches
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "0")  # a line at every batch: the most a log can get
    code, out, log = _command(argv, tmp_path / "every.log")
    assert code == 0 and "rank-1" in out and "\r" not in log
    lines = log.splitlines()
    assert all(line.startswith("metricattack: features (") for line in lines), lines
    assert len(lines) == 5 + 11 + 2 and lines[5] == "metricattack: features (36 images): 5/5 batches (100 %) in " + lines[5][-5:]
    assert len(log) < 100 * len(lines)
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "1e9")  # a loop shorter than the interval writes nothing
    for options in ([], ["-q"]):
        code, out, log = _command([*argv, *options], tmp_path / "quiet.log")
        assert code == 0 and "rank-1" in out and log == "", options


def test_no_progress_removes_the_bars_only_and_quiet_the_lines_too(tiny_dataset_root: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress, "interactive", lambda: True)  # stderr is a terminal
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "0")
    argv = ["evaluate", "--baseline", "color-histogram-hsv", "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    shown = {}
    for options in ([], ["--no-progress"], ["--quiet"], ["--log-level", "warning"]):
        assert main([*argv, *options]) == 0
        printed = capsys.readouterr()
        assert "rank-1" in printed.out
        shown[" ".join(options)] = ("\r" in printed.err, "metricattack: features (36 images): 1/1 batch" in printed.err)
    # (bars, lines): bars on a terminal with the lines of the loops; --no-progress: the lines only; -q: neither
    assert shown == {"": (True, False), "--no-progress": (False, True), "--quiet": (False, False), "--log-level warning": (False, False)}


def test_a_bad_line_interval_is_refused_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "often")
    assert main(["synth", "--out", str(tmp_path / "data")]) == 2
    assert "$METRICATTACK_PROGRESS_SECONDS is 'often'; expected a number of seconds >= 0" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_no_progress_lasts_one_run(tmp_path: Path) -> None:
    """`--no-progress` forbids bars for that run only: a later main() in the same process (a notebook, the
    test suite) draws bars again."""
    argv = ["--no-progress", "evaluate", "--baseline", "color-histogram-hsv", "--data-root", str(tmp_path / "none"), "--dataset", "folder"]
    assert main(argv) == 2  # stops on the missing folder
    assert progress._BARS.get() is True
