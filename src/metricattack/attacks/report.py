"""A plain-text summary table of ``attack_results.json``."""

from __future__ import annotations

from typing import Any

from ..compute import Compute
from ..wording import counted
from .spec import describe


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}"


def _model_label(row: dict[str, Any], index: int) -> str:
    record = row.get("model") or {}
    name = record.get("label") or record.get("checkpoint") or f"model {index}"
    return f"{name} ({'white' if row.get('white_box') else 'black'}-box)"


def _compute(results: dict[str, Any]) -> str:
    """`` | compute: bf16`` when the models ran other than in the default fp32 (nothing otherwise)."""
    compute = Compute.model_validate(results.get("compute") or {})
    return "" if compute.is_default else f" | compute: {compute.describe()}"


def format_summary(results: dict[str, Any]) -> str:
    """The attack (method options resolved), rank-1 / mAP clean → adversarial (disk and memory), true-positive
    distances, L∞, cost and zero gradients, targeted success, and the notes (an adversarial mAP
    above the clean one, with its reasons)."""
    calls = results["calls"]
    lines = [
        f"{describe(results['attack'])} | threat model={results['threat_model']} ({results['attacked_split']} attacked: "
        f"{results['num_attacked']}/{results['num_images']} images) | AP: {results['ap_convention']}{_compute(results)}",
        f"L-inf (0..255): max on disk {results['linf_255']['max_disk']:.0f}, in memory {results['linf_255']['max_memory']:.3f} "
        f"(bound {results['linf_255']['bound']})",
        f"cost per attacked image: {calls['forward']['mean']:.4g} forward + {calls['backward']['mean']:.4g} backward passes; "
        f"zero gradient on {counted(calls['zero_gradient']['images'], 'image')}, unmoved: {calls['unmoved']['images']}",
        "",
        f"{'model':<40} {'metric':<12} {'mAP clean':>9} {'mAP disk':>9} {'mAP mem':>9} {'R1 clean':>9} {'R1 disk':>9} {'R1 mem':>9} {'d(tp) clean→disk':>18}",
    ]
    for i, row in enumerate(results["evaluations"]):
        clean, disk, mem = row["clean"], row["adversarial_disk"], row["adversarial_memory"]
        lines.append(
            f"{_model_label(row, i)[:40]:<40} {row['metric'][:12]:<12} {_pct(clean['mAP']):>9} {_pct(disk['mAP']):>9} {_pct(mem['mAP']):>9} "
            f"{_pct(clean['cmc']['1']):>9} {_pct(disk['cmc']['1']):>9} {_pct(mem['cmc']['1']):>9} "
            f"{clean['mean_true_positive_distance']:>8.3f} → {disk['mean_true_positive_distance']:.3f}"
        )
        if "targeted" in disk:
            t_clean, t_disk = clean["targeted"], disk["targeted"]
            lines.append(
                f"{'':<40} targeted success top-1 {_pct(t_clean['top1'])}% → {_pct(t_disk['top1'])}%, "
                f"top-10 {_pct(t_clean['top10'])}% → {_pct(t_disk['top10'])}%"
            )
    notes = [note for row in results["evaluations"] for note in row.get("notes", [])]
    if notes:
        lines += ["", *(f"note: {note}" for note in notes)]
    chance = results.get("chance")
    if chance is not None:
        lines += [
            "",
            f"Chance level (a random ranking of this gallery): mAP {_pct(chance['mAP']).strip()}, "
            f"rank-1 {_pct(chance['cmc']['1']).strip()} -- the floor a perfect non-targeted attack nears.",
        ]
    return "\n".join(lines)
