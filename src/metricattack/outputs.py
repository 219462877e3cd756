"""Where commands write: checked before any work, locked while written.

Every command runs :func:`check_output_file` or :func:`check_output_folder` on its output path
before it loads a model or reads a pixel. The rules (issue #12):

* an output never overwrites an input (dataset, checkpoint, metric, their JSON sidecars);
* it never lies inside a source dataset;
* an existing path of another kind (a folder where a file goes, a file that is not a previous
  result of the same command, a folder holding anything but an earlier run of the command) is
  refused, never replaced;
* its location must be writable: a probe file is created and removed in the nearest existing
  folder, so a read-only folder fails in a second, not after an hour of work.

:func:`claim_output` then gives one run at a time a folder: an ``flock`` on ``FOLDER/.metricattack.lock``
(released by the kernel when the process dies, so a killed run never blocks its rerun), whose
content names the holder (command, pid, host, start time) for the message another run gets.
The lock file is never a symbolic link (opened with ``O_NOFOLLOW``; a linked one is refused, and
a folder holding one is not empty).
Holding the claim, the run removes the temporary files of killed runs in the folder
(:func:`metricattack.io.remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .distributed import all_ranks_ok, is_main_process
from .errors import MetricAttackError
from .io import is_leftover_name, remove_leftovers

LOCK_NAME = ".metricattack.lock"

PathLike = str | os.PathLike[str]


class OutputError(MetricAttackError):
    """An output path that would destroy data, cannot be written, or is in use by another run."""


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def with_sidecars(paths: Iterable[PathLike]) -> list[Path]:
    """``paths`` plus the JSON sidecar of each ``.safetensors`` file (checkpoints and metrics are pairs)."""
    out = []
    for path in map(Path, paths):
        out += [path, path.with_suffix(".json")] if path.suffix == ".safetensors" else [path]
    return out


def _check_not_inputs(option: str, written: Iterable[Path], inputs: Iterable[PathLike]) -> None:
    targets = {_resolved(p): p for p in written}
    for source in inputs:
        hit = targets.get(_resolved(source))
        if hit is not None:
            raise OutputError(f"{option} {hit} is an input of this command ({source}); writing there would destroy it, choose another path")


def _check_outside_datasets(option: str, path: Path, datasets: Iterable[PathLike]) -> None:
    for root in datasets:
        if _is_within(_resolved(path), _resolved(root)):
            raise OutputError(
                f"{option} {path} lies inside the source dataset {root}; datasets are never written to, choose a path outside it"
            )


def check_writable(option: str, path: PathLike) -> None:
    """Refuse ``path`` when the nearest existing folder on its way is not a folder or not writable.

    Creates and removes one probe file there (``os.access`` says yes to root on a read-only mount).
    """
    path = Path(path)
    probe_dir = path.parent if not path.exists() or not path.is_dir() else path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"{option} {path}: {probe_dir} is a file, so nothing can be created below it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".metricattack-probe.", dir=probe_dir)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write in {probe_dir} ({exc.strerror}); choose a writable location") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(
    option: str,
    path: PathLike,
    *,
    kind: str,
    is_previous: Callable[[Path], bool],
    inputs: Iterable[PathLike] = (),
    datasets: Iterable[PathLike] = (),
    sidecar: bool = False,
) -> Path:
    """Check a file output before any work (see the module rules); returns it as a :class:`Path`.

    Args:
        option: the option naming it in messages (``--out``).
        kind: what the command writes there (``evaluation results JSON``).
        is_previous: ``path -> True`` when an existing file is an earlier result of the same kind
            (it is then replaced); any other existing file is refused.
        inputs: the command's input files (checkpoints, metrics, their sidecars, configs).
        datasets: the roots of the command's source datasets.
        sidecar: the command also writes ``path.with_suffix(".json")``.
    """
    path = Path(path)
    written = [path, path.with_suffix(".json")] if sidecar else [path]
    _check_not_inputs(option, written, inputs)
    _check_outside_datasets(option, path, datasets)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; expected the path of a {kind} file")
    if any(p.exists() for p in written) and not is_previous(path):
        existing = next(p for p in written if p.exists())
        raise OutputError(f"{option}: {existing} exists and is not a {kind}; refusing to overwrite it, choose another path")
    check_writable(option, path)
    return path


def is_empty_folder(folder: Path) -> bool:
    """True when ``folder`` holds nothing but a lock file and leftovers of killed runs (never
    symbolic links: a linked lock file is not an empty folder's)."""
    with os.scandir(folder) as entries:
        return all((e.name == LOCK_NAME or is_leftover_name(e.name)) and not e.is_symlink() for e in entries)


def check_output_folder(
    option: str,
    path: PathLike,
    *,
    command: str,
    is_previous: Callable[[Path], bool] = lambda folder: False,
    inputs: Iterable[PathLike] = (),
    datasets: Iterable[PathLike] = (),
) -> Path:
    """Check an output folder before any work (see the module rules); returns it as a :class:`Path`.

    The folder may be new, empty, or an earlier run of ``command``: one that holds its lock file
    (:func:`claim_output` writes it) or for which ``is_previous(folder)`` is true (runs made before
    lock files existed). ``inputs`` may not lie inside it (a re-run could replace them).
    """
    path = Path(path)
    _check_outside_datasets(option, path, datasets)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file; expected a folder (new, empty, or an earlier {command} run)")
    if path.is_dir():
        folder = _resolved(path)
        for source in inputs:
            if _is_within(_resolved(source), folder):
                raise OutputError(f"{option} {path} holds an input of this command ({source}); choose another folder")
        if not (is_empty_folder(path) or lock_holder(path).get("command") == command or is_previous(path)):
            raise OutputError(f"{option} {path} is not empty and holds no earlier metricattack {command} run; choose a new or empty folder")
    check_writable(option, path)
    return path


def lock_holder(folder: PathLike) -> dict[str, object]:
    """What the lock file of ``folder`` says about its last holder (empty when there is none or
    it is not a regular file: a symbolic link is never followed)."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        record = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    return record if isinstance(record, dict) else {}


def _open_lock(folder: Path) -> int:
    """The lock file of ``folder``, opened read-write (created if needed) without following a
    symbolic link; OutputError when it is a link, not a regular file, or has other hard links
    (writing the holder's name would overwrite the file it stands for)."""
    lock = folder / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(
                f"{lock} is a symbolic link; refusing to lock {folder} through it (it would overwrite the file it points to): "
                "remove the link or choose another folder"
            ) from None
        raise OutputError(f"cannot create the lock file {lock}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "has other hard links" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise OutputError(f"{lock} {what}; refusing to lock {folder} through it: remove it or choose another folder")
    return fd


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    return f"metricattack {holder.get('command')} (pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')})"


@contextlib.contextmanager
def output_lock(folder: PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the duration; raise
    :class:`OutputError` naming the holder when another process holds it.

    The lock is an ``flock`` on ``FOLDER/.metricattack.lock``; the kernel releases it when the
    process ends, however it ends. The file stays (removing it would let two runs lock two files).
    A lock file that is a symbolic link, not a regular file, or hard-linked elsewhere is refused
    (``O_NOFOLLOW``): writing the holder's name into it would overwrite another file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(folder)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"output folder {folder} is in use by {_describe(lock_holder(folder))}; wait for it to finish or choose another folder"
            ) from None
        record = {
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def claim_output(folder: PathLike, command: str) -> Iterator[None]:
    """:func:`output_lock` on rank 0, then remove the leftovers of killed runs in ``folder``.

    Under torchrun every rank enters together: when rank 0 cannot take the lock, every rank
    raises (rank 0 with the holder's name), and no rank writes before the leftovers are gone.
    """
    with contextlib.ExitStack() as stack:
        error: MetricAttackError | None = None
        if is_main_process():
            try:
                stack.enter_context(output_lock(folder, command))
                remove_leftovers(folder)
            except MetricAttackError as exc:
                error = exc
        if not all_ranks_ok(error is None):
            raise error or OutputError(f"rank 0 could not claim the output folder {folder} (see its message)")
        yield
