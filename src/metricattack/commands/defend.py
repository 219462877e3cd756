"""``metricattack defend``: train a metric-preserving (or online adversarially trained) model and evaluate it.

Example::

    metricattack defend --config configs/defense/quickstart.yaml --out runs/defense-quickstart

Stages (clean model, training-set attack, merge, retrain, finalise, evaluate) are cached in
OUT/stages/; an interrupted run resumes from the stage it reached. The defended model is
OUT/defended/model.safetensors; the numbers are in OUT/defense_results.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.layouts import load_dataset
from ..defense.config import load_defense_config
from ..defense.metric_preserving import run_defense
from ..outputs import check_output_folder, claim_output, with_sidecars


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``defend`` parser."""
    parser = subparsers.add_parser(
        "defend",
        help="metric-preserving defense (paper Sec. 4) or online adversarial training, with adaptive evaluation",
        description="Train F, attack its training set, retrain F_adv on clean + adversarial images, and evaluate "
        "both on clean, transferred and white-box (adaptive) adversarial galleries. Re-running resumes.",
    )
    parser.add_argument("--config", type=Path, required=True, help="defense YAML (see configs/defense/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/defense-<config name>)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.schedule.epochs=5")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the defense and print the Table 5 cells and the adaptive rows."""
    cfg = load_defense_config(args.config, args.overrides)
    out = args.out if args.out is not None else Path("runs") / f"defense-{args.config.stem}"
    check_output_folder(
        "--out",
        out,
        command="defend",
        is_previous=lambda folder: (folder / "stages").is_dir(),
        inputs=with_sidecars([args.config, *([cfg.base_checkpoint] if cfg.base_checkpoint is not None else [])]),
        datasets=[load_dataset(cfg.train.data.dataset, cfg.train.data.root).root],
    )
    with claim_output(out, "defend"):
        summary = run_defense(cfg, out)
    print(f"defended model: {summary['defended']['checkpoint']}")
    evaluation = summary.get("evaluation")
    if evaluation:
        print("gallery      #N (F)   #M (F_adv)   #I")
        for c in evaluation["cells"]:
            print(f"{c['gallery']:<12} {c['normal_mAP']:7.2f}  {c['defended_mAP']:9.2f}   {100 * c['improvement']:+.1f}%")
        print("white-box (adaptive) attacks, mAP %: model method eps clean -> adversarial")
        for r in evaluation["adaptive"]:
            print(f"  {r['model']:<6} {r['method']:<7} {r['epsilon']:g}  {r['clean_mAP']:.2f} -> {r['adversarial_mAP']:.2f}")
        print(f"details: {evaluation['results']}")
    return 0
