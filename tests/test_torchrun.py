"""Commands under ``torchrun``: two CPU processes (Gloo) shard the work and give the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metricattack.cli import main

ATTACK = ["--method", "ifgsm", "--eps", "4", "--method-option", "steps=2", "--batch-size", "8", "--no-progress"]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m metricattack ...`` on one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "metricattack", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


FEATURES_SCRIPT = """
import sys
import torch
from metricattack.data.layouts import load_dataset
from metricattack.distributed import is_main_process, process_group
from metricattack.evaluation.features import extract_features
from metricattack.models.checkpoint import load_model

checkpoint, root, batch_size, out = sys.argv[1:]
with process_group(torch.device("cpu")):
    data = load_dataset("folder", root)
    model = load_model(checkpoint)
    features = {split: extract_features(model, data.split(split), int(batch_size), progress=False) for split in ("query", "gallery")}
    if is_main_process():
        torch.save(features, out)
"""


def splits_one_image_off(count: int, batch_size: int) -> bool:
    """True when sharding ``count`` images image by image over 2 ranks (the rule before whole
    batches) leaves a rank a batch of one image that the one-process batching does not have."""
    return count % batch_size != 1 and any(len(range(r, count, 2)) % batch_size == 1 for r in (0, 1))


def attacked_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "bounding_box_test").iterdir())}


def test_features_under_torchrun_equal_one_process_byte_for_byte(
    tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path
) -> None:
    """Each rank extracts whole batches of the one-process batching, so every image is computed in
    the same batch (a one-image batch runs other kernels: its features differ in the last bits)."""
    from metricattack.data.layouts import load_dataset
    from metricattack.evaluation.features import extract_features
    from metricattack.models.checkpoint import load_model

    data = load_dataset("folder", tiny_dataset_root)
    assert splits_one_image_off(len(data.gallery), 8)  # the case sharding by image got wrong
    (tmp_path / "extract.py").write_text(FEATURES_SCRIPT, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "extract.py"]
    done = subprocess.run(
        [*cmd, str(tiny_model_checkpoint), str(tiny_dataset_root), "8", "sharded.pt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=True)
    model = load_model(tiny_model_checkpoint)
    for split in ("query", "gallery"):
        single = extract_features(model, data.split(split), 8, progress=False)
        assert sharded[split].dtype == single.dtype and sharded[split].numpy().tobytes() == single.numpy().tobytes(), split


def test_attack_under_torchrun_equals_one_process(tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path) -> None:
    common = ["attack", "--checkpoint", str(tiny_model_checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder", *ATTACK]
    assert splits_one_image_off(82, 8)  # the tiny gallery: 82 images, --batch-size 8
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    done = torchrun(*common, "--out", str(tmp_path / "sharded"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adversarial dataset written to") == 1  # only rank 0 reports
    shards = sorted(p.name for p in (tmp_path / "sharded" / ".attack" / "batches").iterdir())
    assert shards == ["rank0-of2", "rank1-of2"]
    assert all(any((tmp_path / "sharded" / ".attack" / "batches" / s).glob("*.json")) for s in shards)
    assert attacked_bytes(tmp_path / "sharded") == attacked_bytes(tmp_path / "single")
    one, two = (json.loads((tmp_path / n / "attack_results.json").read_text()) for n in ("single", "sharded"))
    for key in ("clean", "adversarial_disk", "adversarial_memory"):
        assert two["evaluations"][0][key] == one["evaluations"][0][key]
    assert json.loads((tmp_path / "sharded" / "manifest.json").read_text())["world_size"] == 2


@pytest.mark.parametrize(
    "command, options",
    [("synth", ["--train-ids", "2", "--test-ids", "2"]), ("defend", ["--config", "d.yaml"]), ("benchmark", ["--config", "b.yaml"])],
)
def test_single_process_commands_refuse_torchrun(
    command: str, options: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """What a rank of ``torchrun --nproc_per_node 2`` sees (its environment), in this process: the
    command stops before any work instead of repeating it on every rank (real launches: above and below)."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert main([command, *options, "--out", str(tmp_path / "out")]) == 2
    assert f"'{command}' runs in one process; start it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_under_torchrun_equals_one_process(tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path) -> None:
    common = [
        "evaluate",
        "--checkpoint",
        str(tiny_model_checkpoint),
        "--data-root",
        str(tiny_dataset_root),
        "--dataset",
        "folder",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "single.json")]) == 0
    done = torchrun(*common, "--out", str(tmp_path / "sharded.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "sharded"))
    assert two["results"] == one["results"]  # the same features, so the same numbers exactly
    assert one["options"]["world_size"] == 1 and two["options"]["world_size"] == 2  # the images were sharded


def test_fit_metric_under_torchrun_equals_one_process(tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    common = [
        "fit-metric",
        "--checkpoint",
        str(tiny_model_checkpoint),
        "--data-root",
        str(tiny_dataset_root),
        "--dataset",
        "folder",
        "--kind",
        "xqda",
        "--batch-size",
        "8",
    ]
    assert main([*common, "--out", str(tmp_path / "single.safetensors")]) == 0
    done = torchrun(*common, "--out", str(tmp_path / "sharded.safetensors"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("single", "sharded"))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key  # the same features (whole batches), so the same fit
    sidecars = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "sharded"))
    assert [s["meta"]["world_size"] for s in sidecars] == [1, 2]


def test_train_under_torchrun_uses_distributed_data_parallel(tiny_dataset_root: Path, tmp_path: Path) -> None:
    from metricattack.models.checkpoint import checkpoint_meta, load_model

    recipe = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "tiny-fixture.yaml"
    done = torchrun(
        "train",
        "--config",
        str(recipe),
        "--out",
        str(tmp_path / "ddp"),
        f"data.root={tiny_dataset_root}",
        "schedule.epochs=2",
        "schedule.lr_steps=[]",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = checkpoint_meta(tmp_path / "ddp" / "model.safetensors")["meta"]
    assert meta["world_size"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2]
    model = load_model(tmp_path / "ddp" / "model.safetensors")
    assert torch.isfinite(model(torch.rand(2, 3, 128, 64))).all()


def _claim_with_a_late_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """Rank 1 reaches ``claim_run`` a second after rank 0, then both meet in one more barrier."""
    import datetime
    import time

    import torch.distributed as dist

    from metricattack.attacks.writer import claim_run

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    try:
        if rank == 1:
            time.sleep(1.0)
        claim_run(Path(out), {"key": "k"})
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_claiming_an_attack_run_keeps_ranks_in_step(tmp_path: Path) -> None:
    """Regression: a late rank found the run record rank 0 had just written, skipped the barrier
    and left rank 0 waiting in a collective the other rank never joined (a hang under torchrun)."""
    import torch.multiprocessing as mp

    mp.spawn(_claim_with_a_late_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    assert json.loads((tmp_path / "out" / ".attack" / "run.json").read_text()) == {"key": "k"}


INVARIANT_NET = '''
"""Each image's features (and input gradient) bit for bit independent of its batch: per-image weighted sums."""
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 8, 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        z = torch.tanh(3 * F.interpolate(x, size=(8, 4), mode="bilinear", align_corners=False, antialias=True) - 1.5)
        return F.normalize((z.unsqueeze(1) * self.weight).sum((2, 3, 4)), dim=1)


def build():
    return Net().eval()
'''


def test_robustness_under_torchrun_equals_one_process(tiny_dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "invariant_net.py").write_text(INVARIANT_NET, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["robustness", "--model", "python:invariant_net:build", "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    common += ["--version", "smoke", "--batch-size", "4"]
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    done = torchrun(*common, "--out", str(tmp_path / "sharded"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("written to") == 1  # only rank 0 reports
    one, two = (json.loads((tmp_path / n / "robustness.json").read_text()) for n in ("single", "sharded"))
    assert two["robust"] == one["robust"] and two["references"] == one["references"] and two["sweep"] == one["sweep"]
    assert two["gallery"] == one["gallery"] and one["gallery"]["attacked"] > 0  # the gallery side's batches sharded too
    assert two["cost"]["forwards"] == one["cost"]["forwards"]


def _gather_uneven(rank: int, world: int, init_file: str, out: str) -> None:
    """Rank 0 holds rows 3, 0 and 2 (in that order), rank 1 row 1; then rank 1 holds none (a rank left without a batch)."""
    import datetime

    import torch.distributed as dist

    from metricattack.distributed import gather_indexed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    try:
        if rank == 0:
            rows, indices = torch.tensor([[3.0, 30.0], [0.0, 0.5], [2.0, 20.0]]), torch.tensor([3, 0, 2])
        else:
            rows, indices = torch.tensor([[1.0, 10.0]]), torch.tensor([1])
        full = gather_indexed(rows, indices, 4)
        alone = (full, torch.arange(4)) if rank == 0 else (torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
        empty = gather_indexed(*alone, 4)
        if rank == 1:
            torch.save({"full": full, "empty": empty}, out)
    finally:
        dist.destroy_process_group()


def test_gather_indexed_places_rows_by_index_from_uneven_ranks(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from metricattack.distributed import gather_indexed

    mp.spawn(_gather_uneven, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(got["full"], torch.tensor([[0.0, 0.5], [1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]))
    assert torch.equal(got["empty"], got["full"])  # rank 1 had no rows
    # one process: the rows placed by their indices
    assert torch.equal(gather_indexed(torch.tensor([[1.0], [0.0]]), torch.tensor([1, 0]), 2), torch.tensor([[0.0], [1.0]]))
