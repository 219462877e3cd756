"""Commands under ``torchrun``: two CPU processes (Gloo) shard the work and give the single-process result.

A torchrun launch costs three fresh interpreters (~4 s of CPU each to import torch and metricattack),
so every command here shares one launch (the module fixture ``sharded``): its script makes the process
group from torchrun's environment (``metricattack.distributed.process_group``, as every command does)
and calls the CLI's ``main`` once per command on each rank, inside that group, for feature extraction,
``attack``, ``evaluate``, ``fit-metric`` and ``robustness``; then, after that group has ended, ``train``,
whose ``main`` makes its own group from torchrun's environment, as ``torchrun -m metricattack train`` does,
and the checks of claiming an attack run and gathering rows (:func:`_claim_then_gather`).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metricattack.cli import main

ATTACK = ["--method", "ifgsm", "--eps", "4", "--method-option", "steps=2", "--batch-size", "8", "--no-progress"]


def torchrun(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (``-m metricattack ...`` or a script) on one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


SHARDED_SCRIPT = """
import contextlib
import io
import json
import os
import sys
import torch
from metricattack.cli import main
from metricattack.data.layouts import load_dataset
from metricattack.distributed import is_main_process, process_group
from metricattack.evaluation.features import extract_features
from metricattack.models.checkpoint import load_model

checkpoint, root, commands, alone = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])


def run(name, argv):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    with open(f"{name}.rank{os.environ['RANK']}.json", "w", encoding="utf-8") as f:
        json.dump({"code": code, "stdout": printed.getvalue()}, f)


with process_group(torch.device("cpu")):  # one group for these commands; main() uses it (its own group would be a no-op)
    data = load_dataset("folder", root)
    model = load_model(checkpoint)
    features = {split: extract_features(model, data.split(split), 8, progress=False) for split in ("query", "gallery")}
    if is_main_process():
        torch.save(features, "features.pt")
    for name, argv in commands.items():
        run(name, argv)
for name, argv in alone.items():  # no group any more: main() makes its own, as `torchrun -m metricattack ...` does
    run(name, argv)
try:  # claim_then_gather.py: a group of its own (20 s timeout), so a missed collective fails it, not the whole launch
    from claim_then_gather import _claim_then_gather

    _claim_then_gather(int(os.environ["RANK"]), 2, os.path.abspath("claim-init"), os.path.abspath("claim"))
    claimed = {"done": True}
except Exception as exc:
    claimed = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
with open(f"claim.rank{os.environ['RANK']}.json", "w", encoding="utf-8") as f:
    json.dump(claimed, f)
try:  # one more group in the same processes, as a script calling commands one after the other makes
    with process_group(torch.device("cpu")):
        total = torch.tensor([float(os.environ["RANK"]) + 1.0])
        torch.distributed.all_reduce(total)
        second = {"sum": total.item()}
except Exception as exc:
    second = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
with open(f"second-group.rank{os.environ['RANK']}.json", "w", encoding="utf-8") as f:
    json.dump(second, f)
"""


def splits_one_image_off(count: int, batch_size: int) -> bool:
    """True when sharding ``count`` images image by image over 2 ranks (the rule before whole
    batches) leaves a rank a batch of one image that the one-process batching does not have."""
    return count % batch_size != 1 and any(len(range(r, count, 2)) % batch_size == 1 for r in (0, 1))


def attacked_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "bounding_box_test").iterdir())}


def common_args(command: str, checkpoint: Path, root: Path) -> list[str]:
    return [command, "--checkpoint", str(checkpoint), "--data-root", str(root), "--dataset", "folder"]


def robustness_args(root: Path) -> list[str]:
    return ["robustness", "--model", "python:invariant_net:build", "--data-root", str(root), "--dataset", "folder", "--version", "smoke"]


SHARDED_COMMANDS = {  # name -> the command's arguments but --out (the same in the one-process runs)
    "attack": lambda ckpt, root: [*common_args("attack", ckpt, root), *ATTACK],
    "evaluate": lambda ckpt, root: [*common_args("evaluate", ckpt, root), "--batch-size", "8", "--no-progress"],
    "fit-metric": lambda ckpt, root: [*common_args("fit-metric", ckpt, root), "--kind", "xqda", "--batch-size", "8"],
    "robustness": lambda ckpt, root: [*robustness_args(root), "--batch-size", "4"],
}
SHARDED_OUT = {"attack": "attack", "evaluate": "evaluate.json", "fit-metric": "fit-metric.safetensors", "robustness": "robustness"}
TRAIN_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "tiny-fixture.yaml"
ALONE_COMMANDS = {  # name -> arguments of a command run after the shared group has ended, in a group of its own
    "train": lambda root, out: (
        ["train", "--config", str(TRAIN_RECIPE), "--out", str(out), f"data.root={root}", "schedule.epochs=2"] + ["schedule.lr_steps=[]"]
    ),
}
ALONE_OUT = {"train": "ddp"}


@pytest.fixture(scope="module")
def sharded(tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of one ``torchrun --nproc_per_node 2`` launch of ``SHARDED_SCRIPT``: ``features.pt``
    (query and gallery features, batches of 8), each command's output (``SHARDED_OUT``, ``ALONE_OUT``) and,
    per command and rank, ``NAME.rankR.json`` (its exit status and what it printed); ``claim/`` and, per rank,
    ``claim.rankR.json``: what :func:`_claim_then_gather` left."""
    folder = tmp_path_factory.mktemp("sharded")
    (folder / "sharded.py").write_text(SHARDED_SCRIPT, encoding="utf-8")
    (folder / "invariant_net.py").write_text(INVARIANT_NET, encoding="utf-8")
    (folder / "claim_then_gather.py").write_text("from pathlib import Path\n\nimport torch\n\n\n" + inspect.getsource(_claim_then_gather))
    (folder / "claim").mkdir()
    commands = {
        n: [*args(tiny_model_checkpoint, tiny_dataset_root), "--out", str(folder / SHARDED_OUT[n])] for n, args in SHARDED_COMMANDS.items()
    }
    alone = {n: args(tiny_dataset_root, folder / ALONE_OUT[n]) for n, args in ALONE_COMMANDS.items()}
    arguments = (str(tiny_model_checkpoint), str(tiny_dataset_root), json.dumps(commands), json.dumps(alone))
    done = torchrun("sharded.py", *arguments, cwd=folder, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_a_second_process_group_in_the_same_processes_works(sharded: Path) -> None:
    """After the first group ends, later ones (the next commands of a script: ``train``'s own, then this
    one) join; this one all-reduces (1 + 2 over the two ranks). A later group once read the first
    group's stale addresses and was refused."""
    assert [json.loads((sharded / f"second-group.rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)] == [{"sum": 3.0}] * 2


def sharded_run(sharded: Path, name: str) -> tuple[Path, list[str]]:
    """``name``'s output under torchrun and what each rank printed, after checking that it exited 0 on both ranks."""
    ranks = [json.loads((sharded / f"{name}.rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert [r["code"] for r in ranks] == [0, 0]
    return sharded / {**SHARDED_OUT, **ALONE_OUT}[name], [r["stdout"] for r in ranks]


def test_features_under_torchrun_equal_one_process_byte_for_byte(
    sharded: Path, tiny_model_checkpoint: Path, tiny_dataset_root: Path
) -> None:
    """Each rank extracts whole batches of the one-process batching, so every image is computed in
    the same batch (a one-image batch runs other kernels: its features differ in the last bits)."""
    from metricattack.data.layouts import load_dataset
    from metricattack.evaluation.features import extract_features
    from metricattack.models.checkpoint import load_model

    data = load_dataset("folder", tiny_dataset_root)
    assert splits_one_image_off(len(data.gallery), 8)  # the case sharding by image got wrong
    sharded_features = torch.load(sharded / "features.pt", weights_only=True)
    model = load_model(tiny_model_checkpoint)
    for split in ("query", "gallery"):
        single = extract_features(model, data.split(split), 8, progress=False)
        assert sharded_features[split].dtype == single.dtype, split
        assert sharded_features[split].numpy().tobytes() == single.numpy().tobytes(), split


def test_attack_under_torchrun_equals_one_process(
    sharded: Path, tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path
) -> None:
    assert splits_one_image_off(82, 8)  # the tiny gallery: 82 images, --batch-size 8
    assert main([*SHARDED_COMMANDS["attack"](tiny_model_checkpoint, tiny_dataset_root), "--out", str(tmp_path / "single")]) == 0
    out, printed = sharded_run(sharded, "attack")
    assert [p.count("adversarial dataset written to") for p in printed] == [1, 0]  # only rank 0 reports
    shards = sorted(p.name for p in (out / ".attack" / "batches").iterdir())
    assert shards == ["rank0-of2", "rank1-of2"]
    assert all(any((out / ".attack" / "batches" / s).glob("*.json")) for s in shards)
    assert attacked_bytes(out) == attacked_bytes(tmp_path / "single")
    one, two = (json.loads((folder / "attack_results.json").read_text()) for folder in (tmp_path / "single", out))
    for key in ("clean", "adversarial_disk", "adversarial_memory"):
        assert two["evaluations"][0][key] == one["evaluations"][0][key]
    assert json.loads((out / "manifest.json").read_text())["world_size"] == 2


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


def test_evaluate_under_torchrun_equals_one_process(
    sharded: Path, tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path
) -> None:
    assert main([*SHARDED_COMMANDS["evaluate"](tiny_model_checkpoint, tiny_dataset_root), "--out", str(tmp_path / "single.json")]) == 0
    one, two = (json.loads(path.read_text()) for path in (tmp_path / "single.json", sharded_run(sharded, "evaluate")[0]))
    assert two["results"] == one["results"]  # the same features, so the same numbers exactly
    assert one["options"]["world_size"] == 1 and two["options"]["world_size"] == 2  # the images were sharded


def test_fit_metric_under_torchrun_equals_one_process(
    sharded: Path, tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    single = tmp_path / "single.safetensors"
    assert main([*SHARDED_COMMANDS["fit-metric"](tiny_model_checkpoint, tiny_dataset_root), "--out", str(single)]) == 0
    two_path = sharded_run(sharded, "fit-metric")[0]
    one, two = load_file(str(single)), load_file(str(two_path))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key  # the same features (whole batches), so the same fit
    sidecars = (json.loads(path.with_suffix(".json").read_text()) for path in (single, two_path))
    assert [s["meta"]["world_size"] for s in sidecars] == [1, 2]


def test_train_under_torchrun_uses_distributed_data_parallel(sharded: Path) -> None:
    from metricattack.models.checkpoint import checkpoint_meta, load_model

    out, _ = sharded_run(sharded, "train")
    meta = checkpoint_meta(out / "model.safetensors")["meta"]
    assert meta["world_size"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2]
    model = load_model(out / "model.safetensors")
    assert torch.isfinite(model(torch.rand(2, 3, 128, 64))).all()


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


def test_robustness_under_torchrun_equals_one_process(
    sharded: Path, tiny_dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "invariant_net.py").write_text(INVARIANT_NET, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main([*SHARDED_COMMANDS["robustness"](Path(), tiny_dataset_root), "--out", str(tmp_path / "single")]) == 0
    out, printed = sharded_run(sharded, "robustness")
    assert [p.count("written to") for p in printed] == [1, 0]  # only rank 0 reports
    one, two = (json.loads((folder / "robustness.json").read_text()) for folder in (tmp_path / "single", out))
    assert two["robust"] == one["robust"] and two["references"] == one["references"] and two["sweep"] == one["sweep"]
    assert two["gallery"] == one["gallery"] and one["gallery"]["attacked"] > 0  # the gallery side's batches sharded too
    assert two["cost"]["forwards"] == one["cost"]["forwards"]


def _claim_then_gather(rank: int, world: int, init_file: str, folder: str) -> None:
    """Claiming an attack run: rank 1 reaches ``claim_run`` a second after rank 0, then both meet in
    one more barrier. Gathering: rank 0 holds rows 3, 0 and 2 (in that order), rank 1 row 1; then
    rank 1 holds none (a rank left without a batch). Run on each rank of the shared launch (``sharded``,
    its source copied beside the script: a fresh interpreter costs seconds of CPU) in a Gloo group of its
    own: a rank that misses a collective leaves the other waiting until the group's 20 s timeout, and it fails."""
    import datetime
    import time

    import torch.distributed as dist

    from metricattack.attacks.writer import claim_run
    from metricattack.distributed import gather_indexed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    try:
        if rank == 1:
            time.sleep(1.0)
        claim_run(Path(folder) / "out", {"key": "k"})
        dist.barrier()
        if rank == 0:
            rows, indices = torch.tensor([[3.0, 30.0], [0.0, 0.5], [2.0, 20.0]]), torch.tensor([3, 0, 2])
        else:
            rows, indices = torch.tensor([[1.0, 10.0]]), torch.tensor([1])
        full = gather_indexed(rows, indices, 4)
        alone = (full, torch.arange(4)) if rank == 0 else (torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
        empty = gather_indexed(*alone, 4)
        if rank == 1:
            torch.save({"full": full, "empty": empty}, Path(folder) / "gathered.pt")
    finally:
        dist.destroy_process_group()


def test_claiming_an_attack_run_keeps_ranks_in_step(sharded: Path) -> None:
    """Regression: a late rank found the run record rank 0 had just written, skipped the barrier
    and left rank 0 waiting in a collective the other rank never joined (a hang under torchrun)."""
    assert [json.loads((sharded / f"claim.rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)] == [{"done": True}] * 2
    assert json.loads((sharded / "claim" / "out" / ".attack" / "run.json").read_text()) == {"key": "k"}


def test_gather_indexed_places_rows_by_index_from_uneven_ranks(sharded: Path) -> None:
    from metricattack.distributed import gather_indexed

    got = torch.load(sharded / "claim" / "gathered.pt", weights_only=True)
    assert torch.equal(got["full"], torch.tensor([[0.0, 0.5], [1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]))
    assert torch.equal(got["empty"], got["full"])  # rank 1 had no rows
    # one process: the rows placed by their indices
    assert torch.equal(gather_indexed(torch.tensor([[1.0], [0.0]]), torch.tensor([1, 0]), 2), torch.tensor([[0.0], [1.0]]))
