"""Image files without torch: decode to uint8 pixels, encode lossless PNG, write a batch of PNGs.

The functions here are what the export's host processes run (:mod:`metricattack.overlap`):
they take and return picklable values (paths, NumPy arrays, bytes, dicts) and import neither
torch nor any module that does, so a worker process runs them with Pillow, NumPy and
``hashlib`` only. :func:`metricattack.data.loading.read_image` wraps :func:`decode_rgb`.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFile

from ..errors import DatasetError
from ..io import atomic_write_bytes

PathLike = str | os.PathLike[str]


def decode_rgb(path: PathLike) -> np.ndarray:
    """The RGB pixels ``[H,W,3]`` uint8 of the image at ``path``.

    16-bit images (grayscale PNG ``I;16``) are read at 8-bit precision (``round(v / 257)``), like
    every other image. Raises :class:`DatasetError` naming the file when it is missing, not an
    image, truncated (PIL's ``LOAD_TRUNCATED_IMAGES`` is forced off while decoding), of a pixel
    type with no display range (32-bit integer or float), or larger than PIL's decompression-bomb
    limit.
    """
    allow_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with open_image(path) as img:
            img.load()
            return _rgb_array(img, path)
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise DatasetError(f"cannot read image {os.fspath(path)}: {exc} (expected a complete JPEG or PNG file)") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated


def decode_batch(paths: Sequence[PathLike]) -> np.ndarray:
    """The pixels ``[B,H,W,3]`` uint8 of images of one size (:func:`decode_rgb` each)."""
    return np.stack([decode_rgb(path) for path in paths])


def open_image(path: PathLike) -> Image.Image:
    """``Image.open`` with PIL's decompression-bomb warning and error turned into one :class:`DatasetError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DatasetError(
            f"image {os.fspath(path)} is larger than the {Image.MAX_IMAGE_PIXELS:,} pixels this tool decodes "
            "(a decompression bomb?); expected a person crop (Market-1501: 128x64)"
        ) from None


def _rgb_array(img: Image.Image, path: PathLike) -> np.ndarray:
    """``[H,W,3]`` uint8 RGB pixels of an opened image (16-bit grayscale scaled to 8 bits)."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):  # PNG holds at most 16 bits
        gray = np.rint(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("I", "F"):
        raise DatasetError(
            f"cannot read image {os.fspath(path)}: {img.mode!r} pixels (32-bit) have no display range; expected 8- or 16-bit"
        )
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def png_bytes(pixels: np.ndarray) -> bytes:
    """The PNG file (lossless, 8-bit RGB) of ``pixels`` ``[H,W,3]`` uint8, as Pillow encodes it."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pngs(folder: PathLike, names: Sequence[str], pixels: np.ndarray) -> dict[str, str]:
    """Write ``pixels[i]`` (``[B,H,W,3]`` uint8) as the PNG ``folder / names[i]``, each atomically;
    returns ``{name: SHA-256 of the file}``."""
    checksums = {}
    for name, image in zip(names, pixels, strict=True):
        data = png_bytes(image)
        atomic_write_bytes(os.path.join(folder, name), data)
        checksums[name] = hashlib.sha256(data).hexdigest()
    return checksums
