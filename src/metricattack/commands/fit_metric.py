"""``metricattack fit-metric``: learn XQDA / KISSME on a model's training features, save beside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.layouts import DATASETS
from ..metrics.distance import sidecar_path
from ..metrics.learned import LEARNED_METRICS, fit_for_checkpoint
from ..metrics.pairs import ON_NON_PSD_CHOICES
from ..model_options import add_model_option, add_weights_option, single_model_source


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fit-metric`` parser."""
    parser = subparsers.add_parser(
        "fit-metric",
        help="learn an XQDA or KISSME metric on a model's training features",
        description=(
            "Extract the training features of the model, fit the learned Mahalanobis metric "
            "and write <checkpoint stem>.<kind>.safetensors + .json beside the checkpoint (or the --weights file)."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="model checkpoint (.safetensors)")
    add_model_option(source)
    add_weights_option(parser)
    parser.add_argument("--data-root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--dataset", required=True, help=f"dataset layout: {', '.join(DATASETS)}")
    parser.add_argument("--kind", choices=LEARNED_METRICS, required=True, help="learned metric")
    parser.add_argument(
        "--dim",
        type=int,
        default=None,
        help="XQDA: at most this many subspace directions (default: all with eigenvalue > 1); "
        "KISSME: PCA dimension first (default: no PCA)",
    )
    parser.add_argument("--reg", type=float, default=None, help="ridge on the covariances (XQDA default 0.001, KISSME 0)")
    parser.add_argument("--cross-camera", action="store_true", help="use only pairs of images from different cameras")
    parser.add_argument(
        "--on-non-psd",
        choices=ON_NON_PSD_CHOICES,
        default="project",
        help="a kernel with negative eigenvalues: clip them with a warning, or stop",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="feature extraction batch size")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="metric file (default: beside the checkpoint or --weights file; required for a Python model without weights)",
    )
    parser.set_defaults(func=run, torchrun="group")


def run(args: argparse.Namespace) -> int:
    """Fit and save; print the metric file and a one-line summary."""
    options = {"dim": args.dim, "cross_camera": args.cross_camera, "on_non_psd": args.on_non_psd}
    if args.reg is not None:
        options["reg"] = args.reg
    source = single_model_source(args)
    path = fit_for_checkpoint(source, args.data_root, args.dataset, args.kind, batch_size=args.batch_size, out=args.out, **options)
    fit = json.loads(sidecar_path(path).read_text(encoding="utf-8"))["meta"]["learned_metric"]["fit"]
    print(
        f"{args.kind}: {fit['num_features']} training features of {fit['num_identities']} identities, "
        f"rank {fit['rank']}, fitted in {fit['fit_seconds']:.2f} s -> {path}"
    )
    return 0
