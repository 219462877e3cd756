"""Synthetic pedestrians: layout, determinism, caching, bad output folders; histogram baseline."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metricattack.cli import main
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import MANIFEST, SynthConfig, generate
from metricattack.errors import MetricAttackError
from metricattack.evaluation.baselines import color_histogram_features

NAME = re.compile(r"^(-1|\d{4})_c(\d)s1_(\d{6})_(\d{2})\.jpg$")
SMALL = dict(
    seed=3, num_train_ids=4, num_test_ids=3, num_cameras=2, images_per_camera=2, num_distractors=2, num_junk=2, height=32, width=16
)


def _parse(folder: Path) -> list[tuple[int, int]]:
    out = []
    for f in sorted(folder.iterdir()):
        m = NAME.match(f.name)
        assert m, f"bad name {f.name}"
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))}


def test_layout_counts_and_identities(tiny_dataset_root: Path) -> None:
    root = tiny_dataset_root
    train = _parse(root / "bounding_box_train")
    query = _parse(root / "query")
    gallery = _parse(root / "bounding_box_test")
    train_ids = {p for p, _ in train}
    test_ids = {p for p, _ in query}
    assert len(train_ids) == 16 and len(test_ids) == 12
    assert not train_ids & test_ids and 0 not in train_ids | test_ids and -1 not in train_ids | test_ids
    assert len(train) == 16 * 3 * 2
    # one query per identity per camera; gallery holds the other images of each test id
    assert sorted(query) == sorted((p, c) for p in test_ids for c in (1, 2, 3))
    people = [(p, c) for p, c in gallery if p > 0]
    assert sorted(people) == sorted((p, c) for p in test_ids for c in (1, 2, 3) for _ in range(2))
    assert sum(p == 0 for p, _ in gallery) == 6 and sum(p == -1 for p, _ in gallery) == 4
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        for f in list((root / split).iterdir())[:5]:
            with Image.open(f) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 128)
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["counts"]["train_images"] == len(train) and manifest["seed"] == 0
    assert manifest["files"] == _digest(root)
    assert "metricattack" in manifest["environment"]


def test_layout_loads_as_folder_dataset(tiny_dataset_root: Path) -> None:
    ds = load_dataset("folder", tiny_dataset_root)
    assert len(ds.train) == 96 and len(ds.query) == 36 and len(ds.gallery) == 12 * 3 * 2 + 10
    assert {r.camid for r in ds.query} == {0, 1, 2}
    assert {r.pid for r in ds.train}.isdisjoint({r.pid for r in ds.query})


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", SynthConfig(**SMALL))
    b = generate(tmp_path / "b", SynthConfig(**SMALL), workers=2)
    c = generate(tmp_path / "c", SynthConfig(**{**SMALL, "seed": 4}))
    assert _digest(a) == _digest(b)
    assert (a / MANIFEST).read_bytes() == (b / MANIFEST).read_bytes()
    assert _digest(a) != _digest(c)


def test_identities_differ_and_cameras_change_appearance(tmp_path: Path) -> None:
    cfg = SynthConfig(**{**SMALL, "num_test_ids": 2, "num_distractors": 0, "num_junk": 0, "height": 64, "width": 32})
    root = generate(tmp_path / "d", cfg)
    files = sorted((root / "bounding_box_test").iterdir())
    images = {f.name: np.asarray(Image.open(f), dtype=np.float32) for f in files}
    names = list(images)
    assert all(np.abs(images[names[0]] - images[n]).mean() > 1.0 for n in names[1:])  # no duplicates


def test_texture_changes_only_people_and_is_deterministic(tmp_path: Path) -> None:
    plain = _digest(generate(tmp_path / "plain", SynthConfig(**SMALL)))
    cfg = SynthConfig(**{**SMALL, "texture": 16})
    textured = generate(tmp_path / "t1", cfg)
    assert _digest(textured) == _digest(generate(tmp_path / "t2", cfg, workers=2))
    tex = _digest(textured)
    assert tex.keys() == plain.keys()
    junk = [k for k in tex if Path(k).name.startswith("-1_")]
    people = [k for k in tex if not Path(k).name.startswith("-1_")]
    assert junk and all(tex[k] == plain[k] for k in junk)  # junk draws no texture: its stream is untouched
    assert all(tex[k] != plain[k] for k in people)
    # the texture is fine detail on the top: same layout and colours, a small mean change
    a = np.asarray(Image.open(tmp_path / "plain" / people[0]), dtype=np.float32)
    b = np.asarray(Image.open(textured / people[0]), dtype=np.float32)
    assert 0.0 < np.abs(a - b).mean() < 8.0
    # texture 0 is left out of the manifest, so datasets made before the option existed are reused
    assert "texture" not in json.loads((tmp_path / "plain" / MANIFEST).read_text())["config"]
    assert json.loads((textured / MANIFEST).read_text())["config"]["texture"] == 16


def _pixel_digest(root: Path) -> str:
    """SHA-256 over every image's name and decoded pixels (independent of the PNG encoder's bytes)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jpg")):
        h.update(str(p.relative_to(root)).encode())
        h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


def test_default_options_keep_the_version_3_pixels(tmp_path: Path) -> None:
    """Options added after version 3 (texture, outfits) leave the default dataset's pixels as they were
    (digest computed with the generator before ``outfits`` existed): configs and caches stay valid."""
    assert _pixel_digest(generate(tmp_path / "v3", SynthConfig(**SMALL))) == (
        "57d3762a3d84f177bfbddb8b2f3f3279fb9efded5a5effc735ce0944b01e137f"
    )


def test_outfits_dress_people_alike_and_are_deterministic(tmp_path: Path) -> None:
    from metricattack.data.synthetic.appearance import OUTFIT_STYLE
    from metricattack.data.synthetic.writer import _DISTRACTOR, _IDENTITY, _identity

    plain = _digest(generate(tmp_path / "plain", SynthConfig(**SMALL)))
    cfg = SynthConfig(**{**SMALL, "outfits": 1})
    dressed = generate(tmp_path / "o1", cfg)
    assert _digest(dressed) == _digest(generate(tmp_path / "o2", cfg, workers=2))
    files = _digest(dressed)
    junk = [k for k in files if Path(k).name.startswith("-1_")]
    assert junk and all(files[k] == plain[k] for k in junk) and all(files[k] != plain[k] for k in files if k not in junk)
    # one outfit: everyone's clothes agree up to each wearer's ±8 jitter; bodies, hair and bags stay their own
    people = [_identity(cfg, _IDENTITY, pid) for pid in range(1, 8)] + [_identity(cfg, _DISTRACTOR, i) for i in range(2)]
    for name in OUTFIT_STYLE:
        assert len({getattr(p, name) for p in people}) == 1
    for name in ("top", "bottom", "shoes"):
        colours = np.array([getattr(p, name) for p in people])
        assert (colours.max(0) - colours.min(0)).max() <= 16
    assert len({(p.shoulder, p.hair, p.bag_colour) for p in people}) == len(people)
    many = SynthConfig(**{**SMALL, "outfits": 50})
    assert len({_identity(many, _IDENTITY, pid).top_pattern + str(_identity(many, _IDENTITY, pid).bottom) for pid in range(1, 8)}) > 1
    assert "outfits" not in json.loads((tmp_path / "plain" / MANIFEST).read_text())["config"]
    assert json.loads((dressed / MANIFEST).read_text())["config"]["outfits"] == 1


def test_cached_regenerate_and_refusals(tmp_path: Path) -> None:
    cfg = SynthConfig(**SMALL)
    out = generate(tmp_path / "ds", cfg)
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert generate(out, cfg) == out and (out / MANIFEST).stat().st_mtime_ns == stamp
    with pytest.raises(MetricAttackError, match="num_train_ids: 4 there, 5 wanted"):
        generate(out, SynthConfig(**{**SMALL, "num_train_ids": 5}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MetricAttackError, match="not empty"):
        generate(foreign, cfg)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (out / "query" / next(iter(sorted((out / "query").iterdir()))).name).unlink()
    with pytest.raises(MetricAttackError, match="incomplete"):
        generate(out, cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate(empty, cfg) == empty and (empty / MANIFEST).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metricattack.data.synthetic import writer

    calls = {"n": 0}
    real = writer.render_job

    def flaky(cfg, job):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(cfg, job)

    monkeypatch.setattr(writer, "render_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "ds", SynthConfig(**SMALL))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"num_cameras": 1},
        {"num_train_ids": 0},
        {"images_per_camera": 0},
        {"cameras_per_id": 3},
        {"num_junk": -1},
        {"colour": 1},
        {"texture": -1},
        {"outfits": 0},
    ],
)
def test_invalid_config_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        SynthConfig(**{**SMALL, **bad})


def test_exact_totals_hit_market_1501_counts() -> None:
    """Planning only (no pixels): Market-1501's 751 / 750 identities, 6 cameras, 12,936 / 3,368 /
    15,913 images (the gallery without junk: 13,115 identity images + 2,798 distractors)."""
    from collections import Counter

    from metricattack.data.synthetic import plan

    cfg = SynthConfig(
        num_train_ids=751,
        num_test_ids=750,
        num_cameras=6,
        train_images=12936,
        query_images=3368,
        gallery_images=13115,
        num_distractors=2798,
    )
    jobs = plan(cfg)
    split = Counter(job.relpath.split("/")[0] for job in jobs)
    assert split == {"bounding_box_train": 12936, "query": 3368, "bounding_box_test": 15913}
    per_pair = Counter((job.pid, job.cam) for job in jobs if job.relpath.startswith("bounding_box_train"))
    assert set(per_pair.values()) == {2, 3} and len(per_pair) == 751 * 6  # as even as possible
    queries = [(job.pid, job.cam) for job in jobs if job.relpath.startswith("query")]
    assert len({pid for pid, _ in queries}) == 750 and len(set(queries)) == len(queries)  # every identity, one per camera at most
    assert len({job.relpath for job in jobs}) == len(jobs)
    assert "train_images" not in SynthConfig(**SMALL).record()  # datasets made before these options stay recognised
    for bad in ({"train_images": 3}, {"query_images": 2}, {"gallery_images": 5}, {"query_images": 7}):
        with pytest.raises(ValueError, match="images="):
            SynthConfig(**{**SMALL, **bad})


def test_cameras_per_id_subset(tmp_path: Path) -> None:
    cfg = SynthConfig(**{**SMALL, "num_cameras": 4, "cameras_per_id": 2, "num_distractors": 0, "num_junk": 0})
    root = generate(tmp_path / "s", cfg)
    per_id: dict[int, set[int]] = {}
    for pid, cam in _parse(root / "bounding_box_train") + _parse(root / "query"):
        per_id.setdefault(pid, set()).add(cam)
    assert all(len(cams) == 2 for cams in per_id.values()) and len(per_id) == 7


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "synth",
        "--out",
        str(tmp_path / "cli"),
        "--train-ids",
        "3",
        "--test-ids",
        "2",
        "--cameras",
        "2",
        "--images-per-camera",
        "1",
        "--junk",
        "1",
        "--distractors",
        "1",
        "--height",
        "32",
        "--width",
        "16",
    ]
    assert main(args) == 0
    assert "query" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "query").iterdir())) == 4
    assert main([*args[:-2], "--width", "8", "--cameras", "1"]) == 2
    assert "num_cameras" in capsys.readouterr().err


def test_color_histogram_features() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 32, 16, generator=g)
    for space in ("hsv", "rgb"):
        f = color_histogram_features(images, bins=4, stripes=4, color_space=space)
        assert f.shape == (5, 4 * 4**3)
        assert torch.allclose(f.norm(dim=1), torch.ones(5)) and (f >= 0).all()
    # a pure red image fills exactly one bin per stripe
    red = torch.zeros(1, 3, 12, 6)
    red[:, 0] = 1.0
    f = color_histogram_features(red, bins=4, stripes=3, sqrt=False)
    assert (f > 0).sum() == 3 and torch.allclose(f[f > 0], torch.full((3,), 3**-0.5))
    # horizontal flip leaves stripe histograms unchanged; swapping top and bottom does not
    assert torch.allclose(color_histogram_features(images.flip(3)), color_histogram_features(images))
    half = torch.cat([torch.zeros(1, 3, 8, 4), torch.ones(1, 3, 8, 4)], dim=2)
    assert not torch.allclose(color_histogram_features(half, stripes=2), color_histogram_features(half.flip(2), stripes=2))
    with pytest.raises(MetricAttackError, match="B,3,H,W"):
        color_histogram_features(torch.rand(3, 8, 8))
