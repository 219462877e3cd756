"""Re-ID datasets in their published on-disk layouts.

Every dataset is returned as a :class:`~metricattack.data.types.ReIDDataset` whose
records carry absolute paths, the identity as published (``-1`` junk, ``0`` distractor)
and a 0-based camera. Training identities are *not* relabelled here (training does it).
Records of every split are kept exactly as on disk; junk images (pid ``-1``) are
therefore kept too and consumers that train must skip them.

Evaluation protocol shared by all datasets (Market-1501 convention): for each query,
gallery images of the query's identity taken by the query's camera are ignored, junk
images (pid ``-1``) are ignored, distractors (pid ``0``) count as wrong matches.

``root`` may be the dataset folder itself or its parent holding the conventional folder
name (``Market-1501-v15.09.15``, ``DukeMTMC-reID``, ``MSMT17_V1``, ``cuhk03-np``, ...).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError, MetricAttackWarning
from ..io import sha256_file
from ..registry import Registry
from .types import DISTRACTOR_PID, JUNK_PID, ImageRecord, ReIDDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MARKET_SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)(?=[s_.])")
_NAME_EXAMPLE = "0002_c1s1_000451_03.jpg (pid_cCAMERA..., pid -1 junk, 0000 distractor)"


class DatasetCountWarning(MetricAttackWarning):
    """A dataset's image/identity counts differ from the official release."""


@dataclass(frozen=True)
class DatasetCounts:
    """Size of a dataset; identities exclude junk (-1) and distractors (0)."""

    train_ids: int
    train_images: int
    query_ids: int
    query_images: int
    gallery_images: int

    @classmethod
    def of(cls, ds: ReIDDataset) -> DatasetCounts:
        def ids(records: Iterable[ImageRecord]) -> int:
            return len({r.pid for r in records if r.pid not in (JUNK_PID, DISTRACTOR_PID)})

        return cls(ids(ds.train), len(ds.train), ids(ds.query), len(ds.query), len(ds.gallery))


#: Largest person id or camera number a file name or list may give (the int32 range; published datasets stay below 10,000).
MAX_LABEL = 2**31 - 1


def _check_label(value: int, what: str, where: str) -> None:
    if value > MAX_LABEL:
        raise DatasetError(f"{where} gives {what} {value}, larger than {MAX_LABEL:,} (the largest id this tool handles)")


def parse_market_name(filename: str) -> tuple[int, int]:
    """``(pid, camid)`` from a Market-1501-style file name; camid is 0-based.

    ``0002_c1s1_000451_03.jpg -> (2, 0)``, ``-1_c3s2_...jpg -> (-1, 2)`` (junk),
    ``0000_c6s1_...jpg -> (0, 5)`` (distractor), ``0001_c2_f0046182.jpg -> (1, 1)``.
    """
    match = _MARKET_NAME.match(Path(filename).name)
    if match is None or int(match.group(2)) < 1:
        raise DatasetError(f"image file name {filename!r} does not parse; expected a name like {_NAME_EXAMPLE}")
    pid, camera = int(match.group(1)), int(match.group(2))
    for what, value in (("person id", pid), ("camera", camera)):
        _check_label(value, what, f"image file name {filename!r}")
    return pid, camera - 1


def _dangling(path: Path) -> str:
    """`` (a symbolic link to X, which does not exist)`` for a dangling link, else ``""``."""
    return f" (a symbolic link to {os.readlink(path)}, which does not exist)" if path.is_symlink() and not path.exists() else ""


def _is_image_file(entry: os.DirEntry[str]) -> bool:
    """An image of the split: a visible file with an image extension. A dangling symbolic link
    with an image name is an error naming it (skipping it would change the split silently)."""
    if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
        return False
    if entry.is_symlink() and not os.path.exists(entry.path):
        raise DatasetError(f"image {entry.path}{_dangling(Path(entry.path))}; restore its target or remove the link")
    return entry.is_file()


def _scan_market_folder(folder: Path) -> tuple[ImageRecord, ...]:
    """Records of every image in ``folder`` (flat, sorted by name); non-image files are skipped,
    a dangling symbolic link with an image name is an error."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if _is_image_file(e))
    records = []
    for name in names:
        try:
            pid, camid = parse_market_name(name)
        except DatasetError as exc:
            raise DatasetError(f"{folder / name}: {exc}") from None
        records.append(ImageRecord(folder / name, pid, camid))
    return tuple(records)


def _missing_split_error(root: Path, missing: Sequence[str], expected: str, title: str) -> DatasetError:
    return DatasetError(f"{title} folder {root} has no {', '.join(m + '/' for m in missing)}; expected {expected}")


def _resolve_root(root: Path, title: str, is_dataset: Callable[[Path], bool], folder_names: Sequence[str]) -> Path:
    """``root`` itself when it looks like the dataset, else ``root/<conventional name>``."""
    if not root.is_dir():
        hint = f" (or its parent holding {' or '.join(folder_names)})" if folder_names else ""
        raise DatasetError(f"dataset root {root} does not exist or is not a folder; expected the {title} folder{hint}")
    if is_dataset(root):
        return root
    for name in folder_names:
        if is_dataset(root / name):
            return root / name
    return root


def _is_market_tree(folder: Path) -> bool:
    return any((folder / d).is_dir() for d in MARKET_SPLIT_DIRS.values())


def _check_not_empty(ds: ReIDDataset) -> None:
    for split in ("query", "gallery"):
        if not ds.split(split):
            where = ds.root / ds.split_dirs[split]
            raise DatasetError(
                f"{ds.name}: the {split} split ({where}) contains no images; a re-ID test set needs both query and gallery images"
            )


def _check_counts(ds: ReIDDataset, title: str, official: DatasetCounts) -> None:
    got = DatasetCounts.of(ds)
    diffs = [
        f"{field.replace('_', ' ')} {getattr(got, field):,} (official {getattr(official, field):,})"
        for field in official.__dataclass_fields__
        if getattr(got, field) != getattr(official, field)
    ]
    if diffs:
        warnings.warn(
            f"{title} at {ds.root} differs from the official release: {'; '.join(diffs)}. "
            "The copy may be incomplete or a different version; results will not be comparable "
            "to published numbers (load_dataset(..., check_counts=False) or the 'folder' layout skips this check).",
            DatasetCountWarning,
            stacklevel=3,
        )


# --- Market-1501 naming (market1501, dukemtmc, cuhk03np, folder) -----------------------------


def _load_market_tree(name: str, title: str, folder: Path, folder_names: Sequence[str] = ()) -> ReIDDataset:
    missing = [d for d in MARKET_SPLIT_DIRS.values() if not (folder / d).is_dir()]
    if missing:
        expected = "the folders " + ", ".join(d + "/" for d in MARKET_SPLIT_DIRS.values())
        if len(missing) == len(MARKET_SPLIT_DIRS) and folder_names:
            expected += f" (or a subfolder {' or '.join(n + '/' for n in folder_names)} holding them)"
        raise _missing_split_error(folder, missing, expected, title)
    splits = {split: _scan_market_folder(folder / d) for split, d in MARKET_SPLIT_DIRS.items()}
    return ReIDDataset(name, folder, splits["train"], splits["query"], splits["gallery"], dict(MARKET_SPLIT_DIRS))


def _market_like(name: str, title: str, folder_names: Sequence[str]) -> Callable[[Path], ReIDDataset]:
    def load(root: Path) -> ReIDDataset:
        folder = _resolve_root(root, title, _is_market_tree, folder_names)
        return _load_market_tree(name, title, folder, folder_names)

    return load


def load_market1501(root: Path) -> ReIDDataset:
    """Market-1501 (Zheng et al., ICCV 2015): 6 cameras, folders ``bounding_box_train/``,
    ``bounding_box_test/`` (gallery), ``query/``; names like ``0002_c1s1_000451_03.jpg``.

    Official counts: 751 train identities / 12,936 train images; 750 test identities;
    3,368 query images; 19,732 gallery images including 2,793 distractors (pid 0) and
    3,819 junk images (pid -1). Protocol: same-identity same-camera gallery images and
    junk are ignored per query, distractors count as wrong.
    """
    return _market_like("market1501", "Market-1501", ("Market-1501-v15.09.15", "Market-1501", "market1501"))(root)


def load_dukemtmc(root: Path) -> ReIDDataset:
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 8 cameras, Market-1501 folders and naming
    (``0001_c2_f0046182.jpg``).

    Official counts: 702 train identities / 16,522 train images; 702 query identities /
    2,228 query images; 17,661 gallery images (the gallery also holds 408 distractor
    identities). Protocol as Market-1501: same-identity same-camera gallery images are
    ignored per query, junk is ignored, distractors count as wrong.
    """
    return _market_like("dukemtmc", "DukeMTMC-reID", ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid"))(root)


def load_folder(root: Path) -> ReIDDataset:
    """Any tree with ``bounding_box_train/``, ``bounding_box_test/`` and ``query/`` whose files
    follow Market-1501 naming (synthetic data, adversarial copies). No official counts;
    ``bounding_box_train/`` must exist but may be empty. Protocol as Market-1501.
    """
    folder = _resolve_root(root, "Market-1501-layout", lambda p: True, ())
    return _load_market_tree("folder", "Market-1501-layout", folder)


_CUHK03_VARIANTS = ("detected", "labeled")


def load_cuhk03np(root: Path, variant: str | None = None) -> ReIDDataset:
    """CUHK03-NP (Zhong et al., CVPR 2017 new protocol): 2 cameras, ``detected/`` or
    ``labeled/`` boxes, each with Market-1501 folders; names like ``0001_c1_1.png``.

    ``variant`` is ``"detected"`` (default) or ``"labeled"``; ``root`` may be the variant
    folder itself, the ``cuhk03-np`` folder holding both, or its parent.
    Official counts: 767 train identities / 7,365 train images (labeled 7,368);
    700 query identities / 1,400 query images; 5,332 gallery images (labeled 5,328).
    Protocol as Market-1501: same-identity same-camera gallery images are ignored.
    """
    if variant is not None and variant not in _CUHK03_VARIANTS:
        raise DatasetError(f"cuhk03np variant {variant!r} is unknown; expected one of {', '.join(_CUHK03_VARIANTS)}")
    title = "CUHK03-NP"
    if root.is_dir() and _is_market_tree(root):
        if variant is not None and root.name in _CUHK03_VARIANTS and root.name != variant:
            raise DatasetError(f"cuhk03np root {root} is the {root.name!r} variant but variant={variant!r} was asked for")
        variant = variant or (root.name if root.name in _CUHK03_VARIANTS else "detected")
        folder = root
    else:
        variant = variant or "detected"
        base = _resolve_root(root, title, lambda p: (p / variant).is_dir(), ("cuhk03-np", "CUHK03-NP", "cuhk03_np"))
        folder = base / variant
        if not folder.is_dir():
            raise DatasetError(
                f"{title} folder {base} has no {variant}/ subfolder; expected {'/ or '.join(_CUHK03_VARIANTS)}/ "
                "each holding bounding_box_train/, bounding_box_test/, query/"
            )
    return _load_market_tree("cuhk03np", f"{title} ({variant})", folder)


# --- MSMT17 (list files) ----------------------------------------------------------------------

_MSMT_LISTS = {"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",), "gallery": ("list_gallery.txt",)}
_MSMT_DIRS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}


def _msmt_camid(path: str, list_file: Path, line_no: int) -> int:
    parts = Path(path).name.split("_")
    if len(parts) < 3 or not parts[2].isdigit() or int(parts[2]) < 1:
        raise DatasetError(
            f"{list_file}:{line_no}: image name {Path(path).name!r} does not parse; expected "
            "PID_INDEX_CAMERA_..., e.g. 0000_000_01_0303morning_0015_0.jpg (camera 1-based)"
        )
    _check_label(int(parts[2]), "camera", f"{list_file}:{line_no}")
    return int(parts[2]) - 1


def _read_msmt_list(list_file: Path, image_dir: Path) -> list[ImageRecord]:
    records = []
    for line_no, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{list_file}:{line_no}: expected 'relative/path.jpg PID', got {line.strip()!r}")
        path = image_dir / fields[0]
        if not path.is_file():
            raise DatasetError(f"{list_file}:{line_no}: image {path} does not exist{_dangling(path)}")
        # List labels are 0-based; shift by one so that pid 0 keeps meaning "distractor".
        _check_label(int(fields[1]) + 1, "person id", f"{list_file}:{line_no}")
        records.append(ImageRecord(path, int(fields[1]) + 1, _msmt_camid(fields[0], list_file, line_no)))
    return records


def load_msmt17(root: Path) -> ReIDDataset:
    """MSMT17 (Wei et al., CVPR 2018), V1 (``train/``, ``test/``) or V2 (``mask_train_v2/``,
    ``mask_test_v2/``), with ``list_train.txt``, ``list_val.txt``, ``list_query.txt`` and
    ``list_gallery.txt`` holding lines ``relative/path.jpg LABEL``. 15 cameras, read from
    the third field of the file name (1-based). Train = train + val lists.

    Pids are the list labels plus one (labels start at 0; pid 0 means distractor here).
    Official counts: 1,041 train identities / 32,621 train images; 3,060 test identities;
    11,659 query images; 82,161 gallery images. Protocol as Market-1501: same-identity
    same-camera gallery images are ignored per query.
    """
    title = "MSMT17"
    folder = _resolve_root(root, title, lambda p: (p / "list_query.txt").is_file(), ("MSMT17_V1", "MSMT17_V2", "MSMT17", "msmt17"))
    needed = [f for files in _MSMT_LISTS.values() for f in files]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"{title} folder {folder} lacks {', '.join(missing)}; expected the list files {', '.join(needed)} "
            "(root may also be the parent holding MSMT17_V1/ or MSMT17_V2/)"
        )
    dirs: dict[str, str] = {}
    for kind, candidates in _MSMT_DIRS.items():
        found = [c for c in candidates if (folder / c).is_dir()]
        if not found:
            expected = "train/ and test/ (MSMT17_V1) or mask_train_v2/ and mask_test_v2/ (MSMT17_V2) beside the list files"
            raise _missing_split_error(folder, ["/ or ".join(candidates)], expected, title)
        dirs[kind] = found[0]
    split_dirs = {"train": dirs["train"], "query": dirs["test"], "gallery": dirs["test"]}
    splits = {
        split: tuple(r for f in files for r in _read_msmt_list(folder / f, folder / split_dirs[split]))
        for split, files in _MSMT_LISTS.items()
    }
    return ReIDDataset("msmt17", folder, splits["train"], splits["query"], splits["gallery"], split_dirs)


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetLayout:
    """How to read one dataset layout.

    Attributes:
        load: ``load(root) -> ReIDDataset``, or ``load(root, variant)`` when ``variants`` is not empty.
        title: human name used in messages (``"Market-1501"``).
        official: variant (or ``""``) → the official release's counts; empty: no official counts.
        variants: accepted values of ``load_dataset(..., variant=...)`` (empty: no variants).
    """

    load: Callable[..., ReIDDataset]
    title: str
    official: Mapping[str, DatasetCounts] = field(default_factory=dict)
    variants: tuple[str, ...] = ()


DATASETS: Registry[DatasetLayout] = Registry("dataset", error=DatasetError)
"""Dataset layout name (``--dataset``) → :class:`DatasetLayout`."""

DATASETS.register("market1501", DatasetLayout(load_market1501, "Market-1501", {"": DatasetCounts(751, 12936, 750, 3368, 19732)}))
DATASETS.register("dukemtmc", DatasetLayout(load_dukemtmc, "DukeMTMC-reID", {"": DatasetCounts(702, 16522, 702, 2228, 17661)}))
DATASETS.register("msmt17", DatasetLayout(load_msmt17, "MSMT17", {"": DatasetCounts(1041, 32621, 3060, 11659, 82161)}))
DATASETS.register(
    "cuhk03np",
    DatasetLayout(
        load_cuhk03np,
        "CUHK03-NP",
        {"detected": DatasetCounts(767, 7365, 700, 1400, 5332), "labeled": DatasetCounts(767, 7368, 700, 1400, 5328)},
        variants=_CUHK03_VARIANTS,
    ),
)
DATASETS.register("folder", DatasetLayout(load_folder, "Market-1501-layout folder"))


def load_dataset(name: str, root: str | os.PathLike[str], *, check_counts: bool = True, variant: str | None = None) -> ReIDDataset:
    """Parse dataset ``name`` (a :data:`DATASETS` name) found at ``root`` (the dataset folder or its parent).

    ``variant`` selects one of the layout's variants (``detected``/``labeled`` for ``cuhk03np``)
    and is rejected for layouts without variants. With ``check_counts`` a
    :class:`DatasetCountWarning` is issued when the counts differ from the official release
    (never for ``folder``). Raises :class:`DatasetError` for an unknown name, a missing root or
    split folder, unparseable names, and empty query or gallery.
    """
    layout = DATASETS.get(name)
    root = Path(root).expanduser()
    if variant is not None and not layout.variants:
        with_variants = ", ".join(n for n in DATASETS if DATASETS.get(n).variants)
        raise DatasetError(f"dataset option variant={variant!r} applies only to {with_variants}, not to {name}")
    ds = layout.load(root, variant) if layout.variants else layout.load(root)
    _check_not_empty(ds)
    if check_counts and layout.official:
        key = ds.root.name if ds.root.name in layout.official else next(iter(layout.official))
        title = layout.title + (f" ({key})" if key else "")
        _check_counts(ds, title, layout.official[key])
    return ds


def dataset_fingerprint(ds: ReIDDataset) -> str:
    """Hex SHA-256 over the sorted ``(relative path, pid, camid, SHA-256 of the file's bytes)`` of every record.

    The key of every cache and resume check that depends on the data (``evaluate --features-cache``,
    training, attack exports, the benchmark's and the defense's stages): it changes when a file is
    added, removed, renamed or relabelled, and when its content changes, also at the same size
    (a cheaper key of names and sizes reused stale features: issue #19). Reads every file once.
    """
    rows = []
    for record in (*ds.train, *ds.query, *ds.gallery):
        try:
            content = sha256_file(record.path)
        except OSError as exc:
            raise DatasetError(f"cannot read image {record.path} of dataset {ds.name}: {exc.strerror}") from None
        rel = record.path.relative_to(ds.root).as_posix() if record.path.is_relative_to(ds.root) else record.path.as_posix()
        rows.append(f"{rel}\t{record.pid}\t{record.camid}\t{content}\n")
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(row.encode("utf-8"))
    return digest.hexdigest()
