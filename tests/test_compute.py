"""Precision and GPU switches (metricattack.compute): low-precision attacks stay exactly within ε, the
precision is recorded, bad values are refused, fp16 trains with a loss scaler on CPU, fp32 changes
nothing, and ``--batch-size auto`` finds the largest batch (a fake out-of-memory stands in for a GPU)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import metricattack as ma
from metricattack.attacks.ops import quantize
from metricattack.cli import main
from metricattack.compute import Compute, active, largest_batch, model_trial, resolve_batch_size
from metricattack.errors import ConfigError, MetricAttackError
from metricattack.stages import StageSpec
from metricattack.training.config import TrainConfig
from metricattack.training.trainer import run_epoch


class TinyNet(nn.Module):
    """Images [B,3,H,W] → features [B,8]; remembers the dtype its convolution computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 8))
        self.seen: list[torch.dtype] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(images)
        self.seen.append(hidden.dtype)
        return self.head(hidden)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    images = (torch.randint(0, 256, (4, 3, 24, 12), generator=gen).float() / 255.0).clamp(0, 1)
    return images, torch.randn(4, 3, 8, generator=gen)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_low_precision_attack_is_within_eps_and_restores_the_model(precision: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net, (images, refs) = TinyNet(), _batch()
    atk = ma.MetricAttack(net, eps=5, precision=precision)
    adv = atk(images, refs)
    assert net.seen.count(dtype) == int(atk.counts.forward[0]) == 6  # every attack step's network ran in the low precision ...
    assert adv.dtype == torch.float32  # ... the attack's images did not
    assert float((adv - images).abs().max()) <= 5 / 255 + 1e-7 and 0 <= float(adv.min()) and float(adv.max()) <= 1  # float32 rounding
    assert bool((adv != images).any()) and int(atk.counts.zero_gradient.sum()) == 0
    saved = quantize(adv, images, 5).long() - (images * 255).round().long()
    assert int(saved.abs().max()) <= 5  # saved 8-bit images: within eps exactly
    assert "forward" not in net.__dict__ and f"precision='{precision}'" in repr(atk)  # the model is the user's again
    net.seen.clear()
    net(images)
    assert net.seen == [torch.float32]


def test_fp32_changes_nothing() -> None:
    torch.manual_seed(0)
    net, (images, refs) = TinyNet(), _batch()
    plain = ma.MetricAttack(net, eps=5)(images, refs)
    assert torch.equal(ma.MetricAttack(net, eps=5, precision="fp32")(images, refs), plain)
    spec, data = StageSpec("attack", "x", {"a": 1}, threads=1), StageSpec("dataset", "x", {"a": 1}, threads=1)
    assert Compute().key() == {} and active() == Compute()
    with Compute(precision="fp32").activate():
        assert StageSpec("attack", "x", {"a": 1}, threads=1).key == spec.key  # keys made before compute existed stay valid
    with Compute(precision="bf16").activate():
        assert StageSpec("attack", "x", {"a": 1}, threads=1).key != spec.key
        assert StageSpec("dataset", "x", {"a": 1}, threads=1, compute={}).key == data.key  # a stage that runs no model
    cfg = {
        "data": {"dataset": "folder", "root": "x"},
        "model": {"backbone": "resnet18"},
        "loss": {"cross_entropy": {}},
        "schedule": {"epochs": 1},
    }
    assert "compute" not in TrainConfig.model_validate(cfg).model_dump()
    assert TrainConfig.model_validate(cfg | {"compute": {"precision": "fp16"}}).result_defining()["compute"]["precision"] == "fp16"


def test_bad_precision_is_refused(tiny_dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MetricAttackError, match="precision.*'fp32', 'bf16' or 'fp16'"):
        ma.MetricAttack(TinyNet(), precision="fp8")
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "attack",
                "--checkpoint",
                "x",
                "--data-root",
                str(tiny_dataset_root),
                "--dataset",
                "folder",
                "--out",
                str(tmp_path / "o"),
                "--precision",
                "fp8",
            ]
        )
    assert stop.value.code == 2 and "--precision: invalid choice: 'fp8'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_compute_in_configs_and_command_lines() -> None:
    from argparse import Namespace

    from metricattack.benchmark.config import load_benchmark_config
    from metricattack.compute import compute_overrides

    given = Namespace(precision="bf16", channels_last=True, cudnn_benchmark=False)
    assert compute_overrides(given, "train.compute") == ["train.compute.precision=bf16", "train.compute.channels_last=true"]
    assert compute_overrides(Namespace(precision=None, channels_last=False, cudnn_benchmark=False)) == []  # the config's stays
    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    assert "compute" not in load_benchmark_config(quickstart, [], None).model_dump(mode="json")  # fp32: results.json as before
    bf16 = load_benchmark_config(quickstart, ["compute.precision=bf16"], None)
    assert bf16.model_dump(mode="json")["compute"]["precision"] == "bf16"
    with pytest.raises(ConfigError, match="models.B1.train.compute: set compute at the top level"):
        load_benchmark_config(quickstart, ["models.B1.train.compute.precision=bf16"], None)
    with pytest.raises(MetricAttackError, match="precision"):
        ma.evaluate_robustness(TinyNet(), None, precision="half")  # type: ignore[arg-type]


def test_fp16_training_step_with_a_loss_scaler_on_cpu() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    compute = Compute(precision="fp16")
    step = compute.prepare(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = compute.scaler("cpu")
    before = [p.detach().clone() for p in net.parameters()]
    images, _ = _batch()
    labels = torch.tensor([0, 1, 2, 3])

    def objective(
        step: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int, number: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = step(x)
        assert features.dtype == torch.float32  # the loss is computed in float32
        loss = nn.functional.cross_entropy(features, y)
        return loss, {"cross_entropy": loss}

    class Bar:
        disable = True

        def update(self, n: int) -> None:
            pass

    stats = run_epoch(step, [(images, labels)] * 3, optimizer, objective, torch.device("cpu"), Bar(), 1, scaler)  # type: ignore[arg-type]
    assert scaler.is_enabled() and set(net.seen) == {torch.float16}
    assert torch.isfinite(torch.tensor(stats["loss"])) and stats["images"] == 12
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))  # a step was taken (not all skipped)


def test_fp16_attack_gradient_scale_backs_off_on_overflow() -> None:
    x = torch.full((2, 3), 0.5, requires_grad=True)
    losses = (x.half() * 30000.0).float().sum(1)  # the backward through fp16 overflows at every loss scale above 2
    grad = Compute(precision="fp16").input_gradient(losses, x)
    assert grad.dtype == torch.float32 and torch.equal(grad, torch.full((2, 3), 30000.0))
    tiny = (x.half() * 1e-4).float().sum(1)  # an fp16 gradient of 1e-4 / 2**12 would underflow without the scale
    assert torch.allclose(Compute(precision="fp16").input_gradient(tiny * 2.0**-12, x), torch.full((2, 3), 1e-4 * 2.0**-12), rtol=1e-3)


def test_channels_last_is_applied_and_undone() -> None:
    torch.manual_seed(0)
    net, (images, _) = TinyNet(), _batch()
    plain = net(images)
    with Compute(channels_last=True).applied([net]):
        assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(net(images), plain, atol=1e-5)
    assert net.conv.weight.is_contiguous() and "forward" not in net.__dict__


def test_batch_size_auto_with_a_fake_out_of_memory(caplog: pytest.LogCaptureFixture) -> None:
    tried: list[int] = []

    def trial(b: int) -> None:
        tried.append(b)
        if b > 37:
            raise torch.OutOfMemoryError("fake: CUDA out of memory")

    assert largest_batch(trial, start=8, limit=1000) == 37
    assert tried[:4] == [8, 16, 32, 64] and len(tried) <= 10  # doubling, then bisection
    assert largest_batch(trial, start=64, limit=20) == 20  # never beyond the images there are
    assert resolve_batch_size("auto", 32, "cuda", trial, limit=500) == 37  # the search needs no real GPU
    with pytest.raises(ConfigError, match="not even one image fits"):
        largest_batch(lambda b: trial(b + 100), start=8, limit=100)
    tried.clear()
    with caplog.at_level(logging.WARNING, logger="metricattack"):
        assert resolve_batch_size("auto", 32, "cpu", trial, limit=500) == 32
    assert not tried and "no GPU memory to fill; using the default batch size 32" in caplog.text
    assert resolve_batch_size(12, 32, "cuda", trial, limit=500) == 12 and not tried
    model_trial([TinyNet()], (24, 12), "cpu", backward=True)(3)  # what a real search runs: forward + input backward


def test_attack_command_records_precision(tiny_dataset_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "adv"
    args = [
        "attack",
        "--model",
        "python:own_reid_net:build",
        "--data-root",
        str(tiny_dataset_root),
        "--dataset",
        "folder",
    ]  # a tiny network
    assert (
        main([*args, "--out", str(out), "--method", "fgsm", "--eps", "3", "--precision", "bf16", "--batch-size", "auto", "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    results = json.loads((out / "attack_results.json").read_text())
    assert results["compute"] == {"precision": "bf16", "channels_last": False, "cudnn_benchmark": False}
    assert results["linf_255"]["max_disk"] <= 3 and "| compute: bf16" in printed
    assert json.loads((out / ".attack" / "run.json").read_text())["compute"] == {"precision": "bf16"}
    # the same folder with another precision is another run: refused while it holds this one's batches
    assert main([*args, "--out", str(out), "--method", "fgsm", "--eps", "3", "--no-progress"]) == 2
