"""End-to-end attacks on the tiny trained model and the tiny synthetic dataset: export, resume, evaluate."""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metricattack.attacks.engine import AttackedBatch, attack_batches, clean_features, plan_attack
from metricattack.attacks.export import ModelEntry, export_attack
from metricattack.attacks.ops import quantize
from metricattack.attacks.problem import CallCounts
from metricattack.attacks.spec import AttackSpec
from metricattack.attacks.writer import BatchWriter, batch_done
from metricattack.cli import main
from metricattack.data.layouts import load_dataset
from metricattack.data.loading import read_image
from metricattack.data.types import ImageRecord
from metricattack.errors import MetricAttackError
from metricattack.io import sha256_file
from metricattack.metrics.distance import EuclideanMetric, MahalanobisMetric
from metricattack.models.checkpoint import load_model, save_checkpoint
from metricattack.models.reid import ReIDModel
from metricattack.outputs import LOCK_NAME


@pytest.fixture(scope="module")
def data(tiny_dataset_root: Path):
    return load_dataset("folder", tiny_dataset_root)


@pytest.fixture(scope="module")
def entry(tiny_model_checkpoint: Path) -> ModelEntry:
    ckpt = Path(tiny_model_checkpoint)
    return ModelEntry(load_model(ckpt), EuclideanMetric(), {"label": "tiny", "checkpoint": str(ckpt), "sha256": sha256_file(ckpt)})


def export(entries, data, out: Path, threat: str = "gallery", file_names: str = "source", **spec) -> dict:
    return export_attack(entries, data, out, AttackSpec(**spec), threat, batch_size=8, file_names=file_names, progress=False)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except the resumption records, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and ".attack" not in p.parts}


def every_file(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, the resumption records too, by relative path (not the lock, which names its holder)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture(scope="module")
def white_box(entry: ModelEntry, data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("adv") / "ifgsm"
    return out, export([entry], data, out, method="ifgsm", eps=5)


def test_white_box_ifgsm_eps5_cuts_map_by_more_than_90_percent(
    resnet50_checkpoint: Path, market_like_dataset_root: Path, tmp_path: Path
) -> None:
    """The issue's target, on the paper's B1 backbone (ResNet-50, 64x32, 8 epochs from scratch) and
    a gallery as crowded as Market-1501's (128x64 images, resized by the model). Measured for this
    setup (clean → adversarial mAP, ``benchmarks/bench_attack_strength.py``): 0.142 → 0.008
    (−94 %, below the chance level 0.021), other dataset seed 0.131 → 0.008 (−94 %), other training
    seed 0.130 → 0.008 (−94 %). ResNet-18 on the same data loses much less: it is much smoother
    (see ``test_white_box_ifgsm_eps5_on_resnet18``). Attacked in batches of 32 (the attack of an
    image does not depend on its batch)."""
    ckpt = Path(resnet50_checkpoint)
    data = load_dataset("folder", market_like_dataset_root)
    entry = ModelEntry(load_model(ckpt), EuclideanMetric(), {"label": "resnet50", "sha256": sha256_file(ckpt)})
    results = export_attack([entry], data, tmp_path / "adv", AttackSpec(method="ifgsm", eps=5), "gallery", batch_size=32, progress=False)
    row = results["evaluations"][0]
    clean, disk, memory = row["clean"]["mAP"], row["adversarial_disk"]["mAP"], row["adversarial_memory"]["mAP"]
    assert clean > 4 * results["chance"]["mAP"]  # a model that retrieves well above chance ...
    assert disk < 0.1 * clean and memory < 0.1 * clean  # ... loses more than 90 % of its mAP
    assert results["attack"]["options"]["steps"] == 6 and results["linf_255"]["max_disk"] == 5
    assert row["adversarial_disk"]["mean_true_positive_distance"] > 1.5 * row["clean"]["mean_true_positive_distance"]


def test_white_box_ifgsm_eps5_on_resnet18(white_box) -> None:
    """The shared ResNet-18 fixture (clean mAP ~0.59) is smoother: measured 0.586 → 0.249 and
    0.595 → 0.328 in two sessions. Asserted: a cut of more than 25 %, on disk and in memory alike,
    and the paper's signature, the true-positive distance growing by > 30 % (paper: 0.80 → 1.42)."""
    _, results = white_box
    row = results["evaluations"][0]
    clean = row["clean"]["mAP"]
    assert clean > 0.3
    assert row["adversarial_disk"]["mAP"] < 0.75 * clean
    assert row["adversarial_memory"]["mAP"] < 0.75 * clean
    assert abs(row["adversarial_disk"]["mAP"] - row["adversarial_memory"]["mAP"]) < 0.05
    assert row["adversarial_disk"]["mean_true_positive_distance"] > 1.3 * row["clean"]["mean_true_positive_distance"]
    assert results["attack"]["options"]["steps"] == 6 and results["linf_255"]["max_disk"] == 5
    assert 0 < results["chance"]["mAP"] < row["adversarial_disk"]["mAP"]


def test_disk_evaluation_equals_features_of_every_written_file(white_box, entry, data) -> None:
    """Unattacked gallery images (distractors, junk) are not re-read: their clean features stand in.
    The result must equal extracting every written file."""
    from metricattack.evaluation.features import evaluate_split_features, extract_features

    out, results = white_box
    adv = load_dataset("folder", out)
    assert [r.path.name for r in adv.gallery] == [r.path.name for r in data.gallery]
    assert any(r.pid <= 0 for r in adv.gallery)  # the fixture has distractors and junk
    query = extract_features(entry.model, list(data.query), batch_size=8, progress=False)
    every_file = extract_features(entry.model, list(adv.gallery), batch_size=8, progress=False)
    ranking = evaluate_split_features(query, every_file, data, EuclideanMetric(), ap="market")
    assert results["evaluations"][0]["adversarial_disk"]["mAP"] == pytest.approx(ranking.mAP, abs=1e-6)


def test_saved_images_respect_eps_layout_and_manifest(white_box, data) -> None:
    out, results = white_box
    adv = load_dataset("folder", out)
    for split in ("train", "query", "gallery"):
        src, dst = data.split(split), adv.split(split)
        assert [(r.path.stem, r.pid, r.camid) for r in src] == [(r.path.stem, r.pid, r.camid) for r in dst]
    for src, dst in zip(data.gallery, adv.gallery, strict=True):
        assert dst.path.name == src.path.name  # the source's name, PNG content
        assert Image.open(dst.path).format == "PNG"
        a, b = read_image(src.path), read_image(dst.path)
        assert a.shape == b.shape
        assert float((a - b).abs().max()) * 255 <= 5 + 1e-3
        if src.pid in (-1, 0):
            assert torch.equal(a, b)  # junk and distractors are not attacked
    for src, dst in zip(data.query + data.train, adv.query + adv.train, strict=True):
        assert src.path.read_bytes() == dst.path.read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attack"]["eps"] == 5 and manifest["seed"] == 0
    assert manifest["models"][0]["sha256"] == results["models"][0]["sha256"]
    assert len(manifest["files"]) == len(data.train) + len(data.query) + len(data.gallery)
    for f in manifest["files"]:
        assert sha256_file(out / f["output"]) == f["sha256"]
        assert Path(f["output"]).stem == Path(f["source"]).stem


def _market_reader(folder: Path) -> dict[str, tuple[int, int, np.ndarray]]:
    """What most re-ID code does with a Market-1501 folder: list ``*.jpg``, parse pid and camera
    from the name, decode with PIL by content -> {name: (pid, camid, pixels)}."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.jpg"))):
        pid, cam = map(int, re.search(r"([-\d]+)_c(\d)", path).groups())
        out[os.path.basename(path)] = (pid, cam - 1, np.asarray(Image.open(path).convert("RGB")))
    return out


def test_adversarial_copy_loads_in_common_market1501_readers(entry, data, tmp_path: Path) -> None:
    """Market-1501 names its files .jpg and the usual readers list only ``*.jpg``: the synthetic
    data and, by default, its attacked copy keep those names (PNG content, lossless), so such
    readers load both unchanged."""
    market, source = data, data.root
    export([entry], market, tmp_path / "adv", method="fgsm", eps=4)
    clean, adversarial = _market_reader(source / "bounding_box_test"), _market_reader(tmp_path / "adv" / "bounding_box_test")
    assert adversarial.keys() == clean.keys() and len(adversarial) == len(market.gallery)
    changed = 0
    for name, (pid, cam, pixels) in adversarial.items():
        assert (pid, cam) == clean[name][:2]
        diff = np.abs(pixels.astype(int) - clean[name][2].astype(int)).max()
        assert diff <= 4
        changed += diff > 0
    assert changed == sum(1 for r in market.gallery if r.pid > 0)  # every attacked image, nothing else
    ours = load_dataset("folder", tmp_path / "adv")
    for record in ours.gallery:  # our loader reads the same pixels
        assert np.array_equal((read_image(record.path) * 255).round().byte().permute(1, 2, 0).numpy(), adversarial[record.path.name][2])
    manifest = json.loads((tmp_path / "adv" / "manifest.json").read_text())
    assert manifest["file_names"] == "source" and manifest["encoding"] == "png"

    renamed = export([entry], market, tmp_path / "adv_png", method="fgsm", eps=4, file_names="png")
    assert renamed["num_attacked"] == changed
    assert _market_reader(tmp_path / "adv_png" / "bounding_box_test") == {}  # .png names: invisible to such readers
    assert len(list((tmp_path / "adv_png" / "bounding_box_test").glob("*.png"))) == len(market.gallery)
    with pytest.raises(MetricAttackError, match="unknown file_names 'jpeg'; expected one of source, png"):
        export([entry], market, tmp_path / "adv_bad", method="fgsm", eps=4, file_names="jpeg")


def test_targeted_attack_moves_images_into_target_top_ranks(entry, data, tmp_path: Path) -> None:
    results = export([entry], data, tmp_path / "t", "targeted", method="ifgsm", eps=5)
    row = results["evaluations"][0]
    before, after = row["clean"]["targeted"], row["adversarial_disk"]["targeted"]
    # measured on the tiny fixture: top-10 0.125 -> 0.361, top-1 0 -> 0.028, mean rank 41.4 -> 23.7
    assert after["top10"] > before["top10"] + 0.15 and after["top1"] >= before["top1"]
    assert after["mean_rank"] < 0.8 * before["mean_rank"]


def test_query_side_and_classification_settings(entry, data, tmp_path: Path) -> None:
    query = export([entry], data, tmp_path / "q", "query", method="ifgsm", eps=5, steps=3)
    assert query["attacked_split"] == "query"
    row = query["evaluations"][0]
    assert row["adversarial_disk"]["mAP"] < 0.9 * row["clean"]["mAP"]  # measured 0.595 -> 0.470 (3 steps)
    assert row["adversarial_disk"]["mean_true_positive_distance"] > row["clean"]["mean_true_positive_distance"]
    assert sorted(p.stem for p in (tmp_path / "q" / "query").iterdir()) == sorted(r.path.stem for r in data.query)
    assert all(Image.open(p).format == "PNG" for p in (tmp_path / "q" / "query").iterdir())
    cls = export([entry], data, tmp_path / "c", "classification", method="fgsm", eps=5)
    queried = {r.pid for r in data.query}
    assert cls["num_attacked"] == sum(1 for r in data.gallery if r.pid > 0 and r.pid in queried)
    assert 0 < cls["linf_255"]["max_disk"] <= 5


def test_same_seed_gives_identical_bytes_with_and_without_overlap(entry, data, tmp_path: Path) -> None:
    """Run ``a`` reads, attacks and writes on 3 host threads (:mod:`metricattack.overlap`), ``b`` in one thread
    in turn: every file is the same, the batch records too (``attack_results.json`` names its own folder)."""
    spec = AttackSpec(method="pgd", eps=4, steps=1, seed=7)
    a = export_attack([entry], data, tmp_path / "a", spec, batch_size=8, progress=False, workers=3)
    b = export_attack([entry], data, tmp_path / "b", spec, batch_size=8, progress=False, workers=0)
    export([entry], data, tmp_path / "c", method="pgd", eps=4, steps=1, seed=8)
    files_a, files_b, files_c = (every_file(tmp_path / n) for n in "abc")
    assert set(files_a) == set(files_b) and any(k.startswith(".attack/batches/") for k in files_a)
    assert [k for k in files_a if files_a[k] != files_b[k]] == ["attack_results.json"]
    assert {**a, "output": ""} == {**b, "output": ""}
    pngs = [k for k in files_a if k.endswith(".jpg")]
    assert any(files_a[k] != files_c[k] for k in pngs)
    assert a["linf_255"]["max_disk"] <= 4


def test_a_batch_written_in_parts_counts_as_done_only_when_every_part_is(tmp_path: Path) -> None:
    """The writer threads share a batch (``BatchWriter``): the records, which mark it done, are written by the
    part that finishes last; a failed part leaves none (the batch is redone when resumed), its error unchanged."""
    root, gen = tmp_path / "src", torch.Generator().manual_seed(0)
    records = [ImageRecord(root / "bounding_box_test" / f"{i + 1:04d}_c1s1_{i:06d}_00.jpg", i + 1, 0) for i in range(5)]
    clean = torch.randint(0, 256, (5, 3, 8, 4), generator=gen).float().div(255)
    batch = AttackedBatch(
        3, torch.arange(5), clean, clean + 0.01, torch.ones(5, dtype=torch.bool), CallCounts.zeros(5), (torch.ones(5, 2),)
    )
    one, three = tmp_path / "one", tmp_path / "three"
    for out, parts in ((one, 1), (three, 3)):
        jobs = BatchWriter(out, batch, records, root, 2.0, "source", parts).jobs()
        for job in reversed(jobs):  # any order of finishing
            assert not batch_done(out, 3)
            job()
    assert batch_done(three, 3) and every_file(one) == every_file(three) and len(every_file(one)) == 5 + 2
    outside = [*records[:4], ImageRecord(tmp_path / "elsewhere.jpg", 5, 0)]
    jobs = BatchWriter(tmp_path / "failed", batch, outside, root, 2.0, "source", 2).jobs()
    jobs[0]()
    with pytest.raises(MetricAttackError, match="not inside the dataset root"):
        jobs[1]()
    assert not batch_done(tmp_path / "failed", 3) and not (tmp_path / "failed" / ".attack").exists()


def test_resume_after_interruption_equals_uninterrupted_run(entry, data, tmp_path: Path) -> None:
    spec = AttackSpec(method="mifgsm", eps=5, steps=2)
    export_attack([entry], data, tmp_path / "full", spec, batch_size=8, progress=False)

    done = []

    def crash_after_two(number: int) -> None:
        done.append(number)
        if len(done) == 2:
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        export_attack([entry], data, tmp_path / "resumed", spec, batch_size=8, progress=False, on_batch=crash_after_two)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    redone = []
    export_attack([entry], data, tmp_path / "resumed", spec, batch_size=8, progress=False, on_batch=redone.append)
    assert set(redone).isdisjoint(done[:2]) and redone
    full, resumed = tree_bytes(tmp_path / "full"), tree_bytes(tmp_path / "resumed")
    assert set(full) == set(resumed)
    for name in full:
        if name.endswith((".png", ".jpg")):
            assert full[name] == resumed[name], name
    m_full, m_res = (json.loads(x["manifest.json"]) for x in (full, resumed))
    assert m_full["files"] == m_res["files"]
    r_full, r_res = (json.loads(x["attack_results.json"]) for x in (full, resumed))
    assert r_full["evaluations"][0]["adversarial_disk"]["mAP"] == r_res["evaluations"][0]["adversarial_disk"]["mAP"]
    assert r_full["evaluations"][0]["adversarial_memory"]["mAP"] == r_res["evaluations"][0]["adversarial_memory"]["mAP"]


def test_mixed_identity_batches_equal_one_identity_at_a_time(entry, data) -> None:
    spec = AttackSpec(method="ifgsm", eps=5, steps=2)
    feats = clean_features([entry.model], data, batch_size=8)
    plan = plan_attack([entry.model], entry.metric, data, "gallery", spec, feats)
    together = {}
    batches, count = attack_batches(plan, spec, batch_size=16), 0
    for batch in batches:
        count += 1
        for i, index in enumerate(batch.indices.tolist()):
            together[index] = quantize(batch.adversarial[i : i + 1], batch.clean[i : i + 1], 5)
    assert count == len(batches)  # the attack bar's total
    for pid in sorted({r.pid for r in data.gallery if r.pid > 0})[:4]:
        ids = torch.tensor([i for i, r in enumerate(data.gallery) if r.pid == pid])
        clean = torch.stack([read_image(data.gallery[i].path) for i in ids])
        from metricattack.attacks.perturb import perturb

        alone = perturb(clean, plan.objective, spec, indices=ids, active=plan.active[ids]).images
        for k, index in enumerate(ids.tolist()):
            assert torch.equal(quantize(alone[k : k + 1], clean[k : k + 1], 5), together[index])


def test_two_model_ensemble_with_own_input_sizes(entry, data, tmp_path: Path) -> None:
    torch.manual_seed(3)
    other = ReIDModel("resnet18", num_classes=4, input_size=(24, 12), reduce_dim=32).eval()
    path = save_checkpoint(other, tmp_path / "other.safetensors", {"note": "random init"})
    second = ModelEntry(load_model(path), EuclideanMetric(), {"label": "other", "sha256": sha256_file(path)})
    results = export([entry, second], data, tmp_path / "ens", method="fgsm", eps=5)
    assert [r["white_box"] for r in results["evaluations"]] == [True, True]
    row = results["evaluations"][0]
    assert row["adversarial_disk"]["mAP"] < row["clean"]["mAP"]
    maha = MahalanobisMetric(torch.eye(entry.model.feature_dim))
    with pytest.raises(MetricAttackError, match="feature space"):
        export([ModelEntry(entry.model, maha), ModelEntry(second.model, maha)], data, tmp_path / "bad", method="ifgsm", eps=5)


def test_refuses_bad_output_folders(entry, data, tmp_path: Path) -> None:
    with pytest.raises(MetricAttackError, match="inside the source dataset"):
        export([entry], data, data.root / "adv", method="fgsm", eps=5)
    with pytest.raises(MetricAttackError, match="inside the source dataset"):
        export([entry], data, data.root, method="fgsm", eps=5)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MetricAttackError, match="not empty"):
        export([entry], data, foreign, method="fgsm", eps=5)
    export([entry], data, tmp_path / "run", method="fgsm", eps=5)
    with pytest.raises(MetricAttackError, match="different attack run"):
        export([entry], data, tmp_path / "run", method="fgsm", eps=4)


def test_cli_attack_and_its_errors(tiny_model_checkpoint, tiny_dataset_root, tmp_path: Path, capsys) -> None:
    base = [
        "attack",
        "--checkpoint",
        str(tiny_model_checkpoint),
        "--data-root",
        str(tiny_dataset_root),
        "--dataset",
        "folder",
        "--no-progress",
    ]
    assert main([*base, "--out", str(tmp_path / "o"), "--method", "fgsm", "--eps", "3", "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "mAP clean" in printed and (tmp_path / "o" / "attack_results.json").is_file()
    label = f"{Path(tiny_model_checkpoint).parent.name}/model.safetensors (white-box)"  # the run folder tells models apart
    assert label[:40] in printed and "Chance level (a random ranking of this gallery): mAP" in printed
    for extra, message in [
        (["--eps", "0"], "eps"),
        (["--eps", "300"], "eps"),
        (["--eps", "2", "--method-option", "alpha=3"], "alpha (step size 3) must not exceed eps (2)"),
        (["--method-option", "mu=0.5"], "ifgsm has no option 'mu' (its options: alpha, steps)"),
        (["--method-option", "steps"], "expected KEY=VALUE"),
        (["--method-option", "eps=3"], "eps is not a method option; use --eps"),
        (["--metric", "mahalanobis-typo"], "unknown --metric"),
        (["--out", str(tiny_dataset_root / "inside")], "inside the source"),
    ]:
        args = [*base, "--out", str(tmp_path / "e"), *extra] if "--out" not in extra else [*base, *extra]
        assert main(args) == 2
        assert message in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.diag([1.0, -1.0]).astype(np.float32))
    assert main([*base, "--out", str(tmp_path / "e"), "--metric", str(tmp_path / "bad.npy")]) == 2
    assert "positive semidefinite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "e"), "--method", "deepfool"])
