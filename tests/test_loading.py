"""Image reading/writing and size-bucketed batch loading."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import metricattack.distributed as distributed
from metricattack.data.loading import image_size, make_loader, read_image, save_png
from metricattack.data.types import ImageRecord
from metricattack.errors import ConfigError, DatasetError


def random_pixels(seed: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def mixed_records(root: Path) -> list[ImageRecord]:
    """11 images of three sizes, interleaved."""
    sizes = [(8, 4), (6, 6), (8, 4), (10, 5), (8, 4), (6, 6), (10, 5), (8, 4), (6, 6), (8, 4), (10, 5)]
    return [
        ImageRecord(write_png(root / f"{i:04d}_c1s1_{i:06d}_00.png", random_pixels(i, hw)), pid=i, camid=0) for i, hw in enumerate(sizes)
    ]


# --- read / write ----------------------------------------------------------------------------


def test_read_image_exact_values(tmp_path: Path) -> None:
    pixels = random_pixels(0, (7, 5))
    image = read_image(write_png(tmp_path / "a.png", pixels))
    assert image.dtype == torch.float32 and image.shape == (3, 7, 5)
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_read_image_converts_grey_and_rgba(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 3, 4) and torch.equal(image[0], image[2])
    assert torch.equal(image[1], torch.from_numpy(grey).float() / 255)
    rgba = np.concatenate([random_pixels(1, (2, 3)), np.full((2, 3, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert torch.equal(read_image(tmp_path / "a.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255)


def test_read_image_jpeg(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(encoded(random_pixels(2, (16, 8)), "JPEG"))
    image = read_image(tmp_path / "a.jpg")
    assert image.shape == (3, 16, 8) and 0.0 <= image.min() and image.max() <= 1.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_names_the_file(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # a global someone else may have set
    data = encoded(random_pixels(3, (32, 16)), fmt)
    pixel_data_start = data.index(b"IDAT" if fmt == "PNG" else b"\xff\xda")  # headers end here
    path = tmp_path / f"0001_c1s1_000001_00.{fmt.lower()}"
    path.write_bytes(data[: (pixel_data_start + len(data)) // 2])  # cut inside the pixel data
    with pytest.raises(DatasetError, match=rf"cannot read image .*0001_c1s1_000001_00\.{fmt.lower()}: .*(?i:truncated)"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    # the header is intact, so the size is still known: image_size reads the header only
    assert image_size(path) == (32, 16)


def test_unreadable_and_missing_images(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(DatasetError, match=r"cannot read image .*x\.jpg"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(DatasetError, match=r"cannot read image header of .*x\.jpg"):
        image_size(tmp_path / "x.jpg")
    with pytest.raises(DatasetError, match=r"cannot read image .*missing\.png"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DatasetError, match=r"cannot read image header of .*missing\.png: .*No such file"):
        image_size(tmp_path / "missing.png")


def test_image_size_reads_a_replaced_or_rewritten_file_again(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    save_png(torch.zeros(3, 8, 4), path)
    assert image_size(path) == (8, 4)
    save_png(torch.zeros(3, 6, 2), path)  # replaced (a new file)
    assert image_size(path) == (6, 2)
    with path.open("r+b") as file:  # rewritten in place: the same inode
        Image.new("RGB", (5, 7)).save(file, format="PNG")
    assert image_size(path) == (7, 5)


def test_save_png_round_trip_on_the_grid(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    on_grid = torch.randint(0, 256, (3, 9, 5), generator=gen).float() / 255
    save_png(on_grid, tmp_path / "g.png")
    assert torch.equal(read_image(tmp_path / "g.png"), on_grid)

    off_grid = torch.rand(3, 9, 5, generator=gen) * 1.2 - 0.1  # some values outside [0,1]
    save_png(off_grid, tmp_path / "sub" / "o.png")
    expected = (off_grid.clamp(0, 1) * 255).round() / 255
    assert torch.equal(read_image(tmp_path / "sub" / "o.png"), expected)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["g.png", "o.png", "sub"]  # no temp files left
    with Image.open(tmp_path / "g.png") as img:
        assert (img.format, img.mode) == ("PNG", "RGB")


def test_save_png_rejects_bad_tensors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \[3,H,W\], got \(1, 3, 4, 4\)"):
        save_png(torch.zeros(1, 3, 4, 4), tmp_path / "a.png")
    with pytest.raises(ValueError, match="NaN"):
        save_png(torch.full((3, 2, 2), float("nan")), tmp_path / "a.png")
    assert not any(tmp_path.iterdir())


# --- loader ----------------------------------------------------------------------------------


def collect(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images, indices) for images, indices in loader]


def test_loader_groups_native_sizes(tmp_path: Path) -> None:
    records = mixed_records(tmp_path)
    batches = collect(make_loader(records, batch_size=2))
    seen = []
    for images, indices in batches:
        assert images.dtype == torch.float32 and indices.dtype == torch.long
        sizes = {image_size(records[i].path) for i in indices.tolist()}
        assert len(sizes) == 1 and tuple(images.shape[-2:]) == sizes.pop()
        for image, i in zip(images, indices.tolist(), strict=True):
            assert torch.equal(image, read_image(records[i].path))
        seen.extend(indices.tolist())
    # buckets in order of first appearance, record order inside a bucket
    assert seen == [0, 2, 4, 7, 9, 1, 5, 8, 3, 6, 10]
    assert [len(b[1]) for b in batches] == [2, 2, 1, 2, 1, 2, 1]


def test_loader_shuffle_is_seeded(tmp_path: Path) -> None:
    records = mixed_records(tmp_path)

    def order(seed: int, epoch: int = 0) -> list[list[int]]:
        loader = make_loader(records, batch_size=2, shuffle=True, seed=seed)
        loader.batch_sampler.set_epoch(epoch)
        return [b[1].tolist() for b in loader]

    first = order(0)
    assert order(0) == first
    assert sorted(i for b in first for i in b) == list(range(11))
    assert order(1) != first and order(0, epoch=1) != first


def test_loader_with_worker_process(tmp_path: Path) -> None:
    records = mixed_records(tmp_path)[:4]
    batches = collect(make_loader(records, batch_size=3, num_workers=1))
    for images, indices in batches:
        for image, i in zip(images, indices.tolist(), strict=True):
            assert torch.equal(image, read_image(records[i].path))


def test_loader_shards_whole_batches_of_the_one_process_batching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch b of the one-process order goes to rank b mod world, unchanged: every image is computed
    in the same batch as in one process (sharding single images would make other batches)."""
    records = mixed_records(tmp_path)
    one_process = [b.tolist() for _, b in make_loader(records, batch_size=2)]
    assert one_process == [[0, 2], [4, 7], [9], [1, 5], [8], [3, 6], [10]]
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, 3))
        loader = make_loader(records, batch_size=2, shard=True)
        assert [b.tolist() for _, b in loader] == one_process[rank::3] and len(loader) == len(one_process[rank::3])
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (7, 8))  # more ranks than batches: nothing to do
    assert [b.tolist() for _, b in make_loader(records, batch_size=2, shard=True)] == []


def test_loader_rejects_bad_options(tmp_path: Path) -> None:
    records = mixed_records(tmp_path)[:2]
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        make_loader(records, batch_size=0)
