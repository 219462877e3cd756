"""Random identities (what a person looks like) and cameras (how a view changes them).

Colours are RGB tuples in 0..255. Lengths of a person are fractions of the person's
height on screen, so one identity can be drawn at any scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

RGB = tuple[int, int, int]

#: Clothing colours. A small shared palette on purpose: many people share colours, so
#: colour alone (a histogram) cannot tell them apart; patterns, bags and shape can.
CLOTHES: tuple[RGB, ...] = (
    (28, 28, 32),
    (225, 225, 218),
    (128, 128, 130),
    (32, 42, 92),
    (52, 96, 182),
    (178, 32, 38),
    (42, 118, 62),
    (182, 160, 112),
    (102, 66, 40),
    (218, 188, 44),
    (218, 130, 160),
    (108, 60, 140),
    (220, 118, 40),
    (40, 140, 142),
)
SKIN: tuple[RGB, ...] = ((238, 200, 170), (222, 176, 140), (190, 140, 100), (150, 100, 66), (100, 66, 44))
HAIR: tuple[RGB, ...] = ((20, 18, 16), (62, 40, 24), (112, 74, 40), (200, 168, 100), (150, 150, 150), (140, 60, 30))
SHOES: tuple[RGB, ...] = ((20, 20, 20), (235, 235, 235), (90, 60, 40), (60, 60, 70), (170, 40, 40))

TOP_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo", "twotone")
BOTTOMS = ("trousers", "trousers", "shorts", "skirt")
HAIR_STYLES = ("short", "long", "bald", "cap", "ponytail")
BAGS = ("none", "backpack", "shoulder", "handbag")
LOGOS = ("circle", "square", "triangle", "bar")
VIEWS = ("front", "back", "side")
OCCLUDERS = ("low", "pole", "person")
BACKGROUNDS = ("wall", "shops", "gradient", "foliage")


def jitter_colour(rng: np.random.Generator, colour: RGB, amount: float) -> RGB:
    """``colour`` plus uniform noise of ±``amount`` per channel, clipped to 0..255."""
    c = np.clip(np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _pick(rng: np.random.Generator, options: tuple, p: list[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


@dataclass(frozen=True)
class Identity:
    """Everything that stays the same about one person across cameras."""

    shoulder: float  # half-width of the shoulders
    hip: float  # half-width of the hips
    head: float  # head radius
    torso: float  # shoulder-to-hip length
    leg_w: float  # leg half-width
    arm_w: float  # arm thickness
    skin: RGB
    hair: RGB
    hair_style: str
    cap: RGB
    top: RGB
    top2: RGB  # pattern / logo colour
    top_pattern: str
    stripe: float  # stripe or check period
    logo: str
    long_sleeves: bool
    bottom: RGB
    bottom_type: str
    shoes: RGB
    bag: str
    bag_colour: RGB
    bag_size: float
    bag_side: int  # -1 left, +1 right (as seen from the front)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one random person."""
    top = _pick(rng, CLOTHES)
    top2 = top
    while top2 == top:
        top2 = _pick(rng, CLOTHES)
    return Identity(
        shoulder=float(rng.uniform(0.14, 0.19)),
        hip=float(rng.uniform(0.11, 0.15)),
        head=float(rng.uniform(0.055, 0.072)),
        torso=float(rng.uniform(0.26, 0.34)),
        leg_w=float(rng.uniform(0.05, 0.065)),
        arm_w=float(rng.uniform(0.05, 0.062)),
        skin=jitter_colour(rng, _pick(rng, SKIN), 10),
        hair=jitter_colour(rng, _pick(rng, HAIR), 10),
        hair_style=_pick(rng, HAIR_STYLES, [0.35, 0.25, 0.08, 0.17, 0.15]),
        cap=jitter_colour(rng, _pick(rng, CLOTHES), 12),
        top=jitter_colour(rng, top, 14),
        top2=jitter_colour(rng, top2, 14),
        top_pattern=_pick(rng, TOP_PATTERNS, [0.3, 0.16, 0.12, 0.12, 0.16, 0.14]),
        stripe=float(rng.uniform(0.035, 0.075)),
        logo=_pick(rng, LOGOS),
        long_sleeves=bool(rng.random() < 0.55),
        bottom=jitter_colour(rng, _pick(rng, CLOTHES), 14),
        bottom_type=_pick(rng, BOTTOMS),
        shoes=jitter_colour(rng, _pick(rng, SHOES), 10),
        bag=_pick(rng, BAGS, [0.35, 0.3, 0.2, 0.15]),
        bag_colour=jitter_colour(rng, _pick(rng, CLOTHES), 14),
        bag_size=float(rng.uniform(0.8, 1.2)),
        bag_side=int(rng.choice((-1, 1))),
    )


#: What an outfit is: the fields of :class:`Identity` a person takes from the outfit they wear.
OUTFIT_COLOURS = ("top", "top2", "bottom", "shoes")
OUTFIT_STYLE = ("top_pattern", "stripe", "logo", "long_sleeves", "bottom_type")


def wear(person: Identity, outfit: Identity, rng: np.random.Generator, jitter: float = 8.0) -> Identity:
    """``person`` dressed in ``outfit``'s clothes (:data:`OUTFIT_COLOURS`, :data:`OUTFIT_STYLE`), each
    colour with ±``jitter`` of the wearer's own (two people in one outfit are alike, not identical);
    body, skin, hair, cap and bag stay the person's own."""
    top, top2, bottom, shoes = (jitter_colour(rng, getattr(outfit, name), jitter) for name in OUTFIT_COLOURS)
    return replace(
        person,
        top=top,
        top2=top2,
        bottom=bottom,
        shoes=shoes,
        top_pattern=outfit.top_pattern,
        stripe=outfit.stripe,
        logo=outfit.logo,
        long_sleeves=outfit.long_sleeves,
        bottom_type=outfit.bottom_type,
    )


@dataclass(frozen=True)
class Camera:
    """One camera: its scene and how it renders people (``difficulty`` already applied)."""

    background: str
    bg_colours: tuple[RGB, ...]  # wall/scene colours, also used for clutter and occluders
    floor: RGB
    floor_y: float  # floor line as a fraction of image height
    clutter: int  # number of clutter shapes in the scene
    view_probs: tuple[float, float, float]  # front, back, side
    scale: float  # mean person height / image height
    shift: float  # std of horizontal offset, fraction of width
    gain: float  # brightness multiplier
    cast: tuple[float, float, float]  # per-channel colour cast
    gamma: float
    saturation: float
    light_grad: tuple[float, float]  # linear lighting gradient along x and y
    noise: float  # sensor noise std in 0..1 units
    blur: float  # Gaussian blur radius in output pixels
    lowres: float  # downsample factor before blur (1 = none)
    occlusion: float  # probability that an image is partly occluded
    occluder_probs: tuple[float, float, float]  # low, pole, person


def _scene_colour(rng: np.random.Generator) -> RGB:
    """A muted scene colour: mostly grey, beige or concrete, with a little hue."""
    grey = rng.uniform(50, 210)
    hue = np.asarray(jitter_colour(rng, _pick(rng, CLOTHES), 40), dtype=np.float64)
    mix = rng.uniform(0.1, 0.45)
    c = (1 - mix) * grey + mix * hue
    return (int(c[0]), int(c[1]), int(c[2]))


def sample_camera(rng: np.random.Generator, difficulty: float) -> Camera:
    """Draw one random camera; ``difficulty`` 0 gives neutral, identical cameras."""
    d = difficulty
    bg_colours = tuple(_scene_colour(rng) for _ in range(3))
    mix = min(d, 1.0)
    views = (1 - mix) * np.full(3, 1 / 3) + mix * rng.dirichlet([0.8, 0.8, 0.8])
    occ = rng.dirichlet([1.0, 1.0, 1.0])
    return Camera(
        background=_pick(rng, BACKGROUNDS),
        bg_colours=bg_colours,
        floor=_scene_colour(rng),
        floor_y=float(rng.uniform(0.6, 0.85)),
        clutter=int(rng.integers(0, 6)),
        view_probs=(float(views[0]), float(views[1]), float(views[2])),
        scale=float(1.0 - d * rng.uniform(0.0, 0.12)),
        shift=float(d * rng.uniform(0.02, 0.07)),
        gain=float(np.exp(d * rng.uniform(-0.1, 0.1))),
        cast=tuple(float(np.exp(v)) for v in d * rng.uniform(-0.02, 0.02, 3)),  # type: ignore[arg-type]
        gamma=float(np.exp(d * rng.uniform(-0.08, 0.08))),
        saturation=float(np.clip(1.0 + d * rng.uniform(-0.1, 0.06), 0.2, 1.5)),
        light_grad=(float(d * rng.uniform(-0.1, 0.1)), float(d * rng.uniform(-0.1, 0.1))),
        noise=float(d * rng.uniform(0.004, 0.025)),
        blur=float(d * rng.uniform(0.0, 0.9)),
        lowres=float(1.0 + d * rng.uniform(0.0, 0.9)),
        occlusion=float(min(1.0, d * rng.uniform(0.05, 0.35))),
        occluder_probs=(float(occ[0]), float(occ[1]), float(occ[2])),
    )


@dataclass(frozen=True)
class Fabric:
    """A person's fine cloth texture: a small random tile repeated over the top, in cloth coordinates.

    ``tile[i, j]`` in [-1, 1] is added to the cloth colour times ``amplitude`` (0..255 units);
    one tile cell is ``cell`` × the person's height on screen, so the weave scales with the
    person and is only resolved when the image is large enough (like real fabric).
    """

    tile: tuple[tuple[float, ...], ...]
    amplitude: float
    cell: float


def sample_fabric(rng: np.random.Generator, amplitude: float) -> Fabric:
    """Draw one person's fabric: a 3..6-cell square tile of random levels in [-1, 1]."""
    size = int(rng.integers(3, 7))
    tile = rng.uniform(-1.0, 1.0, (size, size))
    return Fabric(tuple(tuple(float(v) for v in row) for row in tile), float(amplitude), float(rng.uniform(1 / 40, 1 / 24)))
