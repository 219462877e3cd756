"""The result of a robustness evaluation (``robustness.json``) and its JSON schema.

All accuracies are percentages in [0, 100] (AP convention ``ap_convention``); ε in 0..255 units;
costs in forward and backward passes of one image. Intervals are percentile bootstrap intervals
over the queries (:class:`~metricattack.benchmark.evidence.Bootstrap`, seeded by the protocol).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..benchmark.evidence import Bootstrap
from .cascade import CascadeResult
from .flags import Flag
from .protocol import Protocol

RESULT_FORMAT: Literal["metricattack.robustness/1"] = "metricattack.robustness/1"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Estimate(Record):
    """A percentage on the full sample with its bootstrap interval."""

    value: float
    low: float
    high: float


class AttackRow(Record):
    """One run of the cascade (see :class:`~metricattack.robustness.cascade.StageLog`)."""

    attack: str
    run: int = Field(description="start (APGD) or target identity (targeted margin) number, from 0")
    method: str
    objective: str
    steps: int
    attacked: int = Field(description="queries it attacked (those still above chance AP)")
    lowered: int = Field(description="queries whose worst AP it lowered")
    mAP_after: float = Field(description="robust mAP after this run")
    forwards: int
    backwards: int
    zero_gradient: int


class EpsilonResult(Record):
    """Robust accuracy at one ε."""

    eps: float
    mAP: Estimate = Field(description="robust mAP: mean over queries of the lowest AP any attack reached")
    rank1: Estimate = Field(description="robust rank-1: share of queries whose rank-1 survived every attack")
    attacks: list[AttackRow]
    decisive: dict[str, int] = Field(description="attack → queries whose lowest AP it set ('clean': no attack lowered it)")
    references: dict[str, float] = Field(default_factory=dict, description="mAP of each reference attack at this ε (never-weaker check)")


class GallerySideResult(Record):
    """The gallery-side figure (:mod:`metricattack.robustness.gallery`): gallery images perturbed, queries clean."""

    eps: float
    method: str = Field(description="the attack: apgd on the gallery threat model's metric loss (the paper's), one start")
    steps: int
    top_k: int | None = Field(description="budget: only gallery images in the clean top-k of a query of their identity (None: all)")
    eligible: int = Field(description="gallery images the paper's loss moves (an identity with an evaluated query)")
    attacked: int = Field(description="gallery images perturbed (the eligible ones within the budget)")
    mAP: Estimate = Field(description="mAP of the clean queries against the attacked gallery (8-bit images)")
    rank1: Estimate
    references: dict[str, float] = Field(description="mAP of each reference attack on the same gallery images")
    forwards: int
    backwards: int
    zero_gradient: int = Field(description="attacked images with an exactly zero gradient at some APGD step")


class Cost(Record):
    """What the evaluation spent, in passes of one image."""

    forwards: int
    backwards: int
    per_query_forwards: float
    per_query_backwards: float
    cascade_forwards: int = Field(description="forward passes of the cascades (all ε), the checks excluded")
    cascade_backwards: int
    without_cascade_forwards: int = Field(
        description="forward passes the same runs would cost on every query (a run the cascade skipped: at its full budget)"
    )
    without_cascade_backwards: int
    seconds: float


class DatasetRecord(Record):
    name: str
    fingerprint: str
    num_queries: int
    num_valid_queries: int = Field(description="queries with a true match (the averages' denominator)")
    num_gallery: int


class RobustnessResult(Record):
    """Everything one ``metricattack robustness`` run measured."""

    format: Literal["metricattack.robustness/1"] = Field(default=RESULT_FORMAT, description="this file's format and version")
    protocol: Protocol = Field(description="the protocol version with every parameter (ε, cascade, checks, bootstrap)")
    model: dict[str, Any] = Field(description="how the model was loaded (checkpoint and SHA-256, or its source)")
    dataset: DatasetRecord = Field(description="the test split: name, fingerprint, query and gallery counts")
    metric: str = Field(description="the distance of the ranking (and of the attacks' objectives)")
    ap_convention: Literal["market", "noninterp"] = Field(description="'market' (Market-1501 trapezoidal AP) or 'noninterp' (torchreid)")
    clean: Estimate = Field(description="clean mAP")
    clean_rank1: Estimate = Field(description="clean rank-1")
    chance_mAP: float = Field(description="expected mAP of a uniformly random ranking: the floor")
    robust: list[EpsilonResult] = Field(description="one per ε of the protocol; the first is the headline")
    references: dict[str, float] = Field(description="mAP of each reference attack at the headline ε (every ε: in robust)")
    sweep: dict[str, float] = Field(description="ε → mAP of apgd-metric with the sweep's budget (ε-sweep check)")
    gallery: GallerySideResult | None = Field(
        default=None, description="the gallery-side figure at the headline ε (reported separately from the headline; None: not measured)"
    )
    flags: list[Flag] = Field(
        description="the checks (never weaker, ε sweep, convergence, black box, zero gradient, randomness; gallery-never-weaker)"
    )
    randomized: bool = Field(description="the model's features changed between two passes; APGD used EOT")
    cost: Cost = Field(description="forward / backward passes spent, what the cascade saved, seconds")
    provenance: dict[str, Any] = Field(description="software versions, thread counts, seed, creation time")

    @property
    def headline(self) -> EpsilonResult:
        return self.robust[0]

    def flagged(self) -> list[Flag]:
        return [f for f in self.flags if f.status == "flagged"]


def estimate(boot: Bootstrap, key: str) -> Estimate:
    """Mean of evidence vector ``key`` in percent with its bootstrap interval."""
    values = boot.mean(key, 100.0)
    low, high = boot.interval(values)
    return Estimate(value=float(values[0]), low=low, high=high)


def bootstrap(protocol: Protocol, vectors: dict[str, np.ndarray]) -> Bootstrap:
    """The protocol's seeded bootstrap over ``vectors`` (per-query APs and rank-1 hits, NaN without a match)."""
    return Bootstrap(vectors, protocol.bootstrap_resamples, protocol.seed, protocol.confidence)


def epsilon_result(eps: float, cascade: CascadeResult, protocol: Protocol, references: dict[str, float] | None = None) -> EpsilonResult:
    """The robust accuracy of one ε from its cascade, with intervals, beside the reference attacks' mAP at that ε."""
    boot = bootstrap(protocol, {"ap": cascade.ap, "hit": cascade.hit})
    rows = [
        AttackRow(
            attack=log.attack,
            run=log.run,
            method=protocol.step(log.attack).method,
            objective=protocol.step(log.attack).objective,
            steps=protocol.step(log.attack).steps,
            attacked=log.attacked,
            lowered=log.lowered,
            mAP_after=log.mAP_after,
            forwards=log.forwards,
            backwards=log.backwards,
            zero_gradient=log.zero_gradient,
        )
        for log in cascade.log
    ]
    return EpsilonResult(
        eps=eps,
        mAP=estimate(boot, "ap"),
        rank1=estimate(boot, "hit"),
        attacks=rows,
        decisive=cascade.decisive_counts(),
        references=references or {},
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``robustness.json``."""
    return RobustnessResult.model_json_schema()


def schema_markdown() -> str:
    """The text of ``docs/robustness-schema.md``."""
    return "\n".join(
        [
            "# `robustness.json` schema",
            "",
            "Written by `metricattack robustness` (and `metricattack.evaluate_robustness`). Generated from",
            "`metricattack.robustness.result`: regenerate with `python -m metricattack.robustness.result docs/robustness-schema.md`.",
            "",
            "Accuracies are percentages in [0, 100]; ε in 0..255 pixel units; costs in forward / backward",
            "passes of one image. Each `Estimate` holds the value on all queries and its bootstrap interval",
            "over queries (`protocol.bootstrap_resamples` resamples, seed `protocol.seed`).",
            "",
            "## Top-level fields",
            "",
            *[f"- `{name}`: {field.description or ''}" for name, field in RobustnessResult.model_fields.items()],
            "",
            "## JSON Schema",
            "",
            "```json",
            json.dumps(json_schema(), indent=2, sort_keys=True),
            "```",
            "",
        ]
    )


if __name__ == "__main__":  # regenerate docs/robustness-schema.md
    import sys
    from pathlib import Path

    from ..io import atomic_write_text

    atomic_write_text(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/robustness-schema.md"), schema_markdown())
