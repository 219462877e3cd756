"""A differentiable approximation of PIL's JPEG round trip: the backward pass of the JPEG trap's BPDA.

:func:`differentiable_jpeg` follows the steps libjpeg (PIL's encoder and decoder) takes for an RGB
image, with torch operations, after Shin & Song (2017, "JPEG-resistant adversarial images") and
DiffJPEG (Reich et al., 2024):

1. RGB → YCbCr (JFIF, full range), the image padded to a multiple of 16 pixels by repeating its last
   row and column (libjpeg's MCU padding);
2. chroma subsampled 2×2 by averaging (4:2:0, what PIL writes at quality 75);
3. 8×8 blocks shifted by −128, the DCT (JPEG's DCT is the orthonormal 8×8 DCT-II: a matrix
   product), divided by the quality-scaled standard quantisation tables (ITU T.81 Annex K, libjpeg's
   scaling and its clamp to 1..255), rounded by :func:`quantization_round`, multiplied back, inverse
   DCT, +128;
4. chroma upsampled 2× with the triangle filter of libjpeg's "fancy upsampling" (¾ of the nearer
   sample, ¼ of the farther, edges repeated: bilinear interpolation with half-pixel centres), YCbCr →
   RGB, clipped to [0, 255].

Its values are the exact rounding's: they stay within a few 0..255 units of PIL's on average (libjpeg
computes the DCT, the colour conversion and the subsampling in integers, and a coefficient that lies
near half a step then rounds the other way; measured in ``tests/test_robustness_parts.py``). What it
is for is its gradient: the rounding of the quantised coefficients, whose true derivative is zero,
gets the derivative of :func:`quantization_round`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU T.81 Annex K tables K.1 (luminance) and K.2 (chrominance), row by row (natural order)
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def quantization_table(table: tuple[tuple[int, ...], ...], quality: int) -> torch.Tensor:
    """libjpeg's table for ``quality`` (1..100): the base ``table`` scaled by ``5000/q`` (q < 50) or
    ``200 − 2q`` percent, rounded, clamped to 1..255 (baseline JPEG). ``[8, 8]``, float64."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(table, dtype=torch.int64)
    return ((base * scale + 50) // 100).clamp(1, 255).double()


def dct_matrix() -> torch.Tensor:
    """The orthonormal 8×8 DCT-II matrix ``D [8, 8]`` (float64): a block's DCT is ``D @ b @ D.T``."""
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d


def quantization_round(z: torch.Tensor) -> torch.Tensor:
    """``round(z)`` with a surrogate derivative: 1 outside the zero bin (a coefficient JPEG keeps passes
    a change on, straight through), ``2|z|`` inside it (a coefficient JPEG drops passes a change only
    by crossing ±½: nothing at its centre, rising to 1 at its edges, where the two meet).

    On the 36 queries of ``benchmarks/RESULTS.md`` ("The trap models") the JPEG trap's BPDA reached a
    robust mAP of 25.86 with it, 34.71 with Shin & Song's ``round(z) + (z − round(z))³`` (derivative
    ``3 (z − round(z))²`` in every bin: a kept coefficient's gradient shrinks at random with its place
    in the bin), 27.21 straight through everywhere, 27.11 with 0 in the zero bin, 30.00 with the
    identity for the whole JPEG; the plain model's 24.19."""
    r = torch.round(z)
    surrogate = torch.where(r == 0, z * z.abs(), z)
    return r + (surrogate - surrogate.detach())


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` (H, W multiples of 8) → 8×8 blocks ``[N, H/8, W/8, 8, 8]``."""
    n, h, w = x.shape
    return x.view(n, h // 8, 8, w // 8, 8).transpose(2, 3)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    n, bh, bw = b.shape[:3]
    return b.transpose(2, 3).reshape(n, bh * 8, bw * 8)


def _compress_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """A ``[N, H, W]`` plane in 0..255 through level shift, DCT, quantisation (:func:`quantization_round`) and back."""
    d = dct_matrix().to(plane.device, plane.dtype)
    q = table.to(plane.device, plane.dtype)
    coefficients = d @ _blocks(plane - 128.0) @ d.T
    restored = quantization_round(coefficients / q) * q
    return _unblocks(d.T @ restored @ d) + 128.0


def differentiable_jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """JPEG round trip of ``x [B,3,H,W]`` in [0,1] at ``quality`` (4:2:0), differentiable; ``[B,3,H,W]`` in [0,1]."""
    b, _, h, w = x.shape
    ph, pw = -h % 16, -w % 16
    rgb = F.pad(x * 255.0, (0, pw, 0, ph), mode="replicate") if ph or pw else x * 255.0
    ycc = torch.einsum("ij,bjhw->bihw", torch.tensor(RGB_TO_YCBCR, dtype=x.dtype, device=x.device), rgb)
    luma = _compress_plane(ycc[:, 0], quantization_table(LUMA_TABLE, quality))
    chroma = F.avg_pool2d(ycc[:, 1:], 2) + 128.0
    hc, wc = chroma.shape[-2:]
    chroma = _compress_plane(chroma.reshape(b * 2, hc, wc), quantization_table(CHROMA_TABLE, quality)).view(b, 2, hc, wc)
    chroma = F.interpolate(chroma - 128.0, scale_factor=2, mode="bilinear", align_corners=False)
    out = torch.einsum("ij,bjhw->bihw", torch.tensor(YCBCR_TO_RGB, dtype=x.dtype, device=x.device), torch.cat([luma[:, None], chroma], 1))
    return (out[..., :h, :w] / 255.0).clamp(0.0, 1.0)
