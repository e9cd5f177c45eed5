"""Colour, as a description: which YUV matrix, range, primaries and transfer a stream uses, and
what the output's will be. Pure data (no torch): decoding, planning and encoding read it; the
conversions themselves run on the inference device (:mod:`carn_stream.pipeline.engine.convert`).

Decoded frames keep their native planar layout and bit depth; the output is 4:2:0 in the
input's matrix (limited range), tagged explicitly so players need not guess: 8-bit for 8-bit
inputs, 10-bit (16-bit samples in [64, 940]) for inputs of more than 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
#: Transfer characteristics (H.273) of HDR video: SMPTE ST 2084 (PQ), ARIB STD-B67 (HLG).
PQ, HLG = 16, 18
UNSPECIFIED_TRANSFER = 2
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


#: The primaries and transfer that go with a matrix, where a source leaves them unsaid: an
#: MP4 or MOV muxer writes its ``colr`` box only with all three, and a player that reads the
#: container, or guesses by size (an SD source upscaled to HD: BT.709), showed shifted colour.
MATRIX_COMPANIONS = {1: (1, 1), 5: (5, 6), 6: (6, 6), 9: (9, 14), 10: (9, 14)}
_UNSAID = (0, 2)  #: reserved, unspecified


def output_spec(source: ColourSpec, out_height: int) -> ColourSpec:
    """The output's colour: the source's matrix and tags (RGB sources get the usual choice for
    the output size), primaries and transfer the source leaves unsaid filled in from the
    matrix (:data:`MATRIX_COMPANIONS`), limited range, 8 or 10 bits (:func:`output_bits`)."""
    guessed = BT709 if out_height >= 720 else BT601
    matrix = guessed if source.layout == "rgb" else source.matrix
    bits = output_bits(source)
    primaries, transfer = source.primaries, source.transfer
    companions = MATRIX_COMPANIONS.get(matrix)
    if companions is not None:
        primaries = companions[0] if primaries in _UNSAID else primaries
        transfer = companions[1] if transfer in _UNSAID else transfer
    return ColourSpec("yuv", bits, matrix, False, primaries, transfer)


def video_range(transfer: int) -> str:
    """HLS's name for the dynamic range of video with ``transfer``: PQ, HLG or SDR."""
    return {PQ: "PQ", HLG: "HLG"}.get(transfer, "SDR")


@dataclass(frozen=True)
class StaticHdr:
    """A title's static HDR metadata (HDR10), in the units its SEI messages and MP4 boxes use.

    ``mastering``: the mastering display's colour volume (SMPTE ST 2086): the x, y chromaticity
    of its green, blue and red primaries and of its white point in steps of 0.00002, then its
    largest and smallest luminance in steps of 0.0001 cd/m2. ``light_level``: the content's
    light levels (CTA-861.3): MaxCLL and MaxFALL in cd/m2. Either may be absent.
    """

    mastering: tuple[int, ...] | None = None
    light_level: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mastering is not None and not self.mastering_in_range(self.mastering):
            raise ValueError(f"mastering display metadata out of range: {self.mastering}")
        if self.light_level is not None and not self.light_level_in_range(self.light_level):
            raise ValueError(f"content light levels out of range: {self.light_level}")
        if self.mastering is None and self.light_level is None:
            raise ValueError("static HDR metadata needs mastering display or light levels")

    @staticmethod
    def mastering_in_range(values: tuple[int, ...]) -> bool:
        """Chromaticities within [0, 1] (50000 steps), the smallest luminance below the largest,
        and both 32-bit (the SEI's fields; libx264 refuses the encoder otherwise)."""
        if len(values) != 10:
            return False
        *chromaticities, high, low = values
        return all(0 <= v <= 50000 for v in chromaticities) and 0 <= low < high < 2**32

    @staticmethod
    def light_level_in_range(values: tuple[int, ...]) -> bool:
        """MaxCLL and MaxFALL within the SEI's 16 bits."""
        return len(values) == 2 and all(0 <= v < 2**16 for v in values)

    def encoder_params(self, encoder: str) -> str:
        """The metadata as ``libx265``'s ``x265-params`` or ``libx264``'s ``x264-params`` give
        it ("" for other encoders): their SEI messages then carry it in every keyframe."""
        names = {"libx265": ("master-display", "max-cll"), "libx264": ("mastering-display", "cll")}
        if encoder not in names:
            return ""
        display, light = names[encoder]
        params = []
        if self.mastering is not None:
            gx, gy, bx, by, rx, ry, wx, wy, high, low = self.mastering
            params.append(
                f"{display}=G({gx},{gy})B({bx},{by})R({rx},{ry})WP({wx},{wy})L({high},{low})"
            )
        if self.light_level is not None:
            params.append(f"{light}={self.light_level[0]},{self.light_level[1]}")
        return ":".join(params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mastering": None if self.mastering is None else list(self.mastering),
            "light_level": None if self.light_level is None else list(self.light_level),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StaticHdr:
        mastering, light = data.get("mastering"), data.get("light_level")
        return cls(
            None if mastering is None else tuple(int(v) for v in mastering),
            None if light is None else tuple(int(v) for v in light),  # (checked: two)
        )
