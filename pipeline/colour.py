"""Colour, as a description: which YUV matrix, range, primaries and transfer a stream uses, and
what the output's will be. Pure data (no torch): decoding, planning and encoding read it; the
conversions themselves run on the inference device (:mod:`carn_stream.pipeline.engine.convert`).

Decoded frames keep their native planar layout and bit depth; the output is 4:2:0 in the
input's matrix (limited range), tagged explicitly so players need not guess: 8-bit for 8-bit
inputs, 10-bit (16-bit samples in [64, 940]) for inputs of more than 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def levels(bits: int, full_range: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma centre, chroma span) in code values."""
    if full_range:
        top = float((1 << bits) - 1)
        return 0.0, top, float(1 << (bits - 1)), top
    step = float(1 << (bits - 8))
    return 16 * step, 219 * step, 128 * step, 224 * step


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
