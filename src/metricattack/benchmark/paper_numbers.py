"""The paper's own numbers, for the report to show beside ours.

Bai, Li, Zhou, Li, Torr, "Adversarial Metric Attack and Defense for Person Re-identification".
Every block below is one table of the paper (or one sentence of its text), transcribed row by
row in the paper's layout: ``[12]`` is HACNN (Li et al., CVPR 2018), ``[50]`` is Mancs
(Wang et al., ECCV 2018); the paper's model names B1-B4 are the base models (ResNet-50,
ResNeXt-50, DenseNet-121 with cross-entropy; ResNet-50 with triplet loss). All numbers are
percentages (mAP, rank-1), attacks at ε = 5 (α = 1, μ = 1, n = min(ε + 4, 1.25 ε)),
non-targeted, on the gallery, Euclidean metric. The paper names no AP code; we compare its
numbers with runs that use the official Market-1501 evaluation's AP (``market``, our choice).

:func:`paper_values` says which numbers a run may show: the paper's own for a run on
Market-1501 or DukeMTMC-reID in the paper's setting; the Market-1501 numbers as a labelled
*reference* for the synthetic demo (another dataset and smaller models: a scale to compare
with, not the same experiment), and as a reference whenever the AP convention or the attack
differs from the paper's; none for other datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..attacks.methods import METHODS

MARKET = "market1501"
DUKE = "dukemtmc"
DATASET_TITLES = {MARKET: "Market-1501", DUKE: "DukeMTMC-reID"}
MODELS = ("B1", "B2", "B3", "B4", "HACNN", "Mancs")
BASE_MODELS = MODELS[:4]
#: A method's label in the paper's tables -> its registered name (labels from the METHODS registry).
_METHOD_OF_LABEL = {METHODS.get(name).label: name for name in METHODS}
#: The methods of the paper's Tables 2-4, as they label them.
PAPER_METHODS = tuple(_METHOD_OF_LABEL[label] for label in ("FGSM", "I-FGSM", "MI-FGSM"))
_MODEL_OF_REF = {"[12]": "HACNN", "[50]": "Mancs"}

# Table 1: "Performance of the four base models and two state-of-the-art methods implemented in
# this work." Columns: Market-1501 rank-1, mAP; DukeMTMC-reID rank-1, mAP.
TABLE1 = """
B1    91.30 77.52 82.85 67.72
B2    91.44 78.21 83.03 67.85
B3    91.95 79.08 83.34 68.30
B4    84.29 67.86 76.57 57.31
[12]  90.56 75.28 80.70 64.44
[50]  93.17 82.50 85.23 72.89
"""

# Table 2 (Market-1501) and Table 3 (DukeMTMC-reID): "The mAP comparison of white-box attack (in
# shadow) and black-box attack (others) when ε = 5". Rows: attacked model × method; columns:
# tested model B1 B2 B3 B4 [12] [50]; header: the clean mAP of each tested model.
TABLE2_HEADER = "B1 (77.52) B2 (78.21) B3 (79.08) B4 (67.86) [12] (75.28) [50] (82.50)"
TABLE2 = """
B1 FGSM     7.054 33.73 36.43 30.53 44.00 43.49
B1 I-FGSM   0.367 25.12 29.42 24.11 43.51 34.68
B1 MI-FGSM  0.757 22.18 25.53 21.43 37.98 30.90
B2 FGSM     35.83 10.47 42.71 37.24 48.45 51.23
B2 I-FGSM   26.87 0.458 35.96 32.91 48.06 45.69
B2 MI-FGSM  23.01 0.960 30.77 28.47 41.84 39.80
B3 FGSM     32.84 36.89 9.178 33.91 44.40 45.95
B3 I-FGSM   24.72 28.89 0.519 29.26 43.99 39.49
B3 MI-FGSM  22.29 26.13 1.022 26.26 38.92 35.31
B4 FGSM     41.17 47.13 48.23 4.320 51.10 51.87
B4 I-FGSM   38.68 47.08 48.89 0.211 54.72 50.89
B4 MI-FGSM  32.31 39.58 41.47 0.430 47.57 43.16
"""
TABLE3_HEADER = "B1 (67.72) B2 (67.85) B3 (68.30) B4 (57.31) [12] (64.44) [50] (72.89)"
TABLE3 = """
B1 FGSM     4.469 27.15 31.05 21.27 39.50 36.63
B1 I-FGSM   0.178 22.65 28.37 17.96 41.71 32.12
B1 MI-FGSM  0.315 17.16 22.01 14.08 33.96 24.74
B2 FGSM     27.87 5.775 34.28 27.42 41.42 42.87
B2 I-FGSM   24.58 0.159 32.44 26.50 43.59 42.39
B2 MI-FGSM  18.47 0.342 25.39 20.58 36.09 33.37
B3 FGSM     26.54 28.36 5.223 25.15 38.32 39.30
B3 I-FGSM   22.43 23.96 0.191 23.30 39.98 37.11
B3 MI-FGSM  18.12 19.28 0.387 18.93 33.29 29.85
B4 FGSM     32.02 38.37 40.77 2.071 45.52 43.70
B4 I-FGSM   33.93 42.06 44.93 0.074 50.61 47.34
B4 MI-FGSM  24.99 32.34 35.32 0.137 42.71 36.57
"""

# Table 4: "The mAP comparison of multi-model attack (white-box in shadow) when ε = 5."
# Rows: hold-out model × method; columns: Market-1501 Ensemb. Hold-out HACNN Mancs, then the
# same four for DukeMTMC-reID.
TABLE4 = """
-B1 FGSM     20.61 26.52 40.68 39.37  13.65 20.52 35.11 32.26
-B1 I-FGSM   3.839 14.55 35.62 26.35  2.058 12.72 32.11 23.48
-B1 MI-FGSM  5.900 14.94 33.15 25.88  3.213 11.78 28.23 20.81
-B2 FGSM     19.76 29.12 39.43 36.89  13.32 22.83 34.33 30.21
-B2 I-FGSM   3.801 17.03 34.40 22.87  2.019 14.11 31.31 20.04
-B2 MI-FGSM  5.840 17.48 32.21 23.04  3.125 13.18 27.60 18.18
-B3 FGSM     20.64 32.62 40.62 38.64  13.99 26.88 35.34 31.26
-B3 I-FGSM   3.839 21.20 35.58 24.75  2.089 19.46 32.80 21.42
-B3 MI-FGSM  5.905 20.73 32.89 24.44  3.265 17.44 28.45 18.86
-B4 FGSM     21.37 26.07 38.15 36.61  13.96 17.72 32.37 29.28
-B4 I-FGSM   4.521 16.47 32.64 22.27  2.483 11.65 28.99 18.52
-B4 MI-FGSM  6.847 16.66 30.45 22.75  3.693 10.93 25.46 17.14
"""
TABLE4_COLUMNS = ("ensemble", "holdout", "HACNN", "Mancs")

# Table 5 (Market-1501 only): "The mAP comparison between normally trained models (#N) and
# metric-preserving models (#M)"; #I is the relative improvement. Columns: #N #M #I for B1..B4;
# the adversarial galleries are made with I-FGSM against the model in parentheses.
TABLE5 = """
Original   77.52 76.69 -1.07%  78.21 76.74 -1.87%  79.08 77.25 -2.31%  67.86 59.87 -11.7%
Adv.(B1)   0.367 74.14 +2.0e4% 25.12 70.54 +180%   29.42 72.45 +146%   24.11 53.58 +122%
Adv.(B2)   26.87 72.64 +170%   0.458 76.23 +1.6e4% 35.96 72.82 +102%   32.91 52.81 +60.4%
Adv.(B3)   24.72 70.46 +185%   28.89 68.67 +137%   0.519 76.93 +1.4e4% 29.26 51.03 +74.4%
Adv.(B4)   38.68 72.65 +87.8%  47.08 72.14 +53.2%  48.89 73.41 +50.1%  0.211 57.45 +2.7e4%
"""

# Sec. 5.1, first paragraph (Market-1501, B1, I-FGSM, ε = 5): clean mAP 77.52 → 0.367 under the
# metric attack, 52.93 under the classification attack; mean distance to true positives 0.80 → 1.42
# (the paper does not say which distance; ours is squared Euclidean).
CLASSIFICATION = {"clean_mAP": 77.52, "metric_attack_mAP": 0.367, "classification_attack_mAP": 52.93}
CLASSIFICATION_TP_DISTANCE = {"clean": 0.80, "metric_attack": 1.42}
# Sec. 5.4 (Market-1501, B1, clean): XQDA rank-1 89.73 / mAP 75.86; Euclidean 91.30 / 77.52 (Table 1).
XQDA_CLEAN = {"rank1": 89.73, "mAP": 75.86}


def _rows(block: str) -> list[list[str]]:
    return [line.split() for line in block.strip().splitlines()]


def _model(name: str) -> str:
    return _MODEL_OF_REF.get(name, name)


def table1(dataset: str) -> dict[str, dict[str, float]]:
    """Table 1 on ``dataset`` (MARKET or DUKE): model → {"rank1", "mAP"}."""
    offset = 1 if dataset == MARKET else 3
    return {_model(r[0]): {"rank1": float(r[offset]), "mAP": float(r[offset + 1])} for r in _rows(TABLE1)}


def table2(dataset: str) -> dict[tuple[str, str], dict[str, float]]:
    """Table 2 (MARKET) or Table 3 (DUKE): (attacked model, method) → tested model → mAP."""
    return {
        (r[0], _METHOD_OF_LABEL[r[1]]): dict(zip(MODELS, map(float, r[2:]), strict=True))
        for r in _rows(TABLE2 if dataset == MARKET else TABLE3)
    }


def table2_clean(dataset: str) -> dict[str, float]:
    """The clean mAP in the header of Table 2 (MARKET) or Table 3 (DUKE): tested model → mAP."""
    words = (TABLE2_HEADER if dataset == MARKET else TABLE3_HEADER).split()
    return {_model(name): float(value.strip("()")) for name, value in zip(words[::2], words[1::2], strict=True)}


def table4(dataset: str) -> dict[tuple[str, str], dict[str, float]]:
    """Table 4's half for ``dataset``: (hold-out model, method) → {"ensemble", "holdout", "HACNN", "Mancs"}."""
    offset = 2 if dataset == MARKET else 6
    return {
        (r[0].lstrip("-"), _METHOD_OF_LABEL[r[1]]): dict(zip(TABLE4_COLUMNS, map(float, r[offset : offset + 4]), strict=True))
        for r in _rows(TABLE4)
    }


def table5() -> dict[tuple[str, str], tuple[float, float, str]]:
    """Table 5 (Market-1501): (gallery, base model) → (#N mAP, #M mAP, #I as printed).

    Galleries are named as in our results: ``original`` and ``adv(B1)`` .. ``adv(B4)``."""
    out = {}
    for r in _rows(TABLE5):
        gallery = "original" if r[0] == "Original" else r[0].replace("Adv.", "adv")
        for k, base in enumerate(BASE_MODELS):
            n, m, i = r[1 + 3 * k : 4 + 3 * k]
            out[(gallery, base)] = (float(n), float(m), i)
    return out


def paper_model(name: str) -> str | None:
    """The paper's model a model of ours is compared with, by name (``B1``..``B4``, ``HACNN``,
    ``Mancs``, any case); None for a model the paper does not have."""
    return next((m for m in MODELS if m.lower() == name.lower()), None)


PAPER_ATTACK = {"eps": 5.0, "metric": "euclidean"}
"""The paper's attack (Sec. 5, Experimental Design), in our config's keys."""
PAPER_OPTIONS = {"alpha": 1.0, "mu": 1.0, "steps": None}
"""The paper's method options (``attack.options.<method>``); ``steps: None`` = its rule."""
_ATTACK_SYMBOLS = {"eps": "ε", "alpha": "α", "mu": "μ", "steps": "n", "metric": "the metric"}


def _show(value: object) -> str:
    if value is None:
        return "min(ε + 4, 1.25 ε)"
    return f"{value:g}" if isinstance(value, float | int) else str(value)


@dataclass(frozen=True)
class PaperValues:
    """Which of the paper's numbers a table shows, and how they are labelled.

    ``dataset`` is the paper's dataset the numbers are for (MARKET or DUKE); ``differences``
    lists how the run differs from the paper's measurement (another dataset, another AP
    convention, another ε ...): when it is not empty the numbers are a reference for scale,
    never the same measurement."""

    dataset: str
    differences: tuple[str, ...] = ()

    @property
    def reference(self) -> bool:
        return bool(self.differences)

    @property
    def dataset_title(self) -> str:
        return DATASET_TITLES[self.dataset]

    def note(self, source: str) -> str:
        """The sentence above a table saying where the values marked "paper" come from."""
        where = f"Values marked “paper” are the paper's {source} on {self.dataset_title}"
        if self.reference:
            return f"{where}, a reference for scale only, not the same measurement as ours: {'; '.join(self.differences)}."
        return f"{where}, measured in the same setting as this run."


def paper_values(dataset: str, ap: str, attack: dict[str, Any] | None = None) -> PaperValues | None:
    """The paper's numbers a table of a run on ``dataset`` with AP convention ``ap`` shows; ``attack``
    is the run's attack config for tables of attacks (None for clean accuracy).

    The run's own dataset's numbers when the paper has that dataset, the Market-1501 numbers as a
    reference for the synthetic data, none for a dataset the paper did not use; a reference (with
    the differences named) whenever the AP convention or the attack differs from the paper's."""
    if dataset in DATASET_TITLES:
        differences = []
        paper_dataset = dataset
    elif dataset == "synthetic":
        differences = ["this run is on synthetic data with smaller models (the paper: ResNet-50-class models on the real dataset)"]
        paper_dataset = MARKET
    else:
        return None
    if ap != "market":
        differences.append(
            f"this run's AP convention is {ap!r} (the paper's numbers are compared with the official Market-1501 AP; the paper names no AP code)"
        )
    for key, value in PAPER_ATTACK.items():
        ours = (attack or {}).get(key, value)
        if attack is not None and ours != value:
            differences.append(f"this run attacks with {_ATTACK_SYMBOLS[key]} = {_show(ours)} (the paper: {_show(value)})")
    for method, options in ((attack or {}).get("options") or {}).items():
        for key, value in PAPER_OPTIONS.items():
            if key in options and options[key] != value:
                differences.append(
                    f"this run attacks with {_ATTACK_SYMBOLS[key]} = {_show(options[key])} for {method} (the paper: {_show(value)})"
                )
    return PaperValues(paper_dataset, tuple(differences))
