"""``metricattack defend``: train a defended model (any method of the registry) and evaluate it.

Example::

    metricattack defend --config configs/defense/quickstart.yaml --out runs/defense-quickstart
    metricattack defend --config configs/defense/quickstart.yaml --method pgd-at --out runs/defense-pgd-at
    PYTHONPATH=. metricattack defend --config configs/defense/adversarial-quickstart.yaml --method pgd-at \
        --model python:mynets:build --weights mynet.safetensors --out runs/defense-mynet

Stages (clean model, training-set attack, merge, retrain, finalise, evaluate) are cached in
OUT/stages/; an interrupted run resumes from the stage it reached. The defended model is
OUT/defended/model.safetensors; the numbers are in OUT/defense_results.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..compute import add_compute_options, compute_overrides
from ..config import validate
from ..data.layouts import load_dataset
from ..defense.config import DefenseConfig, load_defense_config
from ..defense.methods import DEFENSES
from ..defense.pipeline import run_defense
from ..errors import MetricAttackError
from ..model_options import add_model_option, add_weights_option
from ..models.sources import PYTHON_PREFIX, ModelSource
from ..outputs import check_output_folder, claim_output, with_sidecars


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``defend`` parser."""
    parser = subparsers.add_parser(
        "defend",
        help="train a defended model (metric-preserving network, adversarial training, ACT, HM, GOAT) and evaluate it adaptively",
        description="Train F (or take --config's base_checkpoint), train F_adv with the chosen defense (the paper's "
        "metric-preserving network attacks F's training set and retrains on clean + adversarial images; the others "
        "train on adversarial batches made against the model being trained), and evaluate both on clean, transferred "
        "and white-box (adaptive) adversarial images. Re-running resumes.",
    )
    parser.add_argument("--config", type=Path, required=True, help="defense YAML (see configs/defense/)")
    parser.add_argument(
        "--method",
        choices=DEFENSES,
        default=None,
        help="the defense (overrides the config's method): "
        + "; ".join(f"{name}: {DEFENSES.get(name).summary} ({DEFENSES.get(name).source})" for name in DEFENSES),
    )
    add_model_option(parser)
    add_weights_option(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/defense-<config name>)")
    add_compute_options(parser, config=True)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.schedule.epochs=5")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the defense and print the Table 5 cells and the adaptive rows."""
    overrides = [*args.overrides, *([f"method={args.method}"] if args.method else []), *compute_overrides(args, "train.compute")]
    cfg = own_network(load_defense_config(args.config, overrides), args)
    out = args.out if args.out is not None else Path("runs") / f"defense-{args.config.stem}"
    check_output_folder(
        "--out",
        out,
        command="defend",
        is_previous=lambda folder: (folder / "stages").is_dir(),
        inputs=with_sidecars([args.config, *(path for path in (cfg.base_checkpoint, cfg.base_weights) if path is not None)]),
        datasets=[load_dataset(cfg.train.data.dataset, cfg.train.data.root).root],
    )
    with claim_output(out, "defend"):
        summary = run_defense(cfg, out)
    print(f"defended model: {summary['defended']['checkpoint']}")
    if "module_weights" in summary["defended"]:
        print(f"its module's weights (--model {cfg.train.model.label} --weights FILE): {summary['defended']['module_weights']}")
    evaluation = summary.get("evaluation")
    if evaluation:
        print("gallery      #N (F)   #M (F_adv)   #I")
        for c in evaluation["cells"]:
            print(f"{c['gallery']:<12} {c['normal_mAP']:7.2f}  {c['defended_mAP']:9.2f}   {100 * c['improvement']:+.1f}%")
        print("white-box (adaptive) attacks, mAP %: model method eps clean -> adversarial")
        for r in evaluation["adaptive"]:
            print(f"  {r['model']:<6} {r['method']:<7} {r['epsilon']:g}  {r['clean_mAP']:.2f} -> {r['adversarial_mAP']:.2f}")
        if evaluation.get("robust"):
            print(
                f"robust mAP %: worst case per query of the robustness protocol '{cfg.evaluation.robust.version}' "
                "(and, for F_adv, F's query attack transferred; gallery side apart): model eps clean -> robust (gallery)"
            )
            for r in evaluation["robust"]:
                flags = ", ".join(f for f, on in r["flags"].items() if on)
                print(
                    f"  {r['model']:<6} {r['epsilon']:g}  {r['clean_mAP']:.2f} -> {r['robust_mAP']:.2f} ({r['gallery_robust_mAP']:.2f})"
                    + (f"  FLAGS: {flags}" if flags else "")
                )
        print(f"details: {evaluation['results']}")
    return 0


def own_network(cfg: DefenseConfig, args: argparse.Namespace) -> DefenseConfig:
    """``cfg`` with F = ``--model python:MODULE:FUNCTION`` (at the recipe's input size): with
    ``--weights`` that network as is, without them trained from ``FUNCTION()``'s initialisation."""
    if not args.model:
        return cfg
    if len(args.model) != 1:
        raise MetricAttackError(f"defend takes one --model, got {len(args.model)}")
    spec, weights = args.model[0]
    if not str(spec).startswith(PYTHON_PREFIX):
        raise MetricAttackError(
            f"--model {spec}: defend trains the model, so it takes a network of one's own (python:MODULE:FUNCTION) "
            "or a metricattack checkpoint (base_checkpoint in the config), not another project's format"
        )
    ModelSource(model=spec, weights=weights).check_files()
    data = cfg.model_dump(mode="json")
    data["train"]["model"] = {"architecture": "python", "source": spec, "input_size": list(cfg.train.model.input_size)}
    data |= {"base_checkpoint": None, "base_weights": None if weights is None else str(weights)}
    return validate(DefenseConfig, data, f"{args.config} with --model {spec}")
