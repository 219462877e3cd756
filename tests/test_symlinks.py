"""Issue #19 item 2: locks and outputs never follow symbolic links, and a features cache is never
written into a folder that is not one. Every case checks that the file a link points to is untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metricattack.cli import main
from metricattack.io import atomic_dir, atomic_path, atomic_write_json, copy_file
from metricattack.outputs import LOCK_NAME, OutputError, check_output_folder, is_empty_folder, output_lock
from metricattack.stages import StageCache, StageSpec

CHECKPOINT_JSON = b'{"format": "metricattack.reid-checkpoint/1", "spec": {}}\n'


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file someone else owns (a checkpoint's sidecar), which no write may change."""
    path = tmp_path / "elsewhere" / "model.json"
    path.parent.mkdir()
    path.write_bytes(CHECKPOINT_JSON)
    return path


def test_a_linked_lock_file_is_refused_and_its_target_kept(victim: Path, tmp_path: Path, capsys) -> None:
    linked, hard, dangling = tmp_path / "linked", tmp_path / "hard", tmp_path / "dangling"
    for folder in (linked, hard, dangling):
        folder.mkdir()
    (linked / LOCK_NAME).symlink_to(victim)
    os.link(victim, hard / LOCK_NAME)
    (dangling / LOCK_NAME).symlink_to(tmp_path / "created-through-the-link")
    assert not is_empty_folder(linked) and not is_empty_folder(dangling)
    with pytest.raises(OutputError, match="is not empty"):
        check_output_folder("--out", linked, command="attack")
    for folder, message in ((linked, "is a symbolic link"), (dangling, "is a symbolic link"), (hard, "has other hard links")):
        with pytest.raises(OutputError, match=message), output_lock(folder, "attack"):
            pass
    assert victim.read_bytes() == CHECKPOINT_JSON and not (tmp_path / "created-through-the-link").exists()
    assert main(["synth", "--out", str(linked), "--train-ids", "2", "--test-ids", "2", "--cameras", "2"]) == 2
    assert f"{linked} is not empty" in capsys.readouterr().err
    assert victim.read_bytes() == CHECKPOINT_JSON and sorted(p.name for p in linked.iterdir()) == [LOCK_NAME]


def test_atomic_writes_replace_a_link_and_never_write_through_it(victim: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, write in (
        ("results.json", lambda p: atomic_write_json(p, {"mAP": 0.5})),
        ("copy.json", lambda p: copy_file(tmp_path / "source.json", p)),
    ):
        (tmp_path / "source.json").write_text('{"source": 1}\n')
        (out / name).symlink_to(victim)
        write(out / name)
        assert not (out / name).is_symlink() and (out / name).read_bytes() != CHECKPOINT_JSON
    (out / "folder").symlink_to(victim.parent, target_is_directory=True)
    with atomic_dir(out / "folder") as tmp:
        (tmp / "model.json").write_text("new")
    assert not (out / "folder").is_symlink() and (out / "folder" / "model.json").read_text() == "new"
    with atomic_path(out / "plain.txt") as tmp:
        tmp.write_text("fine")
    assert victim.read_bytes() == CHECKPOINT_JSON and sorted(p.name for p in victim.parent.iterdir()) == ["model.json"]
    cache = StageCache(tmp_path / "cache")
    cache.log_path.parent.mkdir(parents=True)
    cache.log_path.symlink_to(victim)
    with pytest.raises(OSError):
        cache.run(StageSpec("kind", "label", {}), lambda folder: {})
    assert victim.read_bytes() == CHECKPOINT_JSON


def test_features_cache_refuses_a_folder_that_is_not_one(tiny_model_checkpoint, tiny_dataset_root, tmp_path: Path, capsys) -> None:
    argv = ["evaluate", "--checkpoint", str(tiny_model_checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    run_folder = tmp_path / "a-run"
    (run_folder / "cache" / "model").mkdir(parents=True)
    (run_folder / "results.json").write_text("{}")
    linked = tmp_path / "linked-logs"
    (linked / "cache" / "features").mkdir(parents=True)
    (linked / "logs").symlink_to(victim_dir := tmp_path / "logs-elsewhere", target_is_directory=True)
    victim_dir.mkdir()
    for folder in (run_folder, linked, tmp_path / "a-file"):
        (tmp_path / "a-file").write_text("mine")
        before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
        assert main([*argv, "--no-progress", "--features-cache", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"--features-cache {folder}" in err and err.count("error:") == 1, err
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
    cache = tmp_path / "features"
    for _ in range(2):  # made, then reused
        assert main([*argv, "--no-progress", "--features-cache", str(cache)]) == 0
        assert "rank-1" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["cache", "logs"]
    assert [p.name for p in (cache / "cache").iterdir()] == ["features"]
