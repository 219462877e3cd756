"""Cost of the model contract probe (:func:`metricattack.models.contract.check_model`).

For each model, in the same run: the probe for evaluation (two no-grad passes on two 128×64
images), the probe for an attack (those plus one pass with a backward to the images), and, as
the baseline, one no-grad feature pass on a batch of ``--batch`` Market-1501 crops (128×64, what
``extract_features`` runs per batch). Each is timed in turns with the others (``--repeats``
rounds after a warm-up, medians), on a fresh model object per probe (the probe runs once per
model object; a second call costs nothing). Printed: seconds, and the probe's cost in images
of feature extraction (probe time / per-image time of the batch).

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_contract.py`` (``--threads N``, ``--batch B``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from metricattack.models.contract import check_model
from metricattack.models.hacnn import HACNN
from metricattack.models.reid import ReIDModel

CLASSES = 751
MODELS: dict[str, Callable[[], nn.Module]] = {
    "ResNet-50 (B1) 256x128": lambda: ReIDModel("resnet50", CLASSES, (256, 128)),
    "HACNN 160x64": lambda: HACNN(CLASSES),
    "ResNet-18 64x32 (quickstart B1)": lambda: ReIDModel("resnet18", CLASSES, (64, 32), last_stride=2),
}


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="images of the baseline feature batch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = torch.rand(args.batch, 3, 128, 64)
    models = {name: make().eval() for name, make in MODELS.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.repeats + 1):
        for name, model in models.items():
            with torch.no_grad():
                t_batch = seconds(lambda model=model: model(batch))
            fresh = MODELS[name]().eval()
            fresh.load_state_dict(model.state_dict())
            t_features = seconds(lambda fresh=fresh, name=name: check_model(fresh, name))
            fresh = MODELS[name]().eval()
            fresh.load_state_dict(model.state_dict())
            t_attack = seconds(lambda fresh=fresh, name=name: check_model(fresh, name, purpose="attack"))
            t_again = seconds(lambda fresh=fresh, name=name: check_model(fresh, name, purpose="attack"))
            if round_:  # the first round warms up
                for key, value in (("batch", t_batch), ("features", t_features), ("attack", t_attack), ("again", t_again)):
                    times.setdefault((name, key), []).append(value)
    print(f"threads {args.threads}, baseline batch {args.batch} x 128x64, medians of {args.repeats} rounds")
    for name in models:
        med = {key: statistics.median(times[(name, key)]) for key in ("batch", "features", "attack", "again")}
        per_image = med["batch"] / args.batch
        print(
            f"{name:32s} batch {med['batch']:6.3f} s ({1000 * per_image:5.1f} ms/image) | probe: evaluate {med['features']:6.3f} s "
            f"(= {med['features'] / per_image:4.1f} images), attack {med['attack']:6.3f} s (= {med['attack'] / per_image:4.1f} images), "
            f"repeated call {1e6 * med['again']:.0f} us"
        )


if __name__ == "__main__":
    main()
