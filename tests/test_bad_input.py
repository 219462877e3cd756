"""Issue #12: bad input and faults, command by command. Every case stops with one message naming
the culprit and exit status 2, destroys nothing, and leaves nothing half-written; no number is
silently wrong. The commands run in-process (``metricattack.cli.main``) on tiny data."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from metricattack.attacks.spec import make_spec
from metricattack.cli import main
from metricattack.data.layouts import load_dataset
from metricattack.data.loading import image_size, read_image
from metricattack.distributed import JOIN_TIMEOUT_ENV, process_group
from metricattack.errors import ConfigError, DatasetError, MetricAttackError
from metricattack.evaluation.checks import DuplicateImageWarning, warn_duplicate_images
from metricattack.io import atomic_path, atomic_write_json, copy_file, remove_leftovers, sha256_file
from metricattack.outputs import LOCK_NAME, output_lock

ROOT = Path(__file__).resolve().parents[1]
TRAIN_RECIPE = ROOT / "configs" / "synthetic" / "tiny-fixture.yaml"
DEFENSE_RECIPE = ROOT / "configs" / "defense" / "quickstart.yaml"
BENCHMARK_RECIPE = ROOT / "configs" / "tiny.yaml"


# ----------------------------------------------------------------------------- helpers


def write_image(path: Path, seed: int, size: tuple[int, int] = (16, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def handmade_dataset(root: Path, query: list[tuple[int, int]], gallery: list[tuple[int, int]]) -> Path:
    """A ``folder`` dataset of tiny random images: (pid, 1-based camera) per query / gallery image."""
    for split, folder, items in (("q", "query", query), ("g", "bounding_box_test", gallery)):
        for i, (pid, cam) in enumerate(items):
            write_image(root / folder / f"{pid:04d}_c{cam}s1_{i:06d}_{split}.jpg", seed=hash((split, i)) % 1000)
    for i in range(4):
        write_image(root / "bounding_box_train" / f"{9000 + i % 2:04d}_c{1 + i // 2}s1_{i:06d}_00.jpg", seed=100 + i)
    return root


def bytes_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_message(err: str) -> str:
    """The one error message of a refused command (a config error lists its fields on the next lines), no traceback."""
    assert err.count(": error: ") == 1 and "Traceback" not in err, err
    return err[err.index("metricattack ") :]


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder nobody may create files in: chmod 555 (or, for root, who ignores modes, sysfs)."""
    folder = tmp_path_factory.mktemp("ro") / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/fs")):
        try:
            (candidate / ".probe").touch()
            (candidate / ".probe").unlink()
        except OSError:
            return candidate
    pytest.skip("no read-only folder available (running as root without sysfs)")


def attack_args(checkpoint: Path, data: Path, out: Path, *extra: object) -> list[object]:
    return ["attack", "--checkpoint", checkpoint, "--data-root", data, "--dataset", "folder", "--out", out, "--no-progress", *extra]


def evaluate_args(checkpoint: Path, data: Path, *extra: object) -> list[object]:
    return ["evaluate", "--checkpoint", checkpoint, "--data-root", data, "--dataset", "folder", "--no-progress", *extra]


# ----------------------------------------------------------------------------- data loss


def test_fit_metric_never_overwrites_its_checkpoint_or_another_one(tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys) -> None:
    ckpt = Path(tiny_model_checkpoint)
    before = {p: sha256_file(p) for p in (ckpt, ckpt.with_suffix(".json"))}
    base = ["fit-metric", "--checkpoint", ckpt, "--data-root", tiny_dataset_root, "--dataset", "folder", "--kind", "xqda"]
    code, err = run(capsys, *base, "--out", ckpt)
    assert code == 2 and "is an input of this command" in one_message(err)
    other = tmp_path / "other" / "model.safetensors"
    other.parent.mkdir()
    shutil.copy(ckpt, other)
    shutil.copy(ckpt.with_suffix(".json"), other.with_suffix(".json"))
    code, err = run(capsys, *base, "--out", other)
    assert code == 2 and "is not a metricattack metric file" in one_message(err)
    assert {p: sha256_file(p) for p in before} == before and sha256_file(other) == before[ckpt]


def test_evaluate_out_never_overwrites_an_image_a_checkpoint_or_a_foreign_file(
    tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys
) -> None:
    ckpt = Path(tiny_model_checkpoint)
    image = next((tiny_dataset_root / "query").iterdir())
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    guarded = [image, ckpt.with_suffix(".json"), ckpt, notes]
    before = {p: p.read_bytes() for p in guarded}
    for target, message in [
        (image, "inside the source dataset"),
        (ckpt.with_suffix(".json"), "is an input of this command"),
        (ckpt, "is an input of this command"),
        (notes, "is not a metricattack evaluation results JSON"),
        (tmp_path, "is a folder"),
    ]:
        code, err = run(capsys, *evaluate_args(ckpt, tiny_dataset_root, "--out", target))
        assert code == 2 and message in one_message(err), target
    assert {p: p.read_bytes() for p in guarded} == before


def test_train_out_inside_the_dataset_is_refused_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    import metricattack.training.trainer as trainer

    data = handmade_dataset(tmp_path / "data", query=[(1, 1)], gallery=[(1, 2)])
    monkeypatch.setattr(trainer, "build_model", None)  # building a model would be work done before the check
    before = bytes_under(data)
    for out in (data, data / "runs"):
        code, err = run(capsys, "train", "--config", TRAIN_RECIPE, "--out", out, f"data.root={data}")
        assert code == 2 and "inside the source dataset" in one_message(err)
    assert bytes_under(data) == before


def test_copy_file_is_never_a_link(tmp_path) -> None:
    source = tmp_path / "a.jpg"
    source.write_bytes(b"source bytes")
    mode = source.stat().st_mode
    copy = tmp_path / "out" / "a.jpg"
    copy_file(source, copy)
    copy.chmod(0o600)
    with open(copy, "ab") as handle:
        handle.write(b" changed")
    assert source.read_bytes() == b"source bytes" and source.stat().st_mode == mode and source.stat().st_nlink == 1
    linked = tmp_path / "old" / "a.jpg"  # a hard link written by an earlier version is replaced by a copy
    linked.parent.mkdir()
    os.link(source, linked)
    copy_file(source, linked)
    assert not os.path.samefile(source, linked) and linked.read_bytes() == b"source bytes"


# ----------------------------------------------------------------------------- one message, before the work


@pytest.fixture(scope="module")
def command_lines(tiny_model_checkpoint, tiny_dataset_root) -> dict[str, list[object]]:
    """For each writing command, its arguments without ``--out``."""
    ckpt = Path(tiny_model_checkpoint)
    return {
        "synth": ["synth", "--train-ids", "2", "--test-ids", "2", "--cameras", "2", "--height", "32", "--width", "16"],
        "train": ["train", "--config", TRAIN_RECIPE, f"data.root={tiny_dataset_root}"],
        "attack": attack_args(ckpt, tiny_dataset_root, "")[:-3] + ["--no-progress"],
        "defend": ["defend", "--config", DEFENSE_RECIPE, f"train.data.root={tiny_dataset_root}"],
        "benchmark": ["benchmark", "--config", BENCHMARK_RECIPE],
        "evaluate": evaluate_args(ckpt, tiny_dataset_root),
        "fit-metric": ["fit-metric", "--checkpoint", ckpt, "--data-root", tiny_dataset_root, "--dataset", "folder", "--kind", "xqda"],
    }


def _with_out(line: list[object], out: Path) -> list[object]:
    if line[0] == "defend":  # its positional KEY=VALUE overrides come last
        return [line[0], line[1], line[2], "--out", out, *line[3:]]
    return [*line, "--out", out]


@pytest.mark.parametrize("command", ["synth", "train", "attack", "defend", "benchmark"])
def test_out_that_is_a_file_is_one_message(command, command_lines, tmp_path, capsys) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    code, err = run(capsys, *_with_out(command_lines[command], target))
    assert code == 2 and "a-file" in one_message(err) and "is a file" in err
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["synth", "train", "attack", "defend", "benchmark", "evaluate", "fit-metric"])
def test_out_in_a_read_only_folder_fails_before_the_work(command, command_lines, read_only_dir, capsys, monkeypatch) -> None:
    import metricattack.data.loading as loading

    monkeypatch.setattr(loading, "read_image", None)  # decoding any image would be work done before the check
    name = {"evaluate": "r.json", "fit-metric": "m.safetensors"}.get(command, "run")
    code, err = run(capsys, *_with_out(command_lines[command], read_only_dir / name))
    assert code == 2 and "cannot write in" in one_message(err) and str(read_only_dir) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available"), ("gpu0", "'gpu0'")])
def test_device_this_machine_lacks_is_one_message(device, message, tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys) -> None:
    for argv in (
        evaluate_args(tiny_model_checkpoint, tiny_dataset_root, "--device", device),
        attack_args(tiny_model_checkpoint, tiny_dataset_root, tmp_path / "adv", "--device", device),
    ):
        code, err = run(capsys, *argv)
        assert code == 2 and message in one_message(err)
    assert not (tmp_path / "adv").exists()


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels with almost no pixel data (decoders check the size first)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_a_400_megapixel_image_is_a_dataset_error(tiny_model_checkpoint, tmp_path, capsys) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    for reader in (read_image, image_size):
        with pytest.raises(DatasetError, match="bomb.png is larger than"):
            reader(bomb)
    data = handmade_dataset(tmp_path / "data", query=[(1, 1), (2, 1)], gallery=[(1, 2), (2, 2)])
    shutil.copy(bomb, next((data / "bounding_box_test").iterdir()))
    code, err = run(capsys, *evaluate_args(tiny_model_checkpoint, data))
    assert code == 2 and "is larger than" in one_message(err)


def test_fit_metric_checks_its_options_before_extracting_features(tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys, monkeypatch):
    import metricattack.evaluation.features as features

    monkeypatch.setattr(features, "extract_features", None)  # extraction is the work the checks must precede
    base = ["fit-metric", "--checkpoint", tiny_model_checkpoint, "--data-root", tiny_dataset_root, "--dataset", "folder", "--kind"]
    for extra, message in [
        (["xqda", "--dim", "0"], "dim must be between 1 and the feature dimension 512"),
        (["xqda", "--dim", "100000"], "dim must be between 1"),
        (["kissme", "--reg", "-1"], "reg must be a finite number >= 0"),
        (["xqda", "--reg", "inf"], "reg must be a finite number >= 0"),
        (["xqda", "--out", tmp_path / "metric.txt"], "must end with .safetensors"),
        (["xqda", "--batch-size", "0"], "batch size must be a positive integer"),
    ]:
        code, err = run(capsys, *base, *extra)
        assert code == 2 and message in one_message(err), extra


def test_train_checks_identities_per_batch_before_decoding_images(tiny_dataset_root, tmp_path, capsys, monkeypatch) -> None:
    import metricattack.training.data as training_data

    monkeypatch.setattr(training_data, "read_image", None)  # decoding (the fixture recipe caches every image) comes after
    argv = ["train", "--config", TRAIN_RECIPE, "--out", tmp_path / "run", f"data.root={tiny_dataset_root}"]
    code, err = run(capsys, *argv, "batch.batch_size=80")  # P = 80 / 4 = 20 identities, the tiny set has 16
    assert code == 2 and "20 identities per batch" in one_message(err) and "only 16 identities" in err
    assert str(tiny_dataset_root) in err and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- silently wrong


def test_16_bit_png_is_read_at_its_value_not_white(tmp_path) -> None:
    values = (np.arange(16 * 8, dtype=np.uint16).reshape(16, 8) * 500).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I;16")
    image = read_image(tmp_path / "gray16.png")
    expected = torch.from_numpy(np.rint(values / 257.0)).float() / 255
    assert image.shape == (3, 16, 8) and torch.equal(image[0], expected) and torch.equal(image[1], image[2])
    assert image.min() == 0 and image.max() < 1  # convert("RGB") clipped these to white


def test_no_cross_camera_match_is_an_error_not_zero(tiny_model_checkpoint, tmp_path, capsys) -> None:
    data = handmade_dataset(tmp_path / "data", query=[(1, 1), (2, 2)], gallery=[(1, 1), (2, 2), (3, 1)])
    config = tmp_path / "bench.yaml"
    recipe = yaml.safe_load(BENCHMARK_RECIPE.read_text())
    config.write_text(yaml.safe_dump({**recipe, "dataset": {"name": "folder", "root": str(data)}}))
    bench = ["benchmark", "--config", config, "--out", tmp_path / "run"]
    for argv in (evaluate_args(tiny_model_checkpoint, data), attack_args(tiny_model_checkpoint, data, tmp_path / "adv"), bench):
        code, err = run(capsys, *argv)
        assert code == 2 and "none of the 2 queries has a valid match" in one_message(err)
    assert not (tmp_path / "adv").exists()
    assert not list((tmp_path / "run").rglob("*.safetensors"))  # the benchmark stopped before training


def test_json_writer_refuses_nan_and_names_it(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"evaluations\[1\]\.mAP is not a finite number"):
        atomic_write_json(tmp_path / "r.json", {"evaluations": [{"mAP": 0.5}, {"mAP": float("nan")}]})
    with pytest.raises(ValueError, match=r"distance is not a finite"):
        atomic_write_json(tmp_path / "r.json", {"distance": np.float32("inf")})
    assert list(tmp_path.iterdir()) == []


def test_byte_identical_query_in_the_gallery_warns(tiny_model_checkpoint, tmp_path, capsys) -> None:
    data = handmade_dataset(tmp_path / "data", query=[(1, 1), (2, 1)], gallery=[(1, 2), (2, 2), (3, 2)])
    dataset = load_dataset("folder", data)
    assert warn_duplicate_images(dataset) == 0
    shutil.copy(dataset.query[0].path, data / "bounding_box_test" / "0001_c3s1_000099_g.jpg")  # same person, "another camera"
    with pytest.warns(DuplicateImageWarning, match="1 of 2 queries"):
        assert warn_duplicate_images(load_dataset("folder", data)) == 1
    code, err = run(capsys, *evaluate_args(tiny_model_checkpoint, data))
    assert code == 0 and "metricattack: warning: 1 of 2 queries" in err and "byte-identical" in err


def test_eps_nan_and_small_eps(tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="eps: Input should be a finite number"):
        make_spec(eps=float("nan"))
    assert make_spec(eps=0.5).resolved()["options"]["alpha"] == 0.5 and make_spec(eps=5).resolved()["options"]["alpha"] == 1.0
    base = attack_args(tiny_model_checkpoint, tiny_dataset_root, tmp_path / "adv")
    code, err = run(capsys, *base, "--eps", "nan")
    assert code == 2 and "finite number" in one_message(err)
    code, err = run(capsys, *base, "--eps", "0.5")
    assert code == 2 and "8-bit PNG" in one_message(err) and "alpha" not in err
    assert not (tmp_path / "adv").exists()


def test_attack_refuses_one_model_as_attacked_and_evaluated(tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys) -> None:
    """Issue #19 item 8: a copy of the attacked checkpoint as --eval-checkpoint would be a white-box row labelled black-box."""
    copy = tmp_path / "copy" / "model.safetensors"
    copy.parent.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(Path(tiny_model_checkpoint).with_suffix(suffix), copy.with_suffix(suffix))
    base = attack_args(tiny_model_checkpoint, tiny_dataset_root, tmp_path / "adv", "--method", "fgsm")
    sha = sha256_file(Path(tiny_model_checkpoint))[:16]
    for extra, role in ((["--eval-checkpoint", copy], "evaluated"), (["--checkpoint", copy], "attacked")):
        code, err = run(capsys, *base, *extra)
        message = one_message(err)
        assert code == 2 and f"are the same checkpoint (SHA-256 {sha}...)" in message, message
        assert f"copy/model.safetensors ({role})" in message and "list the model once" in message
    assert not (tmp_path / "adv").exists()


# ----------------------------------------------------------------------------- faults and concurrency


def test_second_attack_on_a_busy_folder_names_the_holder(tiny_model_checkpoint, tiny_dataset_root, tmp_path, capsys) -> None:
    out = tmp_path / "adv"
    with output_lock(out, "attack"):
        code, err = run(capsys, *attack_args(tiny_model_checkpoint, tiny_dataset_root, out, "--method", "fgsm"))
    message = one_message(err)
    assert code == 2 and "in use by metricattack attack" in message and f"pid {os.getpid()}" in message
    assert socket.gethostname() in message and "started 20" in message
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written besides the lock


def test_failed_attack_does_not_block_its_rerun_which_removes_leftovers(tiny_model_checkpoint, tmp_path, capsys) -> None:
    data = handmade_dataset(tmp_path / "data", query=[(1, 1), (2, 1), (3, 2)], gallery=[(1, 2), (2, 2), (3, 1), (1, 3), (4, 1)])
    victim = sorted((data / "bounding_box_test").iterdir())[2]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated
    out = tmp_path / "adv"
    argv = attack_args(tiny_model_checkpoint, data, out, "--method", "fgsm", "--eps", "2")
    code, err = run(capsys, *argv)
    assert code == 2 and victim.name in one_message(err)
    victim.write_bytes(good)  # fixed: the dataset's fingerprint is back, the run identity differs from the failed one
    leftover = out / "bounding_box_test" / f".{victim.name}.k1ll3d99.tmp"  # as left by kill -9
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"partial")
    code, err = run(capsys, *argv)
    assert code == 0, err
    assert not leftover.exists()
    source = sorted((data / "query").iterdir())[0]  # the unattacked splits are copies
    copy = out / "query" / source.name
    assert not os.path.samefile(source, copy) and os.stat(source).st_nlink == 1
    with open(copy, "ab") as handle:
        handle.write(b"appended")
    assert source.read_bytes() != copy.read_bytes()
    results = (out / "attack_results.json").read_text()
    assert "NaN" not in results and json.loads(results)["num_attacked"] > 0


def test_resumed_train_removes_its_own_leftovers(tiny_model_checkpoint) -> None:
    from conftest import fixture_train_config
    from metricattack.training import train

    run_dir = Path(tiny_model_checkpoint).parent
    leftover = run_dir / "checkpoints" / ".epoch-008.train-state.pt.dEaD1234.tmp"  # a kill -9 during the state write
    leftover.write_bytes(b"x" * 1000)
    root = Path(json.loads(Path(tiny_model_checkpoint).with_suffix(".json").read_text())["meta"]["dataset"]["root"])
    assert train(fixture_train_config(root, "resnet18"), run_dir) == Path(tiny_model_checkpoint)  # finished: nothing to redo
    assert not leftover.exists()


def test_leftover_removal_spares_files_being_written(tmp_path) -> None:
    (tmp_path / ".a.json.zzzz1111.tmp").write_text("dead")
    (tmp_path / ".hidden.tmp").write_text("not ours: too few dots")
    with atomic_path(tmp_path / "b.json") as live:
        live.write_text("being written")
        removed = remove_leftovers(tmp_path)
        assert live.exists()
    assert [p.name for p in removed] == [".a.json.zzzz1111.tmp"] and (tmp_path / ".hidden.tmp").exists()
    assert (tmp_path / "b.json").read_text() == "being written"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_join_times_out_naming_the_missing_rank(tiny_model_checkpoint, tiny_dataset_root, capsys, monkeypatch) -> None:
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", JOIN_TIMEOUT_ENV: "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    with pytest.raises(MetricAttackError, match=r"rank\(s\) 1 of 2 did not join"), process_group(torch.device("cpu")):
        pass
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    code, err = run(capsys, *evaluate_args(tiny_model_checkpoint, tiny_dataset_root))
    assert code == 2 and "rank(s) 1 of 2 did not join" in one_message(err) and JOIN_TIMEOUT_ENV in err
    monkeypatch.setenv(JOIN_TIMEOUT_ENV, "soon")
    code, err = run(capsys, *evaluate_args(tiny_model_checkpoint, tiny_dataset_root))
    assert code == 2 and f"{JOIN_TIMEOUT_ENV}='soon'" in one_message(err)


def test_options_found_in_the_audit_of_this_fix(tiny_dataset_root, tmp_path, capsys) -> None:
    """Cases found while fixing #12: a silently ignored worker count, and defense attacks whose
    eps < 1 would be rounded away when the images are saved (hours after the start)."""
    code, err = run(capsys, "synth", "--out", tmp_path / "s", "--workers", "0")
    assert code == 2 and "--workers must be a positive integer" in one_message(err) and not (tmp_path / "s").exists()
    defend = ["defend", "--config", DEFENSE_RECIPE, "--out", tmp_path / "d", f"train.data.root={tiny_dataset_root}"]
    code, err = run(capsys, *defend, "evaluation.adaptive.epsilons=[0.5, 2]")
    assert code == 2 and "rounded to 8 bits" in one_message(err) and "[0.5]" in err
    code, err = run(capsys, *defend, "training_attack.attack={method: fgsm, eps: 0.5}")
    assert code == 2 and "8-bit PNG" in one_message(err) and not (tmp_path / "d").exists()
