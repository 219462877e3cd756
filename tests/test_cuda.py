"""On a CUDA GPU (skipped without one; ``benchmarks/device_check.sh`` runs them with ``-m cuda``): the attack
export stays within ε and agrees with the CPU, ``--precision bf16`` / ``fp16`` give fp32's adversarial mAP
within 1 point, feature extraction (pinned memory, reader threads) agrees with the CPU.

Tolerances (fp32 with TF32 off on the GPU; the kernels differ, so sums round differently):
features ``FEATURE_TOLERANCE`` (max abs difference of L2-normalised features); mAP of the same images
``CLEAN_MAP_POINTS``; an attack's adversarial mAP ``MAP_POINTS`` (a sign gradient near zero may flip,
moving a pixel by α, so GPU and CPU attacks differ in a few pixels, not in strength)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metricattack.attacks.export import ModelEntry, export_attack
from metricattack.attacks.spec import AttackSpec
from metricattack.compute import make_compute
from metricattack.data.layouts import load_dataset
from metricattack.data.types import ReIDDataset
from metricattack.evaluation.features import extract_features
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.base import ReIDNet
from metricattack.models.checkpoint import load_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FEATURE_TOLERANCE = 1e-4
CLEAN_MAP_POINTS = 0.1
MAP_POINTS = 1.0
EPS = 5


@pytest.fixture(scope="module", autouse=True)
def _fp32_means_fp32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def data(tiny_dataset_root: Path) -> ReIDDataset:
    return load_dataset("folder", tiny_dataset_root)


@pytest.fixture(scope="module")
def model(tiny_model_checkpoint: Path) -> ReIDNet:
    return load_model(tiny_model_checkpoint)


def test_features_on_the_gpu_agree_with_the_cpu(model: ReIDNet, data: ReIDDataset) -> None:
    cpu = extract_features(model, data.gallery, batch_size=8, progress=False, workers=0)
    gpu = extract_features(model, data.gallery, batch_size=8, device="cuda", progress=False)  # pinned, 2 reader threads
    plain = extract_features(model, data.gallery, batch_size=8, device="cuda", progress=False, workers=0)
    model.cpu()
    assert (gpu - cpu).abs().max() <= FEATURE_TOLERANCE
    assert torch.equal(gpu, plain)  # the same kernels on the same batches: overlap changes nothing


def test_gpu_export_stays_within_eps_and_agrees_with_the_cpu(model: ReIDNet, data: ReIDDataset, tmp_path: Path) -> None:
    entry = ModelEntry(model, EuclideanMetric(), {"label": "tiny"})
    spec = AttackSpec(method="ifgsm", eps=EPS)
    gpu = export_attack([entry], data, tmp_path / "gpu", spec, batch_size=8, device="cuda", progress=False)
    cpu = export_attack([entry], data, tmp_path / "cpu", spec, batch_size=8, device="cpu", progress=False)
    assert gpu["linf_255"]["max_disk"] <= EPS and gpu["linf_255"]["max_memory"] <= EPS + 1e-3
    (g,), (c,) = gpu["evaluations"], cpu["evaluations"]
    assert abs(g["clean"]["mAP"] - c["clean"]["mAP"]) <= CLEAN_MAP_POINTS / 100
    assert abs(g["adversarial_disk"]["mAP"] - c["adversarial_disk"]["mAP"]) <= MAP_POINTS / 100
    assert g["adversarial_disk"]["mAP"] < g["clean"]["mAP"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_attack_is_as_strong_as_fp32(model: ReIDNet, data: ReIDDataset, tmp_path: Path, precision: str) -> None:
    """``--precision`` on the GPU: the attacked images stay within ε and the white-box adversarial mAP is fp32's within 1 point."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    entry = ModelEntry(model, EuclideanMetric(), {"label": "tiny"})
    spec = AttackSpec(method="ifgsm", eps=EPS)
    runs = {
        name: export_attack(
            [entry], data, tmp_path / name, spec, batch_size=8, device="cuda", progress=False, compute=make_compute(precision=name)
        )
        for name in ("fp32", precision)
    }
    model.cpu()
    reduced, fp32 = (runs[name]["evaluations"][0]["adversarial_disk"]["mAP"] for name in (precision, "fp32"))
    assert runs[precision]["linf_255"]["max_disk"] <= EPS
    assert abs(reduced - fp32) <= MAP_POINTS / 100, (reduced, fp32)
