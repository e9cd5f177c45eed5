"""What travels between stages: frames with their index and timestamps, and batches of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from carn_stream.pipeline.colour import ColourSpec


def upscaled_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The (width, height) of a frame upscaled ``scale`` times: rounded down to even sides,
    which 4:2:0 encoding needs (x3 of 35x27 is 104x80). The one rule the engine, the limits,
    the playlists and live sessions follow."""
    return (width * scale) // 2 * 2, (height * scale) // 2 * 2


@dataclass
class SourceFrame:
    """One decoded frame, planes in their native layout and bit depth."""

    index: int
    pts: int | None
    time_base: Fraction
    planes: tuple[np.ndarray, ...]  #: (Y, U, V), (Y,), or (RGB HxWx3,)
    spec: ColourSpec
    rotation: int = 0  #: display rotation in degrees (counter-clockwise), from side data
    decoded_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return self.planes[0].shape[:2]

    @property
    def shape_key(self) -> tuple:
        """Frames with equal keys can share a batch."""
        return (self.spec, *(p.shape for p in self.planes), self.planes[0].dtype.str)


@dataclass
class UpscaledFrame:
    """One output frame: 4:2:0 planes (uint8, or uint16 for 10 bits) plus the source frame's
    timestamps."""

    index: int
    pts: int | None
    time_base: Fraction
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    def to_video_frame(self) -> av.VideoFrame:
        return yuv420_video_frame(self.y, self.u, self.v)

    def upright(self, rotation: int) -> UpscaledFrame:
        """The frame turned as a player shows it (``rotation``: the display rotation,
        counterclockwise degrees, as :attr:`av.VideoFrame.rotation` reads it)."""
        if not quarter_turns(rotation):
            return self
        y, u, v = (upright(p, rotation) for p in (self.y, self.u, self.v))
        return UpscaledFrame(self.index, self.pts, self.time_base, y, u, v)


def quarter_turns(rotation: int) -> int:
    """Counterclockwise quarter turns (0-3) of a display rotation in degrees."""
    return round(rotation / 90) % 4


def upright(picture: np.ndarray, rotation: int) -> np.ndarray:
    """A plane or an RGB picture (rows first) turned by its display ``rotation``."""
    turns = quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(picture, turns)) if turns else picture


def yuv420_video_frame(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> av.VideoFrame:
    """A PyAV frame from Y (H x W) and U, V (H/2 x W/2) planes: ``yuv420p`` from uint8 planes,
    ``yuv420p10le`` from uint16 ones."""
    h, w = y.shape
    stacked = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w)
    fmt = "yuv420p" if y.dtype == np.uint8 else "yuv420p10le"
    return av.VideoFrame.from_ndarray(stacked, format=fmt)


@dataclass
class FrameBatch:
    """Consecutive frames of one shape, in order."""

    frames: list[SourceFrame]
    formed_at: float = field(default_factory=time.monotonic)  #: when the batch was complete

    @property
    def spec(self) -> ColourSpec:
        return self.frames[0].spec

    def stacked(self) -> list[np.ndarray]:
        """Each plane stacked over the batch: (N, ...) arrays."""
        return [np.stack(planes) for planes in zip(*(f.planes for f in self.frames), strict=True)]
