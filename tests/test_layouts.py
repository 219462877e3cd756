"""Parsing of re-ID dataset layouts from tiny fixture trees built here."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metricattack.data import layouts
from metricattack.data.layouts import (
    DATASETS,
    DatasetCounts,
    DatasetCountWarning,
    dataset_fingerprint,
    load_dataset,
    parse_market_name,
)
from metricattack.errors import DatasetError

# --- fixture helpers ---------------------------------------------------------------------


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (8, 4)) -> Path:
    """A tiny random RGB image (H, W) = ``size``; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_tree(root: Path, layout: dict[str, Iterable[str]]) -> Path:
    """Write ``{folder: [file names]}`` under ``root`` as tiny images."""
    for seed, (folder, names) in enumerate(layout.items()):
        for i, name in enumerate(names):
            write_image(root / folder / name, seed=seed * 1000 + i)
    return root


MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c6s3_094567_02.jpg"],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c3s1_001051_00.jpg"],
    "bounding_box_test": [
        "0001_c2s1_000976_01.jpg",
        "0001_c1s1_000151_01.jpg",
        "0003_c5s2_011111_03.jpg",
        "0000_c6s1_002101_04.jpg",
        "-1_c3s2_000001_02.jpg",
    ],
}


def market_tree(root: Path) -> Path:
    write_tree(root, MARKET)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    write_image(root / "bounding_box_test" / ".hidden_c1.jpg")
    return root


def load_quiet(name: str, root: Path, **kwargs) -> layouts.ReIDDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetCountWarning)
        return load_dataset(name, root, **kwargs)


def triples(records) -> list[tuple[str, int, int]]:
    return [(r.path.name, r.pid, r.camid) for r in records]


# --- file names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0002_c1s1_000451_03.jpg", (2, 0)),
        ("-1_c3s2_000001_02.jpg", (-1, 2)),
        ("0000_c6s1_002101_04.jpg", (0, 5)),
        ("1501_c6s4_001902_01.jpg", (1501, 5)),
        ("0001_c2_f0046182.jpg", (1, 1)),
        ("0767_c2_10.png", (767, 1)),
        ("0012_c8.png", (12, 7)),
    ],
)
def test_parse_market_name(name: str, expected: tuple[int, int]) -> None:
    assert parse_market_name(name) == expected


@pytest.mark.parametrize("name", ["abc.jpg", "0002_c0s1_000451_03.jpg", "0002c1s1.jpg", "0002_x1_1.jpg", "-2_c1s1_0.jpg", "0002_c1x_1.jpg"])
def test_parse_market_name_rejects(name: str) -> None:
    with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
        parse_market_name(name)


# --- Market-1501 / DukeMTMC / folder --------------------------------------------------------


def test_market1501_records_and_count_warning(tmp_path: Path) -> None:
    root = market_tree(tmp_path / "Market-1501-v15.09.15")
    with pytest.warns(DatasetCountWarning, match=r"train images 3 \(official 12,936\)"):
        ds = load_dataset("market1501", root)
    assert ds.name == "market1501" and ds.root == root
    assert ds.split_dirs == {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    assert triples(ds.train) == [
        ("0002_c1s1_000451_03.jpg", 2, 0),
        ("0002_c2s1_000301_01.jpg", 2, 1),
        ("0007_c6s3_094567_02.jpg", 7, 5),
    ]
    assert triples(ds.query) == [("0001_c1s1_001051_00.jpg", 1, 0), ("0003_c3s1_001051_00.jpg", 3, 2)]
    # sorted by name; Thumbs.db and hidden files skipped; junk and distractor kept
    assert triples(ds.gallery) == [
        ("-1_c3s2_000001_02.jpg", -1, 2),
        ("0000_c6s1_002101_04.jpg", 0, 5),
        ("0001_c1s1_000151_01.jpg", 1, 0),
        ("0001_c2s1_000976_01.jpg", 1, 1),
        ("0003_c5s2_011111_03.jpg", 3, 4),
    ]
    assert all(r.path.is_file() and r.path.parent == root / "bounding_box_test" for r in ds.gallery)
    assert DatasetCounts.of(ds) == DatasetCounts(train_ids=2, train_images=3, query_ids=2, query_images=2, gallery_images=5)


def test_root_may_be_the_parent_folder(tmp_path: Path) -> None:
    market_tree(tmp_path / "Market-1501-v15.09.15")
    ds = load_quiet("market1501", tmp_path)
    assert ds.root == tmp_path / "Market-1501-v15.09.15"
    write_tree(tmp_path / "DukeMTMC-reID", MARKET)
    assert load_quiet("dukemtmc", tmp_path).root == tmp_path / "DukeMTMC-reID"


def test_no_warning_when_counts_match_official(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = market_tree(tmp_path / "m")
    official = {"": DatasetCounts(2, 3, 2, 2, 5)}
    layout = dataclasses.replace(layouts.DATASETS.get("market1501"), official=official)
    monkeypatch.setitem(layouts.DATASETS._items, "market1501", layout)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("market1501", root)
    with pytest.warns(DatasetCountWarning, match=r"gallery images 4 \(official 5\)"):
        (root / "bounding_box_test" / "-1_c3s2_000001_02.jpg").unlink()
        load_dataset("market1501", root)


def test_check_counts_false_and_folder_do_not_warn(tmp_path: Path) -> None:
    root = market_tree(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = load_dataset("market1501", root, check_counts=False)
        b = load_dataset("folder", root)
    assert b.name == "folder"
    assert (a.train, a.query, a.gallery) == (b.train, b.query, b.gallery)


def test_folder_allows_empty_train(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "adv", {k: v for k, v in MARKET.items() if k != "bounding_box_train"})
    (root / "bounding_box_train").mkdir()
    ds = load_dataset("folder", root)
    assert ds.train == () and len(ds.gallery) == 5


def test_dukemtmc_names_and_warning(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "DukeMTMC-reID",
        {
            "bounding_box_train": ["0001_c2_f0046182.jpg", "0005_c8_f0000001.jpg"],
            "query": ["0005_c1_f0100000.jpg"],
            "bounding_box_test": ["0005_c3_f0046182.jpg", "7140_c8_f0000002.jpg"],
        },
    )
    with pytest.warns(DatasetCountWarning, match="DukeMTMC-reID"):
        ds = load_dataset("dukemtmc", root)
    assert triples(ds.train) == [("0001_c2_f0046182.jpg", 1, 1), ("0005_c8_f0000001.jpg", 5, 7)]
    assert triples(ds.gallery) == [("0005_c3_f0046182.jpg", 5, 2), ("7140_c8_f0000002.jpg", 7140, 7)]


# --- CUHK03-NP ----------------------------------------------------------------------------


def cuhk_tree(base: Path) -> Path:
    for variant, n_train in (("detected", 2), ("labeled", 3)):
        write_tree(
            base / variant,
            {
                "bounding_box_train": [f"0001_c1_{i}.png" for i in range(1, n_train + 1)],
                "query": ["0768_c1_1.png", "0768_c2_6.png"],
                "bounding_box_test": ["0768_c2_7.png", "0769_c1_2.png"],
            },
        )
    return base


def test_cuhk03np_variants(tmp_path: Path) -> None:
    base = cuhk_tree(tmp_path / "cuhk03-np")
    with pytest.warns(DatasetCountWarning, match=r"CUHK03-NP \(detected\).*train images 2 \(official 7,365\)"):
        det = load_dataset("cuhk03np", base)
    assert det.root == base / "detected" and len(det.train) == 2
    assert triples(det.query) == [("0768_c1_1.png", 768, 0), ("0768_c2_6.png", 768, 1)]
    with pytest.warns(DatasetCountWarning, match=r"CUHK03-NP \(labeled\).*official 7,368"):
        lab = load_dataset("cuhk03np", tmp_path, variant="labeled")
    assert lab.root == base / "labeled" and len(lab.train) == 3
    # root pointing at the variant folder itself; the variant follows the folder name
    assert load_quiet("cuhk03np", base / "labeled").root == base / "labeled"
    with pytest.raises(DatasetError, match="'labeled' variant but variant='detected'"):
        load_dataset("cuhk03np", base / "labeled", variant="detected")
    with pytest.raises(DatasetError, match="variant 'both' is unknown; expected one of detected, labeled"):
        load_dataset("cuhk03np", base, variant="both")
    shutil.rmtree(base / "labeled")
    with pytest.raises(DatasetError, match="has no labeled/ subfolder"):
        load_dataset("cuhk03np", base, variant="labeled")


# --- MSMT17 --------------------------------------------------------------------------------


def msmt_tree(base: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    lists = {
        "list_train.txt": (train_dir, ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0001/0001_003_15_0303noon_0020_1.jpg 1"]),
        "list_val.txt": (train_dir, ["0001/0001_005_07_0303noon_0021_0.jpg 1"]),
        "list_query.txt": (test_dir, ["0000/0000_000_02_0303morning_0100_0.jpg 0"]),
        "list_gallery.txt": (test_dir, ["0000/0000_001_05_0303morning_0101_0.jpg 0", "0002/0002_000_11_0303noon_0001_0.jpg 2"]),
    }
    for list_name, (folder, lines) in lists.items():
        for line in lines:
            write_image(base / folder / line.split()[0])
        (base / list_name).write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize(("version", "train_dir", "test_dir"), [("V1", "train", "test"), ("V2", "mask_train_v2", "mask_test_v2")])
def test_msmt17_lists(tmp_path: Path, version: str, train_dir: str, test_dir: str) -> None:
    base = msmt_tree(tmp_path / f"MSMT17_{version}", train_dir, test_dir)
    with pytest.warns(DatasetCountWarning, match=r"MSMT17.*train images 3 \(official 32,621\)"):
        ds = load_dataset("msmt17", tmp_path)  # parent folder
    assert ds.root == base
    assert ds.split_dirs == {"train": train_dir, "query": test_dir, "gallery": test_dir}
    # pids are list labels + 1; cameras from the third name field, 0-based; train = train + val
    assert triples(ds.train) == [
        ("0000_000_01_0303morning_0015_0.jpg", 1, 0),
        ("0001_003_15_0303noon_0020_1.jpg", 2, 14),
        ("0001_005_07_0303noon_0021_0.jpg", 2, 6),
    ]
    assert triples(ds.query) == [("0000_000_02_0303morning_0100_0.jpg", 1, 1)]
    assert triples(ds.gallery) == [("0000_001_05_0303morning_0101_0.jpg", 1, 4), ("0002_000_11_0303noon_0001_0.jpg", 3, 10)]
    assert all(r.path.is_file() for r in ds.gallery)


def test_msmt17_errors(tmp_path: Path) -> None:
    base = msmt_tree(tmp_path / "MSMT17_V1")
    (base / "list_gallery.txt").write_text("0000/0000_001_05_0303morning_0101_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_gallery\.txt:1: expected 'relative/path\.jpg PID'"):
        load_quiet("msmt17", base)
    (base / "list_gallery.txt").write_text("0000/missing_00_05.jpg 0\n")
    with pytest.raises(DatasetError, match=r"list_gallery\.txt:1: image .*missing_00_05\.jpg does not exist"):
        load_quiet("msmt17", base)
    write_image(base / "test" / "0000" / "bad.jpg")
    (base / "list_gallery.txt").write_text("0000/bad.jpg 0\n")
    with pytest.raises(DatasetError, match=r"image name 'bad\.jpg' does not parse"):
        load_quiet("msmt17", base)
    (base / "list_val.txt").unlink()
    with pytest.raises(DatasetError, match=r"lacks list_val\.txt"):
        load_quiet("msmt17", base)
    base2 = msmt_tree(tmp_path / "other" / "MSMT17_V1")
    shutil.rmtree(base2 / "test")
    with pytest.raises(DatasetError, match=r"has no test/ or mask_test_v2/"):
        load_quiet("msmt17", base2)


# --- errors ---------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset root .*nowhere does not exist.*Market-1501-v15\.09\.15"):
        load_dataset("market1501", tmp_path / "nowhere")


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    root = market_tree(tmp_path / "m")
    shutil.rmtree(root / "query")
    with pytest.raises(DatasetError, match=r"has no query/; expected the folders bounding_box_train/, query/, bounding_box_test/"):
        load_dataset("folder", root)
    with pytest.raises(DatasetError, match=r"has no bounding_box_train/, query/, bounding_box_test/.*DukeMTMC-reID/"):
        load_dataset("dukemtmc", tmp_path)


def test_bad_file_name_is_named(tmp_path: Path) -> None:
    root = market_tree(tmp_path / "m")
    write_image(root / "query" / "person_7.jpg")
    with pytest.raises(DatasetError, match=r"query/person_7\.jpg.*does not parse; expected a name like 0002_c1s1_000451_03\.jpg"):
        load_dataset("folder", root)


@pytest.mark.parametrize("split_dir", ["query", "bounding_box_test"])
def test_empty_query_or_gallery(tmp_path: Path, split_dir: str) -> None:
    root = market_tree(tmp_path / "m")
    shutil.rmtree(root / split_dir)
    (root / split_dir).mkdir()
    split = "query" if split_dir == "query" else "gallery"
    with pytest.raises(DatasetError, match=rf"the {split} split \(.*{split_dir}\) contains no images"):
        load_dataset("folder", root)


def test_registry_names_and_unknown(tmp_path: Path) -> None:
    assert DATASETS.names() == ("market1501", "dukemtmc", "msmt17", "cuhk03np", "folder")
    with pytest.raises(DatasetError, match="unknown dataset 'market'; available: market1501, dukemtmc, msmt17, cuhk03np, folder"):
        load_dataset("market", tmp_path)
    with pytest.raises(DatasetError, match="variant='labeled' applies only to cuhk03np"):
        load_dataset("market1501", tmp_path, variant="labeled")


# --- fingerprint ----------------------------------------------------------------------------


def test_fingerprint_is_stable_and_sensitive(tmp_path: Path) -> None:
    root = market_tree(tmp_path / "a")
    fp = dataset_fingerprint(load_dataset("folder", root))
    assert len(fp) == 64 and fp == dataset_fingerprint(load_dataset("folder", root))
    moved = Path(shutil.copytree(root, tmp_path / "elsewhere" / "b"))
    assert dataset_fingerprint(load_dataset("folder", moved)) == fp  # relative paths only
    assert dataset_fingerprint(load_dataset("market1501", moved, check_counts=False)) == fp

    target = moved / "bounding_box_test" / "0001_c2s1_000976_01.jpg"
    target.rename(target.with_name("0004_c2s1_000976_01.jpg"))  # relabelled
    fp_relabelled = dataset_fingerprint(load_dataset("folder", moved))
    assert fp_relabelled != fp
    write_image(moved / "bounding_box_test" / "0004_c2s1_000976_01.jpg", seed=99, size=(16, 8))  # new bytes
    assert dataset_fingerprint(load_dataset("folder", moved)) not in (fp, fp_relabelled)


def test_fingerprint_missing_file(tmp_path: Path) -> None:
    root = market_tree(tmp_path / "a")
    ds = load_dataset("folder", root)
    ds.query[0].path.unlink()
    with pytest.raises(DatasetError, match=r"cannot read image .*0001_c1s1_001051_00\.jpg"):
        dataset_fingerprint(ds)


def test_folder_loads_the_synthetic_dataset(request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue("tiny_dataset_root")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("folder", root)
    assert ds.train and ds.query and ds.gallery
    assert {r.pid for r in ds.train}.isdisjoint({r.pid for r in ds.query})
