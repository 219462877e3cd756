"""Universal perturbations: ``train_universal`` / ``metricattack universal`` and the ``uap`` method.

δ stays within ε, the δ an attack adds is the saved one, a killed training resumes to the same
bytes, the record names what was trained on, and bad requests are refused before any output with
one message. What every method shares (ε-ball, batching, resume of the attack) is in
``test_attack_contract.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from metricattack.attacks.engine import attack_batches, clean_features, plan_attack
from metricattack.attacks.export import ModelEntry, export_attack
from metricattack.attacks.spec import AttackSpec
from metricattack.attacks.universal import DELTA_FILE, PICTURE_FILE, RECORD_FILE, UniversalConfig, load_delta, save_delta, train_universal
from metricattack.cli import main
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.data.types import ReIDDataset
from metricattack.errors import ConfigError, MetricAttackError
from metricattack.metrics.distance import EuclideanMetric


class TinyNet(nn.Module):
    """Resize to 8x4, a pixel-wise non-linearity and per-image weighted sums; L2-normalised 6-d features."""

    input_size = (8, 4)
    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 8, 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(3 * F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True) - 1.5)
        return F.normalize((z.unsqueeze(1) * self.weight).sum((2, 3, 4)), dim=1)


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> ReIDDataset:
    """3 training and 4 test identities x 2 cameras x 2 images at 32x16."""
    cfg = SynthConfig(seed=3, num_train_ids=3, num_test_ids=4, num_cameras=2, images_per_camera=2, height=32, width=16)
    return load_dataset("folder", generate(tmp_path_factory.mktemp("micro") / "micro", cfg))


CFG = UniversalConfig(eps=6, epochs=2, batch_size=5, seed=4)


def train(out: Path, dataset: ReIDDataset, cfg: UniversalConfig = CFG, **kwargs) -> dict:
    return train_universal([TinyNet().eval()], EuclideanMetric(), dataset, out, cfg, **kwargs)


def test_delta_stays_within_eps_and_is_recorded_with_its_picture(micro: ReIDDataset, tmp_path: Path) -> None:
    record = train(tmp_path / "uap", micro)
    delta, eps = load_delta(tmp_path / "uap" / DELTA_FILE)
    assert eps == 6 and delta.shape == (3, 8, 4) and float(delta.abs().max()) <= 6 / 255 + 1e-7
    assert float(delta.abs().max()) > 5 / 255  # sign steps of 1/255 from a uniform start reach the bound
    assert record == json.loads((tmp_path / "uap" / RECORD_FILE).read_text())
    assert record["dataset"]["split"] == "train" and record["dataset"]["images"] == len(micro.train)
    assert record["dataset"]["identities"] == 3 and len(record["losses"]) == 2
    assert record["config"]["size"] == [8, 4] and record["cost"]["backward_per_image"] == 2
    with Image.open(tmp_path / "uap" / PICTURE_FILE) as picture:
        assert picture.size == (4 * 32, 8 * 32)  # enlarged by an integer factor to >= 256 px tall
        corner = picture.getpixel((0, 0))
    expected = tuple(round(min(max((float(v) * 255 / 6 + 1) * 127.5, 0), 255)) for v in delta[:, 0, 0])
    assert corner == expected  # [-eps, eps] -> [0, 255], mid-grey = 0


def test_the_attack_adds_the_saved_delta(micro: ReIDDataset, tmp_path: Path) -> None:
    cfg = CFG.model_copy(update={"size": (32, 16), "epochs": 1})  # δ at the images' own size: added as it is
    train(tmp_path / "uap", micro, cfg)
    delta, _ = load_delta(tmp_path / "uap" / DELTA_FILE)
    spec = AttackSpec.model_validate({"method": "uap", "eps": 6, "file": str(tmp_path / "uap" / DELTA_FILE)})
    model = TinyNet().eval()
    plan = plan_attack([model], EuclideanMetric(), micro, "query", spec, clean_features([model], micro, batch_size=8))
    for batch in attack_batches(plan, spec, batch_size=5):
        expected = torch.where(batch.active[:, None, None, None], (batch.clean + delta).clamp(0, 1), batch.clean)
        assert torch.equal(batch.adversarial, expected)
        assert int(batch.counts.forward.sum()) == int(batch.counts.backward.sum()) == 0  # no model call at attack time


def test_a_killed_training_resumes_to_the_same_bytes(micro: ReIDDataset, tmp_path: Path) -> None:
    class Killed(Exception):
        pass

    def kill(epoch: int) -> None:
        raise Killed

    full = train(tmp_path / "full", micro)
    with pytest.raises(Killed):
        train(tmp_path / "resumed", micro, on_epoch=kill)
    assert not (tmp_path / "resumed" / DELTA_FILE).exists()
    resumed = train(tmp_path / "resumed", micro)
    assert (tmp_path / "full" / DELTA_FILE).read_bytes() == (tmp_path / "resumed" / DELTA_FILE).read_bytes()
    assert resumed["losses"] == full["losses"] and resumed["delta"]["sha256"] == full["delta"]["sha256"]
    assert train(tmp_path / "resumed", micro)["delta"] == full["delta"]  # finished: returned as it is
    with pytest.raises(MetricAttackError, match="holds a different universal perturbation run"):
        train(tmp_path / "resumed", micro, CFG.model_copy(update={"seed": 5}))


def test_bad_requests_are_refused_before_any_output(micro: ReIDDataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(MetricAttackError, match=r"alpha \(step size 7\) must not exceed eps \(6\)"):
        train(out, micro, CFG.model_copy(update={"alpha": 7}))
    no_train = ReIDDataset(micro.name, micro.root, (), micro.query, micro.gallery)
    with pytest.raises(MetricAttackError, match="has no training images"):
        train(out, no_train)
    assert not out.exists()
    train(tmp_path / "uap", micro, CFG.model_copy(update={"epochs": 1}))
    file = tmp_path / "uap" / DELTA_FILE
    with pytest.raises(ValueError, match=r"was trained at eps 6, the attack's eps is 4: attack with eps 6"):
        AttackSpec.model_validate({"method": "uap", "eps": 4, "file": str(file)})
    with pytest.raises(ValueError, match="no such file"):
        AttackSpec.model_validate({"method": "uap", "eps": 6, "file": str(tmp_path / "missing.safetensors")})
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        AttackSpec.model_validate({"method": "uap", "eps": 6, "file": str(tmp_path / "junk.safetensors")})
    save_file({"delta": torch.zeros(3, 4, 2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a metricattack.universal/1 file"):
        AttackSpec.model_validate({"method": "uap", "eps": 6, "file": str(tmp_path / "plain.safetensors")})
    with pytest.raises(ValueError, match="not the recorded"):
        AttackSpec.model_validate({"method": "uap", "eps": 6, "file": str(file), "sha256": "0" * 64})
    save_delta(tmp_path / "big.safetensors", torch.full((3, 4, 2), 7 / 255), 6)
    with pytest.raises(ValueError, match="exceed eps = 6/255"):
        AttackSpec.model_validate({"method": "uap", "eps": 6, "file": str(tmp_path / "big.safetensors")})
    spec = AttackSpec.model_validate({"method": "uap", "eps": 6, "file": str(file)})
    entry = ModelEntry(TinyNet().eval(), EuclideanMetric(), {"label": "tiny"})
    for threat in ("targeted", "opposite"):
        with pytest.raises(ConfigError, match=f"uap adds a delta trained to push features apart; the {threat} threat model pulls"):
            export_attack([entry], micro, out, spec, threat, progress=False)
    assert not out.exists()


def test_cli_trains_then_attacks_the_query_split_with_it(
    tiny_model_checkpoint: Path, tiny_dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--checkpoint", str(tiny_model_checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    assert main(["universal", *data, "--out", str(tmp_path / "uap"), "--eps", "8", "--alpha", "9"]) == 2
    assert "alpha (step size 9) must not exceed eps (8)" in capsys.readouterr().err and not (tmp_path / "uap").exists()
    assert main(["universal", *data, "--out", str(tmp_path / "uap"), "--eps", "8", "--epochs", "0"]) == 2
    assert "--epochs: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["universal", *data, "--out", str(tmp_path / "uap"), "--eps", "8", "--epochs", "1", "--step-batch", "48"]) == 0
    printed = capsys.readouterr().out
    file = tmp_path / "uap" / DELTA_FILE
    assert f"apply it: metricattack attack ... --method uap --method-option file={file} --eps 8 --threat query" in printed
    attack = ["attack", *data, "--out", str(tmp_path / "adv"), "--method", "uap", "--method-option", f"file={file}", "--no-progress"]
    assert main([*attack, "--eps", "4", "--threat", "query"]) == 2
    assert "was trained at eps 8, the attack's eps is 4" in capsys.readouterr().err and not (tmp_path / "adv").exists()
    assert main([*attack, "--eps", "8", "--threat", "query"]) == 0
    results = json.loads((tmp_path / "adv" / "attack_results.json").read_text())
    assert (
        results["attack"]["method"] == "uap"
        and results["attack"]["options"]["sha256"] == json.loads((tmp_path / "uap" / RECORD_FILE).read_text())["delta"]["sha256"]
    )
    assert results["attacked_split"] == "query" and results["calls"]["forward"]["max"] == results["calls"]["unmoved"]["images"] == 0
