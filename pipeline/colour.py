"""Colour: which YUV matrix and range a stream uses, and YUV <-> RGB on the inference device.

Conversions run as tensor ops wherever the model runs (GPU or CPU), so decode and encode only
move planes. Decoded frames keep their native planar layout and bit depth; the output is
4:2:0 in the input's matrix (limited range), tagged explicitly so players need not guess: 8-bit
for 8-bit inputs, 10-bit (16-bit samples in [64, 940]) for inputs of more than 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# FFmpeg AVColorSpace codes -> (Kr, Kb)
MATRICES = {
    1: (0.2126, 0.0722),  # BT.709
    4: (0.30, 0.11),  # FCC
    5: (0.299, 0.114),  # BT.470BG (BT.601 625)
    6: (0.299, 0.114),  # SMPTE 170M (BT.601 525)
    7: (0.212, 0.087),  # SMPTE 240M
    9: (0.2627, 0.0593),  # BT.2020 non-constant luminance
    10: (0.2627, 0.0593),  # BT.2020 constant luminance (treated as NCL)
}
BT601, BT709 = 6, 1
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2


@dataclass(frozen=True)
class ColourSpec:
    """How to read (or write) one stream's samples."""

    layout: str  #: "yuv" (planar Y, U, V), "gray" (Y only) or "rgb" (HxWx3)
    bits: int = 8
    matrix: int = BT601  #: FFmpeg colorspace code actually used
    full_range: bool = False
    primaries: int = 2  #: tags copied through (2 = unspecified)
    transfer: int = 2

    @property
    def coefficients(self) -> tuple[float, float]:
        return MATRICES.get(self.matrix, MATRICES[BT601])


def effective_matrix(colorspace: int, height: int) -> int:
    """The matrix a tagged stream uses; untagged streams get the usual guess (HD -> BT.709)."""
    if colorspace in MATRICES:
        return colorspace
    return BT709 if height >= 720 else BT601


def is_full_range(color_range: int, pix_fmt: str) -> bool:
    return color_range == RANGE_FULL or pix_fmt.startswith("yuvj")


def _levels(bits: int, full_range: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma centre, chroma span) in code values."""
    if full_range:
        top = float((1 << bits) - 1)
        return 0.0, top, float(1 << (bits - 1)), top
    step = float(1 << (bits - 8))
    return 16 * step, 219 * step, 128 * step, 224 * step


def yuv_to_rgb(y: Tensor, u: Tensor | None, v: Tensor | None, spec: ColourSpec) -> Tensor:
    """Planes (N, H, W) and (N, h, w) in code values -> RGB float (N, 3, H, W) in [0, 1]."""
    y_off, y_span, c_mid, c_span = _levels(spec.bits, spec.full_range)
    luma = (y.float() - y_off) / y_span
    if u is None or v is None:
        return luma.clamp(0, 1).unsqueeze(1).expand(-1, 3, -1, -1)
    size = y.shape[-2:]
    chroma = torch.stack([u, v], dim=1).float()
    if chroma.shape[-2:] != size:
        chroma = F.interpolate(chroma, size=size, mode="bilinear", align_corners=False)
    cb, cr = ((chroma - c_mid) / c_span).unbind(1)
    kr, kb = spec.coefficients
    kg = 1.0 - kr - kb
    r = luma + 2 * (1 - kr) * cr
    b = luma + 2 * (1 - kb) * cb
    g = (luma - kr * r - kb * b) / kg
    return torch.stack([r, g, b], dim=1).clamp(0, 1)


def plane_tensor(array: np.ndarray) -> Tensor:
    """A plane as a CPU tensor; 16-bit samples widen to int32 (torch has few uint16 kernels)."""
    if array.dtype == np.uint16:
        array = array.astype(np.int32)
    return torch.from_numpy(array)


def planes_to_rgb(planes: list[Tensor], spec: ColourSpec) -> Tensor:
    """A frame's (stacked) planes in their own layout -> RGB float (N, 3, H, W) in [0, 1]."""
    if spec.layout == "rgb":
        return rgb8_to_float(planes[0], spec.bits)
    if spec.layout == "gray":
        return yuv_to_rgb(planes[0], None, None, spec)
    return yuv_to_rgb(planes[0], planes[1], planes[2], spec)


def rgb_to_yuv420(rgb: Tensor, spec: ColourSpec) -> tuple[Tensor, Tensor, Tensor]:
    """RGB float (N, 3, H, W) in [0, 1], H and W even -> limited-range Y, U, V planes of
    ``spec.bits``: uint8 for 8 bits, uint16 above (10 bits: Y in [64, 940]).

    Chroma is the mean of each 2x2 block (centre siting).
    """
    kr, kb = spec.coefficients
    kg = 1.0 - kr - kb
    r, g, b = rgb.float().unbind(1)
    luma = kr * r + kg * g + kb * b
    cb = (b - luma) / (2 * (1 - kb))
    cr = (r - luma) / (2 * (1 - kr))
    chroma = F.avg_pool2d(torch.stack([cb, cr], dim=1), 2)
    step = float(1 << (spec.bits - 8))
    dtype = torch.uint8 if spec.bits <= 8 else torch.uint16
    y = ((16 + 219 * luma) * step).round_().clamp_(16 * step, 235 * step).to(dtype)
    uv = ((128 + 224 * chroma) * step).round_().clamp_(16 * step, 240 * step).to(dtype)
    return y, uv[:, 0], uv[:, 1]


def rgb8_to_float(rgb: Tensor, bits: int = 8) -> Tensor:
    """(N, H, W, 3) integer RGB -> (N, 3, H, W) float in [0, 1]."""
    return rgb.permute(0, 3, 1, 2).float() / float((1 << bits) - 1)


def output_bits(source: ColourSpec) -> int:
    """The output's bit depth: 8 for 8-bit sources, 10 for anything deeper."""
    return 8 if source.bits <= 8 else 10


def output_spec(source: ColourSpec, out_height: int) -> ColourSpec:
    """The output's colour: the source's matrix and tags (RGB sources get the usual choice for
    the output size), limited range, 8 or 10 bits (:func:`output_bits`)."""
    guessed = BT709 if out_height >= 720 else BT601
    matrix = guessed if source.layout == "rgb" else source.matrix
    bits = output_bits(source)
    return ColourSpec("yuv", bits, matrix, False, source.primaries, source.transfer)
