"""The progress of long loops, readable on a terminal and in a log file: the one mechanism of every command.

A loop wrapped in :class:`Progress` shows a tqdm bar when stderr is a terminal (or in a Jupyter
kernel) and bars are allowed; otherwise (stderr a file or a pipe: ``nohup``, CI, a cluster job; or
bars switched off) it writes information lines through the logger ``metricattack.progress`` (level
INFO), never a carriage return:

- ``lines="each"``: one line as each item starts, for a loop over stages, e.g.
  ``adversarial sets 3/40: gallery-ifgsm-eps5-B1 (0:35 so far, ~7:20 left)``;
- ``lines="bounded"`` (batches, attack runs, images): at most one line per :func:`line_seconds`
  (``$METRICATTACK_PROGRESS_SECONDS``, default :data:`LINE_SECONDS`), e.g.
  ``attack gallery: 120/400 batches (30 %), 0:30 so far, ~1:10 left``, and a closing line when it
  wrote any, so a loop shorter than that writes nothing;
- ``lines="none"``: a bar only (the caller logs its own line per item, e.g. the trainer's epoch line).

Bars are a choice of the process: :func:`allow_bars` (the CLI: off with ``--no-progress``, ``-q`` or
a level above info) and, for a block, :func:`bars_allowed` (a config's ``progress: false``). A loop made
with ``report=False`` stays silent (an inner loop whose caller reports). Under torchrun only rank 0
reports. The library's defaults: bars on a terminal; lines go to the ``metricattack`` logger, which
shows nothing until the application configures logging (the CLI does).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, Literal, TypeVar

from tqdm import tqdm

from .distributed import is_main_process
from .errors import ConfigError
from .wording import agree

T = TypeVar("T")
Lines = Literal["each", "bounded", "none"]

log = logging.getLogger(__name__)

#: Default least number of seconds between two lines of a ``lines="bounded"`` loop.
LINE_SECONDS = 30.0
SECONDS_VARIABLE = "METRICATTACK_PROGRESS_SECONDS"

_BARS: ContextVar[bool] = ContextVar("metricattack_progress_bars", default=True)


def allow_bars(allowed: bool) -> None:
    """Allow (the default) or forbid progress bars in this process; lines replace forbidden bars."""
    _BARS.set(allowed)


@contextmanager
def bars_allowed(allowed: bool) -> Iterator[None]:
    """Within the block, bars only when ``allowed`` and already allowed (a config's ``progress`` field)."""
    token = _BARS.set(_BARS.get() and allowed)
    try:
        yield
    finally:
        _BARS.reset(token)


def interactive() -> bool:
    """True when a bar can be drawn: stderr is a terminal, or the code runs in a Jupyter kernel."""
    stream = sys.stderr
    if stream is not None and hasattr(stream, "isatty") and stream.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def bars_shown() -> bool:
    """True when a reporting loop of this process shows a bar (else it writes lines)."""
    return _BARS.get() and interactive() and is_main_process()


def line_seconds() -> float:
    """Least seconds between two lines of a bounded loop: ``$METRICATTACK_PROGRESS_SECONDS`` or :data:`LINE_SECONDS`."""
    text = os.environ.get(SECONDS_VARIABLE, "").strip()
    if not text:
        return LINE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"${SECONDS_VARIABLE} is {text!r}; expected a number of seconds >= 0 (the least time between two progress lines)")
    return value


def _clock(seconds: float) -> str:
    return tqdm.format_interval(seconds)


class Progress(Generic[T]):
    """A loop's progress: a tqdm bar or information lines (see the module docstring).

    Iterate over it (``iterable`` given) or call :meth:`update`; ``total`` defaults to ``len(iterable)``;
    ``initial`` counts items done before (a resumed run); ``label(item)`` names an item (the bar's
    description, the ``each`` line); ``bar_options`` go to tqdm (``leave``, ``bar_format``, ...).
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        desc: str,
        total: int | None = None,
        unit: str = "it",
        initial: int = 0,
        report: bool = True,
        lines: Lines = "bounded",
        label: Callable[[T], str] | None = None,
        **bar_options: Any,
    ) -> None:
        self.iterable = iterable
        self.desc, self.unit, self.lines, self.label = desc, unit, lines, label
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.initial = total, initial, initial
        self.start = self.last = time.monotonic()
        self.every = line_seconds()
        self.postfix = ""
        self.wrote = self.closed = False
        on = report and is_main_process()
        options = {"leave": False, **bar_options}
        self.bar: tqdm | None = tqdm(total=total, desc=desc, unit=unit, initial=initial, **options) if on and bars_shown() else None
        self.writes = on and self.bar is None and lines != "none"

    @property
    def disable(self) -> bool:
        """True when nothing is shown (no bar, no lines): a caller may skip preparing a postfix."""
        return self.bar is None and not self.writes

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress made without an iterable: call update()")
        try:
            for item in self.iterable:
                name = self.label(item) if self.label is not None else None
                if self.bar is not None and name is not None:
                    self.bar.set_description_str(f"{self.desc} ({name})")
                if self.writes and self.lines == "each":
                    self._item_line(name)
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.writes and self.lines == "bounded":
            now = time.monotonic()
            if now - self.last >= self.every:
                self.last = now
                self._write(f"{self._count()}, {self._times(now)}{self.postfix}")

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """``key=value`` pairs shown after the bar, or at the end of the next line."""
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in values.items()), refresh=refresh)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=refresh)
        self.postfix = f" ({text})" if text else ""

    def close(self) -> None:
        """Close the bar; a bounded loop that wrote lines writes its closing line."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.wrote and self.lines == "bounded":
            self._write(f"{self._count()} in {_clock(time.monotonic() - self.start)}")

    # ---------------------------------------------------------------- lines
    def _write(self, text: str) -> None:
        self.wrote = True
        log.info("%s: %s", self.desc, text)

    def _count(self) -> str:
        unit = agree(self.total if self.total is not None else self.n, self.unit, self.unit + ("es" if self.unit.endswith("ch") else "s"))
        if self.total is None:
            return f"{self.n} {unit}"
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        return f"{self.n}/{self.total} {unit}{share}"

    def _times(self, now: float) -> str:
        elapsed = now - self.start
        done = self.n - self.initial
        left = "" if not done or self.total is None else f", ~{_clock(elapsed / done * max(self.total - self.n, 0))} left"
        return f"{_clock(elapsed)} so far{left}"

    def _item_line(self, name: str | None) -> None:
        number = self.n + 1
        head = f"{self.desc} {number}/{self.total}" if self.total is not None else f"{self.desc} {number}"
        times = f" ({self._times(time.monotonic())})" if self.n > self.initial else ""
        self.wrote = True
        log.info("%s%s%s", head, f": {name}" if name else "", times)
