"""``metricattack synth``: generate the synthetic pedestrian dataset (Market-1501 layout).

Example::

    metricattack synth --out data/synth --seed 0 --train-ids 300 --test-ids 300 --cameras 6

Market-1501's counts (12,936 train / 3,368 query / 15,913 gallery images without junk)::

    metricattack synth --out data/market-size --train-ids 751 --test-ids 750 --cameras 6 \\
        --train-images 12936 --query-images 3368 --gallery-images 13115 --distractors 2798

Same options ⇒ same bytes. Re-running on a finished folder with the same options is a
no-op; a folder holding anything else is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import validate
from ..data.synthetic import SynthConfig, generate, read_manifest
from ..errors import MetricAttackError

# option name → SynthConfig field
_OPTIONS = {
    "seed": "seed",
    "train_ids": "num_train_ids",
    "test_ids": "num_test_ids",
    "cameras": "num_cameras",
    "images_per_camera": "images_per_camera",
    "cameras_per_id": "cameras_per_id",
    "train_images": "train_images",
    "query_images": "query_images",
    "gallery_images": "gallery_images",
    "distractors": "num_distractors",
    "junk": "num_junk",
    "height": "height",
    "width": "width",
    "difficulty": "difficulty",
    "texture": "texture",
    "outfits": "outfits",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` parser."""
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic pedestrians in the Market-1501 layout",
        description="Procedurally draw people seen by several cameras and write bounding_box_train/, "
        "bounding_box_test/ and query/ with Market-1501 file names, plus synth.json.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (new, empty, or an identical earlier run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-ids", type=int, default=100, help="training identities")
    parser.add_argument("--test-ids", type=int, default=100, help="test identities (query + gallery)")
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--images-per-camera", type=int, default=4, help="train/gallery images per identity per camera")
    parser.add_argument("--cameras-per-id", type=int, default=None, help="cameras each identity visits (default: all)")
    parser.add_argument("--train-images", type=int, default=None, help="exact number of training images (default: per camera)")
    parser.add_argument("--query-images", type=int, default=None, help="exact number of queries, at least one per test identity")
    parser.add_argument(
        "--gallery-images", type=int, default=None, help="exact number of gallery images of test identities (plus distractors and junk)"
    )
    parser.add_argument("--distractors", type=int, default=0, help="gallery distractor images (pid 0000)")
    parser.add_argument("--junk", type=int, default=0, help="gallery junk images (pid -1)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--difficulty", type=float, default=1.0, help="strength of camera changes, 0..2")
    parser.add_argument("--texture", type=float, default=0.0, help="amplitude (0..255) of each person's fine cloth texture; 0 = none")
    parser.add_argument(
        "--outfits", type=int, default=None, help="distinct outfits everyone shares, so people dress alike (default: each their own)"
    )
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (does not change the bytes)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate (or reuse) the dataset and print its counts."""
    if args.workers < 1:
        raise MetricAttackError(f"--workers must be a positive integer, got {args.workers}")
    values = {field: getattr(args, opt) for opt, field in _OPTIONS.items() if getattr(args, opt) is not None}
    cfg = validate(SynthConfig, values, "synth options")
    root = generate(args.out, cfg, workers=args.workers, progress=True)
    counts = read_manifest(root)["counts"]
    print(f"synthetic dataset at {root}")
    for split in ("train", "query", "gallery"):
        print(f"  {split:8s} {counts[f'{split}_images']:6d} images  {counts[f'{split}_ids']:5d} identities")
    print(f"  gallery includes {counts['distractors']} distractors (0000) and {counts['junk']} junk (-1)")
    return 0
