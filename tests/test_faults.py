"""Issue #19 item 7: faults and odd input that gave a traceback, each now one message naming the
culprit: a full disk during attack / train / benchmark (which file, and that a rerun resumes), a
30-digit person id, a checkpoint sidecar asking for a huge input, ``quantize(eps=nan)``, a dangling
symbolic link in a split, and a torchrun job whose rank 0 never starts (no C++ stack)."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors import SafetensorError

import metricattack
from metricattack.attacks import writer
from metricattack.attacks.ops import quantize
from metricattack.cli import main
from metricattack.data.layouts import MAX_LABEL, load_dataset, parse_market_name
from metricattack.errors import CheckpointError, DatasetError, MetricAttackError, WriteError
from metricattack.io import atomic_dir, atomic_path, current_umask, is_disk_full, sha256_file
from metricattack.models.checkpoint import load_model, meta_path
from metricattack.stages import read_stage_log

ROOT = Path(__file__).resolve().parents[1]
TRAIN_RECIPE = ROOT / "configs" / "synthetic" / "tiny-fixture.yaml"
FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def one_message(err: str) -> str:
    assert err.count(": error: ") == 1 and "Traceback" not in err, err
    return err


def fail_writes(monkeypatch: pytest.MonkeyPatch, prefix: str) -> list[str]:
    """Make ``os.open`` raise OSError(ENOSPC) when it creates a temporary file named ``prefix*``
    (the disk fills up there: ``atomic_write_bytes`` creates its temporary file with it); returns the
    names it refused."""
    original = os.open
    refused: list[str] = []

    def create(path, flags, *args, **kwargs):  # noqa: ANN001 - os.open's signature
        name = Path(path).name
        if name.startswith(prefix) and flags & os.O_CREAT:
            refused.append(name)
            raise FULL
        return original(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", create)
    return refused


class FullDisk(io.RawIOBase):
    """A file every write to fails with ENOSPC, as on a full disk."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001
        raise FULL


def _chained_runtime_error() -> RuntimeError:
    """What torch.save into an open file on a full tmpfs raised here: a RuntimeError while handling OSError(ENOSPC)."""
    try:
        try:
            raise FULL
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as exc:
        exc.__context__ = FULL
        return exc


def test_every_writer_reports_a_full_disk_the_same_way(tmp_path: Path) -> None:
    caught: list[BaseException] = []
    for write in (
        lambda: torch.save({"x": torch.zeros(1000)}, FullDisk()),
        lambda: Image.new("RGB", (64, 64)).save(FullDisk(), format="PNG"),
    ):
        with pytest.raises(OSError) as info:
            write()
        caught.append(info.value)
    # the texts safetensors 0.8 and torch 2.14 gave on a full 256 kB tmpfs on this machine (a mount needs root, so not here)
    caught += [SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), _chained_runtime_error()]
    assert all(is_disk_full(exc) for exc in caught), [repr(e) for e in caught]
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(RuntimeError("unexpected pos 704 vs 598"))
    for exc in caught:
        with (
            pytest.raises(WriteError, match=rf"could not write {tmp_path / 'a.bin'}: no space left.*resumes"),
            atomic_path(tmp_path / "a.bin"),
        ):
            raise exc
        with (
            pytest.raises(WriteError, match=rf"could not write {tmp_path / 'data'}: no space left"),
            atomic_dir(tmp_path / "data") as tmp,
        ):
            (tmp / "image.png").write_bytes(b"partial")
            raise exc
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_train_names_the_file_and_a_rerun_resumes(tiny_dataset_root, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    argv = ["train", "--config", str(TRAIN_RECIPE), "--out", str(out), f"data.root={tiny_dataset_root}", "schedule.epochs=1"]
    with monkeypatch.context() as patch:
        refused = fail_writes(patch, ".model.json.")  # the final model's sidecar, after the epoch was saved
        assert main(argv) == 2
    err = one_message(capsys.readouterr().err)
    assert refused and f"could not write {out / 'model.json'}: no space left" in err and "resumes from the finished work" in err
    assert main(argv) == 0, capsys.readouterr().err
    epoch = out / "checkpoints" / "epoch-001.safetensors"
    assert sha256_file(out / "model.safetensors") == sha256_file(epoch)  # the saved epoch, not a new training
    load_model(out / "model.safetensors")


def test_full_disk_during_attack_names_the_file_and_a_rerun_resumes(
    tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "adv"
    argv = ["attack", "--checkpoint", str(tiny_model_checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    argv += ["--out", str(out), "--method", "fgsm", "--eps", "2", "--no-progress", "--batch-size", "16"]
    victim = sorted((tiny_dataset_root / "bounding_box_test").iterdir())[20].name
    with monkeypatch.context() as patch:
        patch.setattr(writer, "on_host", lambda workers, function, *args: function(*args))  # the PNGs in the threads, not in host processes
        refused = fail_writes(patch, f".{victim}.")  # its PNG, written on a worker thread
        assert main(argv) == 2
    err = one_message(capsys.readouterr().err)
    assert refused and f"could not write {out / 'bounding_box_test' / victim}: no space left" in err and "resumes" in err
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "bounding_box_test" / victim).is_file() and json.loads((out / "attack_results.json").read_text())["num_attacked"] > 0


def test_full_disk_during_benchmark_names_the_file_and_a_rerun_resumes(
    tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys, monkeypatch
):
    recipe = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text(encoding="utf-8"))
    recipe.update(
        dataset={"name": "folder", "root": str(tiny_dataset_root)},
        models=[{"name": "M", "checkpoint": str(tiny_model_checkpoint)}],
        experiments={"only": ["table1"]},
    )
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    out = tmp_path / "run"
    argv = ["benchmark", "--config", str(config), "--out", str(out), "--no-progress"]
    with monkeypatch.context() as patch:
        refused = fail_writes(patch, ".results.json.")
        assert main(argv) == 2
    err = one_message(capsys.readouterr().err)
    assert refused and f"could not write {out / 'results.json'}: no space left" in err and "resumes" in err
    finished = {e["key"] for e in read_stage_log(out) if e["status"] == "ran"}
    assert main(argv) == 0, capsys.readouterr().err
    rerun = [e for e in read_stage_log(out) if e["key"] in finished][len(finished) :]
    assert finished and {e["status"] for e in rerun} == {"cached"} and (out / "results.json").is_file()


def test_a_30_digit_person_id_is_one_message(tiny_model_checkpoint, tmp_path: Path, capsys) -> None:
    huge = "1" + "0" * 29
    with pytest.raises(DatasetError, match=rf"gives person id {huge}, larger than {MAX_LABEL:,}"):
        parse_market_name(f"{huge}_c1s1_000001_00.jpg")
    with pytest.raises(DatasetError, match=rf"gives camera {huge}, larger than"):
        parse_market_name(f"0001_c{huge}s1_000001_00.jpg")
    assert parse_market_name(f"{MAX_LABEL}_c1s1_000001_00.jpg") == (MAX_LABEL, 0)
    data = tmp_path / "data"
    for folder, name in (("query", f"{huge}_c1s1_000001_00.jpg"), ("bounding_box_test", "0001_c2s1_000001_00.jpg")):
        (data / folder).mkdir(parents=True)
        Image.new("RGB", (8, 16)).save(data / folder / name, format="PNG")
    (data / "bounding_box_train").mkdir()
    argv = ["evaluate", "--checkpoint", str(tiny_model_checkpoint), "--data-root", str(data), "--dataset", "folder", "--no-progress"]
    assert main(argv) == 2
    assert f"{huge}_c1s1_000001_00.jpg" in one_message(capsys.readouterr().err)


def test_a_sidecar_asking_for_a_huge_input_is_refused(tiny_model_checkpoint, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    shutil.copy(tiny_model_checkpoint, path)
    record = json.loads(meta_path(Path(tiny_model_checkpoint)).read_text(encoding="utf-8"))
    for spec, message in (
        ({"input_size": [20000, 10000]}, r"input_size 20000x10000 is larger than this tool allows .* 2.4 GB per image"),
        ({"input_size": [4096, 128]}, "input_size 4096x128 is larger than this tool allows .at most 2048 per side"),
        ({"num_classes": 10**12}, "num_classes must be an integer from 1 to 1,000,000"),
    ):
        meta_path(path).write_text(json.dumps({**record, "spec": {**record["spec"], **spec}}), encoding="utf-8")
        with pytest.raises(CheckpointError, match=rf"{meta_path(path)} has an unusable spec: {message}"):
            load_model(path)


def test_quantize_refuses_an_eps_that_is_not_a_number() -> None:
    clean = torch.full((1, 3, 2, 2), 0.5)
    for eps in (float("nan"), float("inf"), -1.0, True):
        with pytest.raises(MetricAttackError, match="quantize: eps must be a finite number >= 0"):
            quantize(clean, clean, eps)  # type: ignore[arg-type]
    assert torch.equal(quantize(clean + 0.1, clean, 2), torch.full((1, 3, 2, 2), 130, dtype=torch.uint8))  # 128 + 2


def test_a_dangling_link_in_a_split_is_one_message(tiny_dataset_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset_root, data)
    link = data / "bounding_box_test" / "0001_c1s1_009999_00.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(DatasetError, match=rf"image {link} \(a symbolic link to {tmp_path / 'gone.jpg'}, which does not exist\)"):
        load_dataset("folder", data)
    link.unlink()
    link.symlink_to(next((data / "query").iterdir()))  # a link to an existing image is an image
    assert link in [r.path for r in load_dataset("folder", data).gallery]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_rank_0_never_starting_is_our_message_without_a_cpp_stack(tiny_model_checkpoint, tiny_dataset_root) -> None:
    """Rank 1 of 2 alone, no store anywhere: stderr is our one line (C++ writes to fd 2, so a subprocess)."""
    src = Path(metricattack.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "METRICATTACK_DIST_TIMEOUT": "2"}
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricattack",
            "evaluate",
            "--checkpoint",
            str(tiny_model_checkpoint),
            "--data-root",
            str(tiny_dataset_root),
        ]
        + ["--dataset", "folder", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"metricattack evaluate: error: rank 1 of 2 could not reach the job's store at 127.0.0.1:{env['MASTER_PORT']}: "
        "rank 0 did not start or is unreachable (waited 2 s; set METRICATTACK_DIST_TIMEOUT to wait longer)"
    ]


def test_an_artifact_gets_the_umask_mode_without_the_umask_being_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer threads create files while another thread finishes an artifact: reading the umask by
    setting it (``os.umask``) would give their files the wrong mode for a moment, so it is read from
    ``/proc/self/status`` instead; the artifact still gets ``0o666 & ~umask``."""
    previous = os.umask(0o027)
    try:

        def refuse(_mask: int) -> int:
            raise AssertionError("the umask was changed to read it")

        monkeypatch.setattr(os, "umask", refuse)
        assert current_umask() == 0o027
        with atomic_path(tmp_path / "artifact.json") as tmp:
            tmp.write_text("{}")
        assert (tmp_path / "artifact.json").stat().st_mode & 0o777 == 0o640
    finally:
        monkeypatch.undo()
        os.umask(previous)
