"""Interlaced video made progressive before it is upscaled or scaled.

An interlaced frame holds two fields, the even and the odd lines, taken a field period apart:
anything that moves is combed. Upscaled as it is, the comb is upscaled (and sharpened) with
the picture. Standard-definition archive (DVD, broadcast 480i/576i) and broadcast HD (1080i)
are interlaced, and they are what gets upscaled most. Frames the decoder flags interlaced go
through FFmpeg's ``bwdif`` (motion-adaptive, from the frames either side), one progressive
frame per frame at the first field's instant, so frame counts and timestamps stay as planned;
frames flagged progressive pass as they are. A decode of a segment feeds it only that
segment's frames: the first and the last are made from one neighbour.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av

#: The deinterlacer and its options: one frame out per frame in, the field order from each
#: frame's flags, only the frames flagged interlaced.
FILTER = "bwdif"
FILTER_OPTIONS = "mode=send_frame:parity=auto:deint=interlaced"

log = logging.getLogger(__name__)

Timed = tuple[int | None, av.VideoFrame]  #: (presentation time, frame) in decode output order


class Deinterlacer:
    """Frames in, in display order; the same frames out, progressive, in the same order and
    with the same times (one frame later, while the filter waits for the next one). Nothing
    is filtered until a frame flagged interlaced comes."""

    def __init__(self) -> None:
        self._graph: av.filter.Graph | None = None
        self._shape: tuple[int, int, str, Fraction | None] | None = None
        self._times: collections.deque[tuple[int | None, Fraction | None]] = collections.deque()
        #: a shape no filter could be made for: its frames pass as they are
        self._refused: tuple[int, int, str, Fraction | None] | None = None

    def push(self, pts: int | None, frame: av.VideoFrame) -> Iterator[Timed]:
        """Feed one frame; the frames ready."""
        shape = (frame.width, frame.height, frame.format.name, frame.time_base)
        if self._graph is not None and shape != self._shape:
            yield from self.flush()  # a new size or format: a new filter
        if self._graph is None:
            if not frame.interlaced_frame or shape == self._refused:
                yield pts, frame
                return
            try:
                self._graph = _graph(frame)
            except (av.FFmpegError, ValueError) as exc:
                log.warning("frames of %s %dx%d are upscaled as coded: %s", frame.format.name,
                            frame.width, frame.height, exc)  # fmt: skip
                self._refused = shape
                yield pts, frame
                return
            self._shape = shape
        self._times.append((pts, frame.time_base))
        self._graph.push(frame)
        yield from self._pulled()

    def flush(self) -> Iterator[Timed]:
        """The frames the filter still holds (the input has ended, or changes shape)."""
        if self._graph is None:
            return
        self._graph.push(None)
        yield from self._pulled()
        self._graph = self._shape = None

    def _pulled(self) -> Iterator[Timed]:
        assert self._graph is not None
        while True:
            try:
                out = self._graph.vpull()
            except (av.BlockingIOError, av.EOFError):
                return
            pts, time_base = self._times.popleft()  # the filter's clock is the field rate's
            out.pts, out.time_base = pts, time_base
            yield pts, out


def _graph(frame: av.VideoFrame) -> av.filter.Graph:
    graph = av.filter.Graph()
    source = graph.add_buffer(
        width=frame.width,
        height=frame.height,
        format=frame.format.name,
        time_base=frame.time_base or Fraction(1, 90000),
    )
    deinterlace = graph.add(FILTER, FILTER_OPTIONS)
    # The filter takes planar formats: FFmpeg converts others (UYVY, NV12) to one, losslessly,
    # and this converts them back, so frames come out as they went in.
    same = graph.add("format", frame.format.name)
    sink = graph.add("buffersink")
    source.link_to(deinterlace)
    deinterlace.link_to(same)
    same.link_to(sink)
    graph.configure()
    return graph


def progressive(frames: Iterable[Timed], count: int | None = None) -> Iterator[Timed]:
    """``frames`` (in display order) made progressive where they are flagged interlaced; with
    ``count``, the input ends after that many frames (the rest is not read)."""
    deinterlacer = Deinterlacer()
    for n, (pts, frame) in enumerate(frames, 1):
        yield from deinterlacer.push(pts, frame)
        if count is not None and n >= count:
            break
    yield from deinterlacer.flush()
