"""Experiments behind the quickstart's setting (issue #11): what makes white-box I-FGSM strong.

Each *cell* is one synthetic dataset (SynthConfig fields) and one training recipe (the
quickstart's B1 recipe with dotted overrides). For each cell the script trains the model
(cached by content under ``--out``), then measures on the test split:

* clean rank-1 / mAP and the chance mAP of the gallery (Market AP, squared Euclidean);
* white-box non-targeted FGSM and I-FGSM at ε = 5 (α = 1, 6 steps), images quantised to the
  1/255 grid as when saved: mAP after the attack and the cut ``1 − adv / clean``;
* white-box targeted I-FGSM at ε = 5 (every attacked gallery image pulled toward one random probe of
  another identity, the benchmark's ``targeted`` setting): the share of them in their probe's top-10;
* ``reach``: the first-order distance an ε = 5 L∞ budget can move a gallery feature along a
  random unit direction ``u`` of feature space, ``ε/255 · ‖∇ₓ⟨u, f(x)⟩‖₁``, mean over images,
  divided by the mean distance between features of different identities (‖f(x) − f(y)‖):
  a smoothness measure that needs no attack (larger = easier to move features across identities);
* CPU seconds of training and of the I-FGSM attack (``time.process_time``, this process only).

Run (one thread; cells of a sweep run one after the other, results print as Markdown rows):

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/miniature_lab.py --sweep resolution --out /tmp/mini

``--sweep`` names a list of cells defined in :data:`SWEEPS`; ``--seeds`` repeats every cell
with other training seeds; ``--set`` adds overrides to every cell (``data.height=128``,
``train.model.backbone=resnet50``, ``eval.feature_space=pooled``: retrieve with another feature space
of the same trained model). Sweeps named ``qs-*`` start from the quickstart after issue #11's first
step (300 distractors, 10 junk: :data:`QS_GALLERY`) instead of the old quickstart's data.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metricattack.attacks.engine import attack_batches, clean_features, plan_attack
from metricattack.attacks.evaluation import mean_true_positive_distance, targeted_success, true_positive_pairs
from metricattack.attacks.ops import quantize
from metricattack.attacks.spec import AttackSpec
from metricattack.config import validate
from metricattack.data.layouts import load_dataset
from metricattack.data.synthetic import SynthConfig, generate
from metricattack.data.types import ReIDDataset
from metricattack.evaluation.chance import dataset_chance
from metricattack.evaluation.ranking import evaluate_distances
from metricattack.io import sha256_json
from metricattack.metrics.distance import EuclideanMetric
from metricattack.models.checkpoint import load_model
from metricattack.training import TrainConfig, train

#: The quickstart's dataset before issue #11 (40 train / 30 test identities, 64×32).
BASE_DATA: dict[str, Any] = {
    "seed": 0,
    "num_train_ids": 40,
    "num_test_ids": 30,
    "num_cameras": 3,
    "images_per_camera": 2,
    "height": 64,
    "width": 32,
    "num_distractors": 10,
    "num_junk": 5,
}
#: The quickstart's B1 recipe before issue #11 (ResNet-18, CE with label smoothing, 12 epochs).
BASE_TRAIN: dict[str, Any] = {
    "data": {"dataset": "folder", "root": "", "cache": True},
    "model": {"backbone": "resnet18", "input_size": [64, 32], "last_stride": 2},
    "loss": {"cross_entropy": {"label_smoothing": 0.1}},
    "optimizer": {"lr": 0.002, "weight_decay": 0.0005},
    "schedule": {"epochs": 12, "warmup_epochs": 1, "lr_steps": [9]},
    "batch": {"batch_size": 32},
    "augmentation": {"flip": True, "pad": 4},
    "device": "cpu",
    "progress": False,
    "checkpoint_every": 100,
    "seed": 0,
}


@dataclass
class Cell:
    """One measurement: a label and dotted overrides of ``data.*`` (SynthConfig) and ``train.*`` (TrainConfig)."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


#: The pre-training world of the ImageNet proxy: more identities, another seed (no test identity in common).
PRETRAIN_DATA: dict[str, Any] = {**BASE_DATA, "seed": 1000, "num_train_ids": 400, "num_test_ids": 2, "num_distractors": 0, "num_junk": 0}


#: The quickstart's gallery after issue #11's first step: 300 distractors and 10 junk beside the test identities.
QS_GALLERY: dict[str, Any] = {"data.num_distractors": 300, "data.num_junk": 10}


def _qs(label: str, **overrides: Any) -> Cell:
    """A cell on the quickstart's gallery (:data:`QS_GALLERY`) plus ``overrides`` (``data__x`` = ``data.x``)."""
    return Cell(label, {**QS_GALLERY, **{k.replace("__", "."): v for k, v in overrides.items()}})


#: Cross-entropy (label smoothing 0.1) plus batch-hard triplet, and the P×K batches the triplet needs.
_CE_TRIPLET = {"cross_entropy": {"label_smoothing": 0.1}, "triplet": {"margin": 0.3}}
_PK = {"batch_size": 32, "sampler": "pk", "images_per_id": 4}


#: 240 training images whatever the images per camera (the 40 training identities keep 2 per camera).
_TRAIN_240 = {"data__train_images": 240}


def _size(h: int, w: int) -> dict[str, Any]:
    """Data rendered at h×w, model input h×w, padding scaled with the size (4 px at 64×32)."""
    return {"data.height": h, "data.width": w, "train.model.input_size": [h, w], "train.augmentation.pad": max(1, h // 16)}


SWEEPS: dict[str, list[Cell]] = {
    "resolution": [Cell(f"{h}x{w}", _size(h, w)) for h, w in ((32, 16), (64, 32), (96, 48), (128, 64))],
    "capacity": [Cell(b, {"train.model.backbone": b}) for b in ("resnet18", "resnet34", "resnet50", "densenet121")],
    "recipe": [
        Cell("quickstart recipe (LS 0.1, WD 5e-4, 12 ep)"),
        Cell("no label smoothing", {"train.loss.cross_entropy.label_smoothing": 0.0}),
        Cell("no weight decay", {"train.optimizer.weight_decay": 0.0}),
        Cell("no LS, no WD", {"train.loss.cross_entropy.label_smoothing": 0.0, "train.optimizer.weight_decay": 0.0}),
        Cell("6 epochs", {"train.schedule.epochs": 6, "train.schedule.lr_steps": [5]}),
        Cell("24 epochs", {"train.schedule.epochs": 24, "train.schedule.lr_steps": [18]}),
        Cell("no BN neck", {"train.model.neck": "none"}),
        Cell("last stride 1", {"train.model.last_stride": 1}),
        Cell("no augmentation", {"train.augmentation.flip": False, "train.augmentation.pad": 0}),
    ],
    "dimension": [Cell(f"features reduced to {d}-d", {"train.model.reduce_dim": d}) for d in (32, 64, 128)],
    "upsample": [
        Cell("data 64x32, input 128x64", {"train.model.input_size": [128, 64]}),
        Cell("data 32x16, input 64x32", {"data.height": 32, "data.width": 16, "train.augmentation.pad": 2}),
    ],
    "texture": [Cell(f"texture {t}", {"data.texture": t}) for t in (0, 8, 16, 32)],
    "difficulty": [Cell(f"difficulty {d:g}", {"data.difficulty": d}) for d in (0.0, 0.5, 1.0, 2.0)],
    "pretrain": [
        Cell("from scratch"),
        Cell("pre-trained on 400 other identities, 12 ep", {"pretrain.epochs": 12}),
        Cell("pre-trained on 400 other identities, 4 ep", {"pretrain.epochs": 4}),
    ],
    "gallery": [
        Cell(f"{d} distractors, {k} per camera", {"data.num_distractors": d, "data.images_per_camera": k})
        for k, d in ((2, 10), (2, 100), (2, 300), (1, 300))
    ],
    # --- on the quickstart's gallery (300 distractors): what shrinks the margins toward Market-1501's
    "qs-outfits": [_qs("own outfits")] + [_qs(f"{n} outfits", data__outfits=n) for n in (20, 5)],
    "qs-identities": [_qs(f"{n} test ids, 1 per camera", data__num_test_ids=n, data__images_per_camera=1, **_TRAIN_240) for n in (30, 100)],
    "qs-difficulty": [_qs(f"difficulty {d:g}", data__difficulty=d) for d in (1.5, 2.0)],
    "qs-distractors": [_qs(f"{d} distractors", data__num_distractors=d) for d in (1200, 3000)],
    "qs-geometry": [
        _qs("BN neck, pooled features", eval__feature_space="pooled"),
        _qs("no BN neck (pooled features)", train__model__neck="none"),
    ],
    "qs-recipe": [
        _qs("CE + triplet (P×K 8×4)", train__loss=_CE_TRIPLET, train__batch=_PK),
        _qs("no label smoothing", train__loss__cross_entropy__label_smoothing=0.0),
        _qs("6 epochs", train__schedule__epochs=6, train__schedule__lr_steps=[5]),
        _qs("ResNet-50", train__model__backbone="resnet50"),
    ],
    "qs-dimension": [_qs(f"features reduced to {d}-d", train__model__reduce_dim=d) for d in (16, 32)],
    # the quickstart's four base models (B1-B4 recipes); add the data change under test with --set
    "qs-models": [
        _qs("B1 ResNet-18 CE"),
        _qs("B2 ResNet-34 CE", train__model__backbone="resnet34"),
        _qs("B3 DenseNet-121 CE", train__model={"backbone": "densenet121", "input_size": [64, 32]}),
        _qs("B4 ResNet-18 triplet", train__loss={"triplet": {"margin": 0.3}}, train__batch=_PK),
    ],
}


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def resolve(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(synth config, train config, pre-training, evaluation)`` dicts of the base settings plus ``overrides``.

    ``pretrain.epochs`` > 0 pre-trains the same recipe on :data:`PRETRAIN_DATA` (rendered at the
    cell's size; ``pretrain.data.*`` overrides it) and starts the cell's training from that trunk.
    ``eval.feature_space`` retrieves (and attacks) with another feature space of the trained model.
    """
    data, recipe = copy.deepcopy(BASE_DATA), copy.deepcopy(BASE_TRAIN)
    pre: dict[str, Any] = {"epochs": 0, "data": copy.deepcopy(PRETRAIN_DATA)}
    evaluation: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head in ("data", "train", "pretrain", "eval"):
            _set({"data": data, "train": recipe, "pretrain": pre, "eval": evaluation}[head], rest, value)
        else:
            raise SystemExit(f"override {key!r} must start with data., train., pretrain. or eval.")
    pre["data"].update(height=data["height"], width=data["width"])
    return data, recipe, pre, evaluation


def trunk_weights(out: Path, recipe: dict[str, Any], pre: dict[str, Any]) -> Path:
    """Pre-train ``recipe`` on the pre-training world; its trunk saved as a torchvision state dict."""
    import torchvision.models as tvm
    from safetensors.torch import save_file

    recipe = copy.deepcopy(recipe)
    recipe["schedule"] = {"epochs": pre["epochs"], "warmup_epochs": 1, "lr_steps": [max(2, pre["epochs"] * 3 // 4)]}
    recipe["model"]["pretrained"] = False
    ckpt, _ = trained(out, dataset(out, pre["data"]), recipe)
    path = ckpt.parent / "trunk-torchvision.safetensors"
    if not path.is_file():
        backbone = recipe["model"]["backbone"]
        if not backbone.startswith("resnet"):
            raise SystemExit("the pre-training proxy supports ResNets only")
        full = getattr(tvm, backbone)()
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        trunk = load_model(ckpt).trunk.state_dict()
        state = full.state_dict()
        state.update({f"{names[int(k.split('.', 1)[0])]}.{k.split('.', 1)[1]}": v for k, v in trunk.items()})
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def dataset(out: Path, synth: dict[str, Any]) -> Path:
    """The synthetic dataset of ``synth`` under ``out/data/<hash>`` (generated once)."""
    return generate(out / "data" / sha256_json(synth)[:12], SynthConfig(**synth))


def trained(out: Path, root: Path, recipe: dict[str, Any]) -> tuple[Path, float]:
    """Checkpoint of ``recipe`` trained on ``root`` (cached) and the CPU seconds it took (0 when cached)."""
    recipe = copy.deepcopy(recipe)
    recipe["data"]["root"] = str(root)
    folder = out / "models" / sha256_json(recipe)[:12]
    start = time.process_time()
    ckpt = train(validate(TrainConfig, recipe, "lab recipe"), folder)
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=1), encoding="utf-8")
    return ckpt, time.process_time() - start


def _map(ds: ReIDDataset, q: torch.Tensor, g: torch.Tensor) -> tuple[float, float]:
    """(rank-1, mAP) in % of query features ``q`` against gallery features ``g``."""
    metric = EuclideanMetric()
    res = evaluate_distances(
        metric.pairwise(q, g),
        [r.pid for r in ds.query],
        [r.pid for r in ds.gallery],
        [r.camid for r in ds.query],
        [r.camid for r in ds.gallery],
        ap="market",
    )
    return 100 * res.cmc[1], 100 * res.mAP


def white_box(model: torch.nn.Module, ds: ReIDDataset, method: str, eps: float = 5.0, batch_size: int = 64) -> tuple[torch.Tensor, float]:
    """Gallery features after the white-box non-targeted attack (quantised images) and its CPU seconds."""
    start = time.process_time()
    feats = clean_features([model], ds, batch_size=batch_size)
    spec = AttackSpec(method=method, eps=eps)
    plan = plan_attack([model], EuclideanMetric(), ds, "gallery", spec, feats)
    out = feats[0].gallery.clone()
    with torch.no_grad():
        for batch in attack_batches(plan, spec, batch_size=batch_size):
            pixels = quantize(batch.adversarial, batch.clean, eps).float() / 255.0
            out[batch.indices] = model(pixels).float()
    return out, time.process_time() - start


def targeted_top10(
    model: torch.nn.Module, ds: ReIDDataset, q: torch.Tensor, g: torch.Tensor, eps: float = 5.0, batch_size: int = 64
) -> float:
    """Share of attacked gallery images in their target probe's top-10 after white-box targeted I-FGSM (quantised)."""
    spec = AttackSpec(method="ifgsm", eps=eps)
    feats = clean_features([model], ds, batch_size=batch_size)
    plan = plan_attack([model], EuclideanMetric(), ds, "targeted", spec, feats)
    assert plan.targets is not None
    out = g.clone()
    with torch.no_grad():
        for batch in attack_batches(plan, spec, batch_size=batch_size):
            out[batch.indices] = model(quantize(batch.adversarial, batch.clean, eps).float() / 255.0).float()
    return targeted_success(EuclideanMetric(), q, out, ds, plan.targets)["top10"]


def reach(model: torch.nn.Module, ds: ReIDDataset, feats_g: torch.Tensor, eps: float = 5.0, seed: int = 0) -> float:
    """First-order ε-reach along a random feature direction / mean inter-identity feature distance."""
    from metricattack.data.loading import make_loader

    gen = torch.Generator().manual_seed(seed)
    records = [r for r in ds.gallery if r.pid > 0]
    total, count = 0.0, 0
    for images, _ in make_loader(records, 64):
        u = torch.nn.functional.normalize(torch.randn(images.shape[0], feats_g.shape[1], generator=gen), dim=1)
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((model(x) * u).sum(), x)
        total += float(grad.abs().flatten(1).sum(1).sum()) * eps / 255.0
        count += images.shape[0]
    pids = torch.tensor([r.pid for r in ds.gallery])
    keep = pids > 0
    f, p = feats_g[keep], pids[keep]
    d = torch.cdist(f, f)
    other = p[:, None] != p[None, :]
    return (total / count) / float(d[other].mean())


def negative_distances(ds: ReIDDataset, q: torch.Tensor, g: torch.Tensor) -> tuple[float, float]:
    """Squared Euclidean distances from queries to gallery images of other identities (junk excluded):
    (mean over all such pairs, mean over queries of the nearest one)."""
    qp = torch.tensor([r.pid for r in ds.query])
    gp = torch.tensor([r.pid for r in ds.gallery])
    d = EuclideanMetric().pairwise(q, g)
    negative = (qp[:, None] != gp[None, :]) & (gp[None, :] >= 0)
    nearest = torch.where(negative, d, torch.full_like(d, float("inf"))).min(1).values
    return float(d[negative].mean()), float(nearest.mean())


def measure(out: Path, cell: Cell, extra: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train (cached) and attack one cell; returns the row's numbers."""
    synth, recipe, pre, evaluation = resolve({**cell.overrides, **extra, "train.seed": seed})
    if pre["epochs"]:
        recipe["model"]["pretrained"] = str(trunk_weights(out, recipe, pre))
    root = dataset(out, synth)
    ckpt, train_cpu = trained(out, root, recipe)
    model = load_model(ckpt).eval()
    if "feature_space" in evaluation:
        model.feature_space = evaluation["feature_space"]
    ds = load_dataset("folder", root)
    feats = clean_features([model], ds, batch_size=64)[0]
    r1, clean = _map(ds, feats.query, feats.gallery)
    fgsm, _ = white_box(model, ds, "fgsm")
    ifgsm, attack_cpu = white_box(model, ds, "ifgsm")
    pairs = true_positive_pairs(ds)
    metric = EuclideanMetric()
    return {
        "tp_clean": mean_true_positive_distance(metric, feats.query, feats.gallery, pairs),
        "tp_ifgsm": mean_true_positive_distance(metric, feats.query, ifgsm, pairs),
        **dict(zip(("negative", "nearest_negative"), negative_distances(ds, feats.query, feats.gallery), strict=True)),
        "cell": cell.label,
        "seed": seed,
        "rank1": r1,
        "clean_mAP": clean,
        "chance_mAP": 100 * dataset_chance(ds, "market").mAP,
        "fgsm_mAP": _map(ds, feats.query, fgsm)[1],
        "ifgsm_mAP": _map(ds, feats.query, ifgsm)[1],
        "targeted_top10": targeted_top10(model, ds, feats.query, feats.gallery),
        "reach": reach(model, ds, feats.gallery),
        "train_cpu": train_cpu,
        "attack_cpu": attack_cpu,
        "gallery": len(ds.gallery),
        "attacked": sum(r.pid > 0 for r in ds.gallery),
    }


HEADER = (
    "| cell | seed | rank-1 | clean mAP | chance mAP | FGSM mAP | I-FGSM mAP | I-FGSM cut | targeted top-10 | TP dist clean → I-FGSM | negative dist (mean / nearest) | reach | train CPU s | attack CPU s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(r: dict[str, Any]) -> str:
    cut = 1 - r["ifgsm_mAP"] / r["clean_mAP"] if r["clean_mAP"] else float("nan")
    return (
        f"| {r['cell']} | {r['seed']} | {r['rank1']:.1f} | {r['clean_mAP']:.1f} | {r['chance_mAP']:.2f} | {r['fgsm_mAP']:.1f} | "
        f"{r['ifgsm_mAP']:.1f} | {cut:.0%} | {100 * r.get('targeted_top10', float('nan')):.1f}% | {r['tp_clean']:.2f} → {r['tp_ifgsm']:.2f} | {r['negative']:.2f} / {r.get('nearest_negative', float('nan')):.2f} | {r['reach']:.3f} | {r['train_cpu']:.0f} | {r['attack_cpu']:.0f} |"
    )


def print_table(log: Path, sweep: str) -> None:
    """The latest row of every (cell, overrides, seed) of ``sweep`` recorded in ``log``, as Markdown."""
    latest: dict[str, dict[str, Any]] = {}
    trained: dict[str, float] = {}  # a re-measured cell reuses its model (train CPU 0): keep the training's time
    for line in log.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        key = json.dumps([r["cell"], r["extra"], r["seed"]])
        trained[key] = max(trained.get(key, 0.0), r["train_cpu"])
        if r["sweep"] == sweep and "tp_clean" in r:
            latest[key] = {**r, "train_cpu": trained[key]}
    print(HEADER)
    for r in latest.values():
        print(row(r))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), required=True)
    parser.add_argument("--only", nargs="*", default=None, help="cell labels to run (default: all of the sweep)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every cell, e.g. data.height=128")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/miniature_lab"))
    parser.add_argument("--table", action="store_true", help="print the sweep's latest rows from OUT/rows.jsonl, measure nothing")
    args = parser.parse_args()
    if args.table:
        print_table(args.out / "rows.jsonl", args.sweep)
        return
    torch.set_num_threads(args.threads)
    extra = {k: _parse_value(v) for k, _, v in (s.partition("=") for s in args.set)}
    print(f"sweep {args.sweep}, extra overrides {extra or 'none'}, {args.threads} thread(s)", flush=True)
    print(HEADER, flush=True)
    log = args.out / "rows.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    for cell in SWEEPS[args.sweep]:
        if args.only and cell.label not in args.only:
            continue
        for seed in args.seeds:
            r = measure(args.out, cell, extra, seed)
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"sweep": args.sweep, "extra": extra, **r}) + "\n")
            print(row(r), flush=True)


if __name__ == "__main__":
    main()
