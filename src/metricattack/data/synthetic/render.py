"""Draw one pedestrian image: scene, person, occluder, then the camera's optics.

Drawing happens at ``SUPERSAMPLE``× the output size with PIL and is reduced with a box
filter (anti-aliasing); the camera's illumination, blur and noise are applied in numpy.
All randomness comes from the generator passed in, so an image is a pure function of
(identity, camera, generator state).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .appearance import OCCLUDERS, RGB, VIEWS, Camera, Fabric, Identity, jitter_colour, sample_identity

SUPERSAMPLE = 2
SHADING = 0.15  # std of log-brightness of the smooth shading field


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)  # type: ignore[return-value]


def render_background(cam: Camera, height: int, width: int, rng: np.random.Generator) -> Image.Image:
    """The camera's scene at supersampled size, four images wide (crops slide over it)."""
    h, w = height * SUPERSAMPLE, width * SUPERSAMPLE * 4
    c0, c1, c2 = cam.bg_colours
    img = Image.new("RGB", (w, h), c0)
    draw = ImageDraw.Draw(img)
    floor = int(cam.floor_y * h)
    if cam.background == "wall":
        step = int(rng.integers(8, 20)) * SUPERSAMPLE
        for row, y in enumerate(range(0, floor, step // 2)):
            draw.line([(0, y), (w, y)], fill=c1, width=SUPERSAMPLE)
            off = (row % 2) * step // 2
            for x in range(off, w, step):
                draw.line([(x, y), (x, y + step // 2)], fill=c1, width=SUPERSAMPLE)
    elif cam.background == "shops":
        x = 0
        while x < w:
            bw = int(rng.integers(w // 8, w // 3))
            draw.rectangle([x, 0, x + bw, floor], fill=cam.bg_colours[int(rng.integers(0, 3))])
            draw.rectangle([x + bw // 5, floor // 5, x + 4 * bw // 5, floor // 2], fill=_shade(c2, 0.6))
            x += bw
    elif cam.background == "gradient":
        t = np.linspace(0.0, 1.0, h)[:, None, None]
        grad = (1 - t) * np.asarray(c0, np.float32) + t * np.asarray(c1, np.float32)
        img = Image.fromarray(np.repeat(grad, w, axis=1).astype(np.uint8))
        draw = ImageDraw.Draw(img)
    else:  # foliage: many soft blobs
        for _ in range(60):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, floor), rng.uniform(4, 14) * SUPERSAMPLE
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter_colour(rng, cam.bg_colours[int(rng.integers(0, 3))], 25))
    draw.rectangle([0, floor, w, h], fill=cam.floor)
    for _ in range(cam.clutter):
        _clutter_shape(draw, rng, cam, w, h)
    return img


def _clutter_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: Camera, w: int, h: int) -> None:
    colour = jitter_colour(rng, cam.bg_colours[int(rng.integers(0, 3))], 35)
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
    x1, y1 = x0 + rng.uniform(0.05, 0.3) * w, y0 + rng.uniform(0.05, 0.3) * h
    if rng.random() < 0.5:
        draw.rectangle([x0, y0, x1, y1], fill=colour)
    else:
        draw.ellipse([x0, y0, x1, y1], fill=colour)


class _Figure:
    """Maps person coordinates (fractions of person height, x=0 at the body axis) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, size: float) -> None:
        self.draw, self.cx, self.top, self.size = draw, cx, top, size

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.size, self.top + y * self.size)

    def poly(self, pts: list[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon([self.pt(x, y) for x, y in pts], fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        (a, b), (c, d) = self.pt(min(x0, x1), min(y0, y1)), self.pt(max(x0, x1), max(y0, y1))
        self.draw.rectangle([a, b, c, d], fill=fill)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: RGB) -> None:
        (a, b), (c, d) = self.pt(x - rx, y - ry), self.pt(x + rx, y + ry)
        self.draw.ellipse([a, b, c, d], fill=fill)

    def limb(self, pts: list[tuple[float, float]], width: float, fill: RGB) -> None:
        px = [self.pt(x, y) for x, y in pts]
        wpx = max(1, int(round(width * self.size)))
        self.draw.line(px, fill=fill, width=wpx, joint="curve")
        r = wpx / 2
        for x, y in (px[0], px[-1]):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _torso_texture(ident: Identity, w: int, h: int, size: float) -> np.ndarray:
    """Clothing pattern for a torso bounding box of ``h``×``w`` pixels; ``[h,w,3]`` uint8."""
    top, top2 = np.asarray(ident.top, np.uint8), np.asarray(ident.top2, np.uint8)
    period = max(2, int(ident.stripe * size))
    yy, xx = np.mgrid[0:h, 0:w]
    pat = ident.top_pattern
    if pat == "hstripes":
        sel = (yy // period) % 2 == 1
    elif pat == "vstripes":
        sel = (xx // period) % 2 == 1
    elif pat == "checks":
        sel = ((yy // period) + (xx // period)) % 2 == 1
    elif pat == "twotone":
        sel = yy > h * 0.45
    else:
        sel = np.zeros((h, w), dtype=bool)
    return np.where(sel[..., None], top2, top)


def _weave(fabric: Fabric, w: int, h: int, size: float) -> np.ndarray:
    """``[h,w,1]`` offsets (0..255 units) of ``fabric``'s tile repeated over a ``h``×``w`` cloth box."""
    tile = np.asarray(fabric.tile, dtype=np.float32)
    cell = max(1.0, fabric.cell * size)
    yy, xx = np.mgrid[0:h, 0:w]
    rows, cols = (yy / cell).astype(np.int64) % tile.shape[0], (xx / cell).astype(np.int64) % tile.shape[1]
    return (fabric.amplitude * tile[rows, cols])[..., None]


def _draw_torso(img: Image.Image, fig: _Figure, ident: Identity, pts: list[tuple[float, float]], fabric: Fabric | None) -> None:
    px = [fig.pt(x, y) for x, y in pts]
    x0, y0 = int(math.floor(min(p[0] for p in px))), int(math.floor(min(p[1] for p in px)))
    x1, y1 = int(math.ceil(max(p[0] for p in px))) + 1, int(math.ceil(max(p[1] for p in px))) + 1
    w, h = x1 - x0, y1 - y0
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in px], fill=255)
    cloth = _torso_texture(ident, w, h, fig.size)
    if fabric is not None and fabric.amplitude > 0:
        cloth = np.clip(cloth.astype(np.float32) + _weave(fabric, w, h, fig.size), 0, 255).astype(np.uint8)
    img.paste(Image.fromarray(cloth), (x0, y0), mask)


def _draw_logo(fig: _Figure, ident: Identity, x: float, y: float, r: float) -> None:
    c = ident.top2
    if ident.logo == "circle":
        fig.ellipse(x, y, r, r, c)
    elif ident.logo == "square":
        fig.rect(x - r, y - r, x + r, y + r, c)
    elif ident.logo == "triangle":
        fig.poly([(x - r, y + r), (x + r, y + r), (x, y - r)], c)
    else:
        fig.rect(x - 1.6 * r, y - 0.45 * r, x + 1.6 * r, y + 0.45 * r, c)


def _draw_legs(fig: _Figure, ident: Identity, feet: list[tuple[float, float]], hips: list[float], yh: float) -> None:
    """Legs from hip x positions to foot points; clothing depends on the bottom type."""
    yf = 0.965
    lw = 2 * ident.leg_w
    kind = ident.bottom_type
    for hx, (fx, fy) in zip(hips, feet, strict=True):
        knee = ((hx + fx) / 2, (yh + fy) / 2)
        if kind == "trousers":
            fig.limb([(hx, yh), knee, (fx, fy)], lw, ident.bottom)
        else:
            fig.limb([(hx, yh), knee, (fx, fy)], lw * 0.8, ident.skin)
            if kind == "shorts":
                fig.limb([(hx, yh), (hx + (knee[0] - hx) * 0.8, yh + (knee[1] - yh) * 0.8)], lw * 1.1, ident.bottom)
        fig.ellipse(fx, min(fy, yf), ident.leg_w * 1.3, 0.022, ident.shoes)
    span = max(abs(h) for h in hips) + ident.leg_w
    if kind == "skirt":
        fig.poly([(-span, yh - 0.02), (span, yh - 0.02), (span * 1.6, yh + 0.2), (-span * 1.6, yh + 0.2)], ident.bottom)
    else:
        fig.rect(-span, yh - 0.02, span, yh + 0.05, ident.bottom)


def _draw_arm(fig: _Figure, ident: Identity, sx: float, sy: float, angle: float, bend: float) -> tuple[float, float]:
    """Arm hanging from shoulder (sx, sy) at ``angle`` radians from vertical; returns the hand."""
    ex, ey = sx + 0.17 * math.sin(angle), sy + 0.17 * math.cos(angle)
    hx, hy = ex + 0.17 * math.sin(angle + bend), ey + 0.17 * math.cos(angle + bend)
    fig.limb([(sx, sy), (ex, ey)], ident.arm_w, ident.top)
    fig.limb([(ex, ey), (hx, hy)], ident.arm_w * 0.9, ident.top if ident.long_sleeves else ident.skin)
    fig.ellipse(hx, hy, ident.arm_w * 0.6, ident.arm_w * 0.6, ident.skin)
    return hx, hy


def _draw_head(fig: _Figure, ident: Identity, hr: float, ys: float, view: str, facing: int) -> None:
    hair, style = ident.hair, ident.hair_style
    hx = 0.012 * facing if view == "side" else 0.0
    if style == "long":
        back = -0.02 * facing if view == "side" else 0.0
        fig.rect(back - hr * 0.95, hr, back + hr * 0.95, ys + (0.09 if view == "back" else 0.05), hair)
    if style == "ponytail" and view != "front":
        fig.ellipse(-0.05 * facing if view == "side" else 0.0, hr * 1.9, hr * 0.35, hr * 0.7, hair)
    fig.ellipse(hx, hr, hr * 0.85, hr, ident.skin)
    if view == "back":
        if style != "bald":
            fig.ellipse(0, hr * 1.05, hr * 0.88, hr * 1.0, hair)
    elif view == "front":
        if style in ("short", "long", "ponytail"):
            fig.draw.pieslice([*fig.pt(-hr * 0.92, -hr * 0.05), *fig.pt(hr * 0.92, hr * 1.3)], 180, 360, fill=hair)
        fig.ellipse(-hr * 0.35, hr * 1.05, hr * 0.1, hr * 0.1, (30, 25, 25))
        fig.ellipse(hr * 0.35, hr * 1.05, hr * 0.1, hr * 0.1, (30, 25, 25))
    elif style != "bald":  # side: hair over the top and back of the head
        start, end = (90, 360) if facing > 0 else (180, 450)
        fig.draw.pieslice([*fig.pt(-hr * 0.92, -hr * 0.05), *fig.pt(hr * 0.92, hr * 1.9)], start, end, fill=hair)
        fig.ellipse(hx + 0.3 * hr * facing, hr * 1.05, hr * 0.09, hr * 0.09, (30, 25, 25))
    if style == "cap":
        fig.draw.pieslice([*fig.pt(-hr * 0.95, -hr * 0.1), *fig.pt(hr * 0.95, hr * 1.4)], 180, 360, fill=ident.cap)
        if view == "side":
            fig.rect(0, hr * 0.55, 1.6 * hr * facing, hr * 0.72, ident.cap)
        elif view == "front":
            fig.rect(-hr * 0.9, hr * 0.55, hr * 0.9, hr * 0.72, _shade(ident.cap, 0.8))


def draw_person(
    img: Image.Image, ident: Identity, view: str, cx: float, top: float, size: float, rng: np.random.Generator, fabric: Fabric | None = None
) -> None:
    """Draw ``ident`` seen from ``view`` onto ``img``; ``size`` is the person height in pixels; ``fabric`` textures the top."""
    fig = _Figure(ImageDraw.Draw(img), cx, top, size)
    hr = ident.head
    ys = 2 * hr + 0.03
    yh = ys + ident.torso
    foot_y = 0.965
    if view == "side":
        facing = int(rng.choice((-1, 1)))
        tw = ident.shoulder * 0.55
        stride = float(rng.uniform(0.0, 0.13))
        _draw_legs(fig, ident, [(-stride, foot_y), (stride, foot_y)], [0.0, 0.0], yh)
        if ident.bag == "backpack":
            depth = 0.09 * ident.bag_size
            fig.rect(-facing * tw, ys + 0.02, -facing * (tw + depth), ys + ident.torso * 0.75, ident.bag_colour)
        fig.rect(-0.022, 2 * hr - 0.01, 0.022, ys + 0.01, ident.skin)
        _draw_torso(img, fig, ident, [(-tw, ys), (tw, ys), (tw * 0.95, yh), (-tw * 0.95, yh)], fabric)
        if ident.bag in ("shoulder", "handbag"):
            fig.rect(-0.03, yh - 0.07, 0.05 * facing, yh + 0.06, ident.bag_colour)
        swing = float(rng.uniform(-0.45, 0.45))
        _draw_arm(fig, ident, 0.0, ys + 0.02, swing * facing, 0.25 * facing)
        _draw_head(fig, ident, hr, ys, view, facing)
        return
    mirror = 1 if view == "front" else -1  # the viewer sees left and right swapped from behind
    sw, hw = ident.shoulder, ident.hip
    spread = float(rng.uniform(0.0, 0.05))
    if view == "front" and ident.bag == "backpack":  # the pack peeks out beside the waist
        fig.rect(-sw * 0.95, ys + 0.04, sw * 0.95, ys + ident.torso * 0.8, _shade(ident.bag_colour, 0.8))
    hips = [-hw * 0.5, hw * 0.5]
    _draw_legs(fig, ident, [(hips[0] - spread, foot_y), (hips[1] + spread, foot_y)], hips, yh)
    fig.rect(-0.025, 2 * hr - 0.01, 0.025, ys + 0.01, ident.skin)
    _draw_torso(img, fig, ident, [(-sw, ys), (sw, ys), (hw * 1.05, yh), (-hw * 1.05, yh)], fabric)
    if view == "front" and ident.top_pattern == "logo":
        _draw_logo(fig, ident, 0.0, ys + ident.torso * 0.33, 0.045)
    hands = [
        _draw_arm(fig, ident, side * (sw - 0.02), ys + 0.025, side * float(rng.uniform(0.05, 0.3)), side * float(rng.uniform(-0.2, 0.1)))
        for side in (-1, 1)
    ]
    side = ident.bag_side * mirror
    if ident.bag == "backpack":
        if view == "back":
            bw = sw * 0.8 * ident.bag_size
            fig.rect(-bw, ys + 0.02, bw, ys + ident.torso * 0.85 * ident.bag_size, ident.bag_colour)
            fig.rect(-bw * 0.6, ys + ident.torso * 0.45, bw * 0.6, ys + ident.torso * 0.7, _shade(ident.bag_colour, 0.7))
        else:
            for s in (-1, 1):
                fig.limb([(s * sw * 0.55, ys), (s * sw * 0.55, ys + ident.torso * 0.6)], 0.022, _shade(ident.bag_colour, 0.8))
    elif ident.bag == "shoulder":
        fig.limb([(-side * sw * 0.6, ys), (side * hw * 1.3, yh - 0.03)], 0.018, _shade(ident.bag_colour, 0.7))
        bx = side * (hw * 1.3 + 0.03)
        fig.rect(bx - 0.07 * ident.bag_size, yh - 0.06, bx + 0.07 * ident.bag_size, yh + 0.07, ident.bag_colour)
    elif ident.bag == "handbag":
        hx, hy = hands[0 if side < 0 else 1]
        fig.rect(hx - 0.05 * ident.bag_size, hy, hx + 0.05 * ident.bag_size, hy + 0.11 * ident.bag_size, ident.bag_colour)
    _draw_head(fig, ident, hr, ys, view, 1)


def _draw_occluder(img: Image.Image, cam: Camera, rng: np.random.Generator) -> None:
    w, h = img.size
    draw = ImageDraw.Draw(img)
    kind = OCCLUDERS[int(rng.choice(3, p=cam.occluder_probs))]
    colour = jitter_colour(rng, cam.bg_colours[int(rng.integers(0, 3))], 40)
    if kind == "low":  # bench, car, railing
        y0 = h * (1 - rng.uniform(0.15, 0.38))
        x0 = rng.uniform(-0.5, 0.3) * w
        draw.rectangle([x0, y0, x0 + rng.uniform(0.6, 1.2) * w, h], fill=colour)
        draw.rectangle([x0, y0, x0 + w * 1.2, y0 + h * 0.03], fill=_shade(colour, 0.6))
    elif kind == "pole":
        pw = rng.uniform(0.08, 0.2) * w
        x0 = rng.uniform(0.0, w - pw)
        draw.rectangle([x0, 0, x0 + pw, h], fill=colour)
    else:  # a passer-by cutting into the frame from one side
        other = sample_identity(rng)
        side = int(rng.choice((-1, 1)))
        size = h * rng.uniform(0.85, 1.0)
        draw_person(img, other, VIEWS[int(rng.integers(0, 3))], w / 2 + side * w * rng.uniform(0.55, 0.8), h * 0.02, size, rng)


def _shading(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative shading ``[H,W,1]`` (folds, shadows): flat colours become gradients."""
    coarse = np.exp(rng.normal(0.0, SHADING, (8, 4))).astype(np.float32)
    field = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(field, dtype=np.float32)[..., None]


def _apply_camera(img: Image.Image, cam: Camera, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Reduce to output size and apply the camera's optics; returns ``[H,W,3]`` uint8."""
    if cam.lowres > 1.05:
        small = (max(4, int(width / cam.lowres)), max(8, int(height / cam.lowres)))
        img = img.resize(small, Image.Resampling.BOX).resize((width, height), Image.Resampling.BILINEAR)
    else:
        img = img.resize((width, height), Image.Resampling.BOX)
    if cam.blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(cam.blur))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = x * _shading(height, width, rng)
    x = np.power(x, cam.gamma)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + cam.saturation * (x - grey)
    gy = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None]
    gx = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :, None]
    light = cam.gain * float(np.exp(rng.normal(0.0, 0.08))) * (1.0 + cam.light_grad[0] * 2 * gx + cam.light_grad[1] * 2 * gy)
    x = x * light * np.asarray(cam.cast, dtype=np.float32)
    if cam.noise > 0:
        x = x + rng.normal(0.0, cam.noise, x.shape).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _scene_crop(background: Image.Image, cam: Camera, width: int, rng: np.random.Generator) -> Image.Image:
    """A random window of the camera's scene with some per-image clutter (passers-by, objects)."""
    w2 = width * SUPERSAMPLE
    off = int(rng.integers(0, background.size[0] - w2 + 1))
    crop = np.asarray(background.crop((off, 0, off + w2, background.size[1])), dtype=np.float32)
    tint = rng.uniform(0.65, 1.35) * rng.uniform(0.75, 1.25, 3).astype(np.float32)  # where in the scene, sun/shade
    img = Image.fromarray(np.clip(crop * tint, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 3))):
        _clutter_shape(draw, rng, cam, w2, img.size[1])
    return img


def render_image(
    ident: Identity,
    cam: Camera,
    background: Image.Image,
    height: int,
    width: int,
    rng: np.random.Generator,
    fabric: Fabric | None = None,
) -> np.ndarray:
    """One image of ``ident`` (wearing ``fabric``) in camera ``cam``: ``[height, width, 3]`` uint8."""
    img = _scene_crop(background, cam, width, rng)
    h2, w2 = img.size[1], img.size[0]
    view = VIEWS[int(rng.choice(3, p=cam.view_probs))]
    size = h2 * cam.scale * float(rng.uniform(0.88, 0.98))
    cx = w2 / 2 + w2 * float(rng.normal(0.0, cam.shift))
    top = (h2 - size) / 2 + h2 * float(rng.normal(0.0, 0.02))
    draw_person(img, ident, view, cx, top, size, rng, fabric)
    if rng.random() < cam.occlusion:
        _draw_occluder(img, cam, rng)
    return _apply_camera(img, cam, height, width, rng)


def render_junk(cam: Camera, background: Image.Image, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A bad detection: empty background or a badly cropped fragment of a random person."""
    img = _scene_crop(background, cam, width, rng)
    h2, w2 = img.size[1], img.size[0]
    if rng.random() < 0.6:
        size = h2 * float(rng.uniform(1.6, 3.0))
        top = -size * float(rng.uniform(0.1, 0.6))
        draw_person(img, sample_identity(rng), VIEWS[int(rng.integers(0, 3))], w2 * float(rng.uniform(0.0, 1.0)), top, size, rng)
    else:
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            _clutter_shape(draw, rng, cam, w2, h2)
    return _apply_camera(img, cam, height, width, rng)


__all__ = ["render_background", "render_image", "render_junk", "draw_person"]
