"""Synthetic pedestrians: procedurally drawn people seen by several cameras.

The embedded default dataset. ``generate(out_dir, SynthConfig(...))`` writes the exact
Market-1501 layout (``bounding_box_train/``, ``bounding_box_test/``, ``query/``; names
``{pid:04d}_c{cam}s1_{frame:06d}_01.jpg`` holding lossless PNG data, pid ``0000`` distractors,
``-1`` junk) plus a
``synth.json`` manifest. An identity is a body shape, skin, hair style and colour,
clothing colours and patterns, a bag and shoes; each camera changes background,
illumination, colour cast, viewpoint mix, scale, blur, resolution and occlusion.
"""

from .config import SynthConfig
from .writer import MANIFEST, SPLIT_DIRS, generate, plan, read_manifest, split_identities

__all__ = ["MANIFEST", "SPLIT_DIRS", "SynthConfig", "generate", "plan", "read_manifest", "split_identities"]
