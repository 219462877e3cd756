"""The whole pipeline once at Market-1501 size on this machine (issue #12): time, peak memory and
disk use of every stage, and the attack's images/s against the bare forward+backward of the same
model measured in the same run.

Data: ``metricattack synth`` with Market-1501's counts -- 751 train / 750 test identities, 6
cameras, 12,936 train / 3,368 query / 15,913 gallery images (13,115 of test identities + 2,798
distractors) at 128x64. Then ``train`` (a light backbone, 1 epoch), ``evaluate``, ``fit-metric``
(XQDA), a throughput probe, ``attack`` (I-FGSM, eps 5, the whole gallery), the probe again.

Every stage is a ``metricattack`` command run under ``/usr/bin/time -v`` (wall clock, CPU time,
peak RSS), with the load average before and after and the disk use of what it wrote. A stage
recorded in ``WORK/scale.json`` is not run again (delete its entry to redo it).

The probe (``--probe``) loads the trained model and times, on gallery images decoded beforehand,
forward + backward to the input pixels (the attack's unit of work) for the trained model at its
input size, for ResNet-50 at 256x128 (the paper's B1) and for the light backbone untrained, in
interleaved rounds: their ratio scales this run's model work to the paper's configuration.

Usage (one thread, low priority; about 2-3 hours on the loaded 2-core machine)::

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python -u benchmarks/bench_market_scale.py --work /tmp/market-scale
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MARKET = {"train_ids": 751, "test_ids": 750, "cameras": 6, "train": 12936, "query": 3368, "gallery_ids": 13115, "distractors": 2798}
TRAIN_RECIPE = """# written by benchmarks/bench_market_scale.py
data: {{dataset: folder, root: {root}, cache: true}}
model: {{backbone: {backbone}, pretrained: false, input_size: [128, 64]}}
loss:
  cross_entropy: {{label_smoothing: 0.1}}
  triplet: {{margin: 0.3}}
batch: {{batch_size: 32, sampler: pk, images_per_id: 4}}
optimizer: {{lr: 0.001, weight_decay: 0.0005}}
schedule: {{epochs: 1}}
device: cpu
progress: false
seed: 0
"""


def _load() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def _du(paths: list[Path]) -> int:
    """Bytes used on disk by ``paths`` (``du -sb``, hard links counted once)."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-scb", *existing], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def _time_v(stderr: str) -> dict[str, float]:
    """Wall clock, CPU seconds and peak RSS from ``/usr/bin/time -v`` output."""

    def field(name: str) -> str:
        match = re.search(rf"{re.escape(name)}: (.+)", stderr)
        return match.group(1).strip() if match else "0"

    parts = [float(p) for p in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    wall = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return {
        "wall_s": round(wall, 1),
        "user_s": float(field("User time (seconds)")),
        "sys_s": float(field("System time (seconds)")),
        "peak_rss_mib": round(int(field("Maximum resident set size (kbytes)")) / 1024, 1),
    }


def run_stage(name: str, argv: list[str], outputs: list[Path], record: dict[str, Any], record_path: Path) -> dict[str, Any]:
    """Run one stage (unless recorded), record its measurements, return them."""
    if name in record:
        print(f"[{name}] recorded earlier, skipped")
        return record[name]
    print(f"[{name}] {' '.join(argv)}", flush=True)
    load_before = _load()
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"stage {name} failed with status {proc.returncode}")
    result = {
        **_time_v(proc.stderr),
        "load_before": load_before,
        "load_after": _load(),
        "disk_bytes": _du(outputs),
        "stdout_tail": proc.stdout.strip().splitlines()[-12:],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    record[name] = result
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[{name}] {result['wall_s']} s, peak {result['peak_rss_mib']} MiB, {result['disk_bytes'] / 2**20:.1f} MiB on disk", flush=True)
    return result


def attack_loop_rate(adv: Path) -> dict[str, float]:
    """Steady-state images/s of the attack loop from its batch records' write times (first to last batch)."""
    records = sorted((adv / ".attack" / "batches").glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    sizes = [len(json.loads(p.read_text())["files"]) for p in records]
    seconds = records[-1].stat().st_mtime - records[0].stat().st_mtime
    images = sum(sizes[1:])
    return {"batches": len(records), "images_timed": images, "seconds": round(seconds, 1), "images_per_s": round(images / seconds, 3)}


# ----------------------------------------------------------------------------- the probe (child process)


def probe(checkpoint: Path, data: Path, backbone: str, rounds: int, batches: int) -> dict[str, Any]:
    """Per-image seconds of forward + backward to the pixels, interleaved rounds, median."""
    import statistics

    import torch

    from metricattack.data.layouts import load_dataset
    from metricattack.data.loading import read_image
    from metricattack.models.checkpoint import load_model
    from metricattack.models.reid import ReIDModel

    torch.set_num_threads(1)
    gallery = load_dataset("folder", data).gallery
    images = torch.stack([read_image(r.path) for r in gallery[: 32 * batches]])
    trained = load_model(checkpoint).eval()
    paper = ReIDModel("resnet50", 751, (256, 128)).eval()  # B1's cost per image (weights do not change it)
    light = ReIDModel(backbone, 751, (128, 64)).eval()
    cases = {
        "trained@128x64 (batch 32)": (trained, 32),
        f"{backbone}@128x64 (batch 8)": (light, 8),
        "resnet50@256x128 (batch 8)": (paper, 8),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, (model, batch) in cases.items():
            count = batch * (batches if batch == 32 else 1)
            start = time.perf_counter()
            for s in range(0, count, batch):
                x = images[s : s + batch].clone().requires_grad_(True)
                model(x).pow(2).sum().backward()
            times[name].append((time.perf_counter() - start) / count)
    return {name: {"s_per_image": statistics.median(v), "rounds": [round(t, 5) for t in v]} for name, v in times.items()}


def probe_host_io(data: Path, images: int) -> dict[str, Any]:
    """Per-image seconds of the attack export's host-side work on gallery images: decode the source,
    write the PNG (atomic), SHA-256 it, decode it again (the disk evaluation and L-inf check)."""
    import tempfile

    import torch

    from metricattack.data.layouts import load_dataset
    from metricattack.data.loading import read_image, save_png
    from metricattack.io import sha256_file

    torch.set_num_threads(1)
    records = load_dataset("folder", data).gallery[:images]
    with tempfile.TemporaryDirectory(dir=data.parent) as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        for i, record in enumerate(records):
            out = Path(tmp) / f"{i}.png"
            save_png(read_image(record.path), out)
            sha256_file(out)
            read_image(out)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images": len(records), "wall_s_per_image": wall / len(records), "cpu_s_per_image": cpu / len(records)}


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, runs and scale.json")
    parser.add_argument("--backbone", default="mobilenet_v3_small", help="light backbone to train (default mobilenet_v3_small)")
    parser.add_argument("--probe", nargs=2, type=Path, metavar=("CHECKPOINT", "DATA"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-io", type=Path, metavar="DATA", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(*args.probe, args.backbone, args.rounds, args.batches)))
        return
    if args.probe_io:
        print(json.dumps(probe_host_io(args.probe_io, 1000)))
        return

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "scale.json"
    record: dict[str, Any] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.setdefault(
        "machine",
        {"cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS"), "nice": os.nice(0), "python": sys.version.split()[0]},
    )
    ma = [sys.executable, "-m", "metricattack"]
    data, run_dir, adv = work / "data", work / "runs" / args.backbone, work / "adv-ifgsm-eps5"
    ckpt = run_dir / "model.safetensors"
    m = MARKET
    run_stage(
        "synth",
        [
            *ma,
            "synth",
            "--out",
            str(data),
            "--train-ids",
            str(m["train_ids"]),
            "--test-ids",
            str(m["test_ids"]),
            "--cameras",
            str(m["cameras"]),
        ]
        + ["--train-images", str(m["train"]), "--query-images", str(m["query"]), "--gallery-images", str(m["gallery_ids"])]
        + ["--distractors", str(m["distractors"]), "--height", "128", "--width", "64", "--workers", "1"],
        [data],
        record,
        record_path,
    )
    recipe = work / f"train-{args.backbone}.yaml"
    recipe.write_text(TRAIN_RECIPE.format(root=data, backbone=args.backbone))
    run_stage("train", [*ma, "train", "--config", str(recipe), "--out", str(run_dir)], [run_dir], record, record_path)
    common = ["--data-root", str(data), "--dataset", "folder", "--no-progress"]
    run_stage(
        "evaluate",
        [*ma, "evaluate", "--checkpoint", str(ckpt), *common, "--out", str(work / "clean.json")],
        [work / "clean.json"],
        record,
        record_path,
    )
    xqda = [*ma, "fit-metric", "--checkpoint", str(ckpt), "--data-root", str(data), "--dataset", "folder", "--kind", "xqda"]
    run_stage("fit-metric", xqda, [run_dir / "model.xqda.safetensors", run_dir / "model.xqda.json"], record, record_path)
    probe_argv = [sys.executable, __file__, "--work", str(work), "--backbone", args.backbone, "--probe", str(ckpt), str(data)]
    run_stage("probe-before", [*probe_argv, "--rounds", str(args.rounds), "--batches", str(args.batches)], [], record, record_path)
    attack = [*ma, "attack", "--checkpoint", str(ckpt), *common, "--out", str(adv), "--method", "ifgsm", "--eps", "5", "--batch-size", "32"]
    run_stage("attack", attack, [adv], record, record_path)
    record["attack"].setdefault("loop", attack_loop_rate(adv))
    run_stage("probe-after", [*probe_argv, "--rounds", str(args.rounds), "--batches", str(args.batches)], [], record, record_path)
    run_stage("probe-host-io", [sys.executable, __file__, "--work", str(work), "--probe-io", str(data)], [], record, record_path)
    run_stage(
        "evaluate-adversarial",
        [*ma, "evaluate", "--checkpoint", str(ckpt), "--data-root", str(adv), "--dataset", "folder", "--no-progress"],
        [],
        record,
        record_path,
    )
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"measurements: {record_path}")


if __name__ == "__main__":
    main()
