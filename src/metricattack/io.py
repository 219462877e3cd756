"""Atomic writes, checksums and provenance shared by every stage.

Rule: a stage never leaves a half-written artifact. Files are written to a temporary
sibling ``.NAME.XXXXXXXX.tmp`` and renamed into place (``os.replace`` is atomic on POSIX), so
a killed run leaves either the old file or the new one, never a torn one; a write that fails
for want of space is one :class:`~metricattack.errors.WriteError` naming the file (a rerun
resumes). A symbolic link at
the destination is replaced by the new file, never written through (the file it points to is
left untouched). The writer holds an
exclusive ``flock`` on its temporary file while writing; a temporary file nobody holds is
a leftover of a killed run, which :func:`remove_leftovers` deletes when the run resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import platform
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import __version__
from .errors import WriteError

TEMP_SUFFIX = ".tmp"
_FICLONE = 0x40049409  # Linux ioctl: make the destination a copy-on-write clone (reflink) of the source


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", f"os error {errno.ENOSPC})", f"os error {errno.EDQUOT})")


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the disk or quota is full.

    Writers report it differently: ``OSError(ENOSPC)`` (Python files, PIL), a ``RuntimeError``
    raised while handling one (``torch.save`` to a file object), a ``SafetensorError`` whose text
    ends in ``(os error 28)``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if any(text in str(current) for text in _FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(path: str | os.PathLike[str]) -> WriteError:
    """The one message for an output ``path`` that could not be written because the disk is full."""
    return WriteError(
        f"could not write {os.fspath(path)}: no space left on the device (or quota exceeded); nothing half-written was kept. "
        "Free some space and run the same command again: it resumes from the finished work"
    )


def _umask_from_status() -> int | None:
    """The process's umask from ``/proc/self/status`` (Linux), read without changing it; None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _umask_by_setting() -> int:
    """The umask read the only portable way: set it, then restore it. Between the two calls a file or
    folder made by another thread gets mode bits from umask 0, so this runs only once, at import."""
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _umask_by_setting() if _umask_from_status() is None else 0


def current_umask() -> int:
    """The process's umask (e.g. 0o022), read without a window where another thread's new files
    would get other modes (the writer threads of ``metricattack.overlap`` may create files meanwhile)."""
    umask = _umask_from_status()
    return _UMASK_AT_IMPORT if umask is None else umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched; a full disk
    becomes a :class:`~metricattack.errors.WriteError` naming ``path``. While the caller writes,
    this process holds an exclusive ``flock`` on the temporary file, which marks it as in use for
    :func:`remove_leftovers`.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent)
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield tmp
            if tmp.exists():  # mkstemp creates 0600; give the artifact the usual umask-based mode
                os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, final)
        except Exception as exc:
            if is_disk_full(exc):
                raise disk_full_error(final) from None
            raise
    finally:
        if tmp.exists():
            tmp.unlink()
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new temporary folder next to ``path``; rename it onto ``path`` on success.

    An existing ``path`` must be an empty folder (it is replaced). On an exception the temporary
    folder is removed (a full disk becomes a :class:`~metricattack.errors.WriteError` naming
    ``path``); while the caller fills it, this process holds an ``flock`` on it (see
    :func:`atomic_path`), so :func:`remove_leftovers` leaves it alone.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield tmp
        if final.is_symlink():
            final.unlink()  # replaced, never followed
        elif final.exists():
            final.rmdir()
        os.rename(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise disk_full_error(final) from None
        raise
    finally:
        os.close(fd)


def is_leftover_name(name: str) -> bool:
    """True for names of the temporary files and folders this package writes (``.NAME.XXXXXXXX.tmp``)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3


def remove_leftovers(folder: str | os.PathLike[str], *, prefix: str = ".", recursive: bool = True) -> list[Path]:
    """Delete the temporary files and folders of killed runs in ``folder``; return what was removed.

    Only entries named like this package's temporary files and starting with ``prefix`` (e.g.
    ``".results.json."`` for the leftovers of one output file) that no process holds an ``flock``
    on are removed: the temporary file of a live writer, of this or another process, is kept.
    """
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for parent, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            path = Path(parent) / name
            if name.startswith(prefix) and is_leftover_name(name) and _remove_if_unheld(path):
                removed.append(path)
        dirs[:] = [d for d in dirs if recursive and not is_leftover_name(d)]
    return removed


def _remove_if_unheld(path: Path) -> bool:
    """Remove ``path`` (file or folder) unless another open file description holds an ``flock`` on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer holds it
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make ``dst`` an independent copy of ``src``, atomically; keep an existing ``dst`` that is one already.

    Never a hard link: changing the copy (``chmod``, appending) must not change the source. On a
    file system with reflinks (Btrfs, XFS) the copy shares the source's blocks copy-on-write and
    costs no space; elsewhere the bytes are copied. An existing ``dst`` that is a hard link to
    ``src`` (written by an earlier version) or a symbolic link is replaced by a copy.
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_symlink() and not os.path.samefile(src, dst):
        return
    with atomic_path(dst) as tmp, open(src, "rb") as source, open(tmp, "wb") as target:
        try:
            fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
        except OSError:
            shutil.copyfileobj(source, target, 1 << 20)


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` + newline to the log ``path`` (created if needed), never through a symbolic
    link (``O_NOFOLLOW``); a full disk is a :class:`~metricattack.errors.WriteError` naming it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with open(fd, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, as :func:`atomic_path` does (a temporary sibling held
    with ``flock``, renamed onto ``path``; a full disk is a :class:`~metricattack.errors.WriteError`),
    in fewer system calls: the temporary file is written through the descriptor that created it, and
    gets its mode from the kernel (``0o666`` less the umask), so no ``chmod`` (the attack export
    writes a few hundred thousand files this way)."""
    final = os.fspath(path)
    folder, name = os.path.split(final)
    os.makedirs(folder or ".", exist_ok=True)
    tmp, fd = "", -1
    try:
        while fd < 0:
            tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
            with contextlib.suppress(FileExistsError):  # another writer drew the same name: draw again
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with open(fd, "wb", closefd=False) as handle:
            handle.write(data)
        os.replace(tmp, final)
    except BaseException as exc:
        if fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise disk_full_error(final) from None
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically.

    NaN and infinite numbers are refused with a ``ValueError`` naming the first one's key: they
    are not JSON, and a number that could not be computed is recorded as ``null``.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    except ValueError:
        raise ValueError(
            f"refusing to write {os.fspath(path)}: {_non_finite_key(obj) or 'a value'} is not a finite number (NaN/inf are not JSON)"
        ) from None
    atomic_write_text(path, text + "\n")


def _non_finite_key(obj: Any, where: str = "") -> str | None:
    """Key path (``a.b[2]``) of the first NaN or infinite number inside ``obj``, or ``None``."""
    if isinstance(obj, dict):
        items: Any = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, float):
        return None if math.isfinite(obj) else where or "the value"
    elif hasattr(obj, "tolist"):  # numpy / torch values
        return _non_finite_key(obj.tolist(), where)
    else:
        return None
    for key, value in items:
        found = _non_finite_key(value, key)
        if found is not None:
            return found
    return None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of the canonical JSON form of ``obj`` (stable cache keys)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_settings() -> dict[str, Any]:
    """The CPU thread counts a run computes with (they change its numbers, not its load).

    ``{"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
    "env": {"OMP_NUM_THREADS": "2" | None, ...}}``; ``None`` = the variable was not set.
    """
    import torch

    return {
        "torch": torch.get_num_threads(),
        "torch_interop": torch.get_num_interop_threads(),
        "env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
    }


def environment_versions() -> dict[str, str]:
    """Versions of the software that made an artifact (for provenance records)."""
    versions = {
        "metricattack": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for module in ("torch", "torchvision", "numpy", "PIL"):
        mod = sys.modules.get(module)
        if mod is None:
            with contextlib.suppress(ImportError):
                mod = __import__(module)
        if mod is not None:
            versions[module] = getattr(mod, "__version__", "unknown")
    return versions
