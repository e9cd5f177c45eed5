"""Audio a segment cannot copy, made AAC so that segments made apart play back to back.

An AAC frame holds 1024 samples and is decoded together with the one before it (overlapping
transforms), and a new encoder starts with a priming frame. Were each segment's audio encoded
on its own, every boundary would carry that priming frame, 21 ms of near silence over the end
of the previous segment, and a first frame without its neighbour (a click). So segments lay
their AAC frames on one grid, every 1024 samples of the segment clock, and each keeps the frames
that start in its own part of that clock (its :class:`AudioWindow`). Its audio is read and
encoded :data:`TRANSCODE_MARGIN_SECONDS` beyond both ends, which primes the decoder and the
encoder, and what was made outside the window is left out: back to back, the segments' frames
follow one another as one encoder's would, wherever each was made.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

AAC_FRAME = 1024  #: samples in an AAC frame: the grid's step
#: Transcoded audio is read this much beyond a segment's ends (seconds): for the decoder to
#: settle before :data:`PRIMING_FRAMES`, at every AAC rate, and the encoder's look-ahead
#: after the window.
TRANSCODE_MARGIN_SECONDS = Fraction(3, 4)
PRIMING_FRAMES = 4  #: frames encoded, and left out, before a later segment's window
_AAC_RATES = {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000}
#: Channel layouts FFmpeg's AAC encoder takes as they are (up to 6.1).
_AAC_LAYOUTS = frozenset({"mono", "stereo", "2.1", "3.0", "4.0", "quad", "5.0", "5.1",
                          "5.0(side)", "5.1(side)", "6.0", "6.1"})  # fmt: skip
#: FFmpeg's default layout for a channel count, for audio that names none (PCM in Matroska:
#: "6 channels" is 5.1 in WAVE's channel order).
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1"}


def transcoded_channels(channels: int) -> int:
    """The channels of a transcoded stream in segments: mono stays mono, the rest is stereo."""
    return 1 if channels == 1 else 2


@dataclass(frozen=True)
class AudioWindow:
    """The part of the segment clock (seconds) whose AAC frames a segment holds: frames that
    start from ``start`` (None: every frame before too, the first segment) up to ``end``
    (None: every frame after, the last segment). Segment n's end is segment n+1's start."""

    start: Fraction | None = None
    end: Fraction | None = None

    def later(self, seconds: Fraction) -> AudioWindow:
        """The same window on a clock ``seconds`` ahead."""
        return AudioWindow(
            None if self.start is None else self.start + seconds,
            None if self.end is None else self.end + seconds,
        )

    def grid_sample(self, seconds: Fraction, rate: int) -> int:
        """The first grid point (a sample index, a whole number of frames) at or after
        ``seconds``."""
        return math.ceil(seconds * rate / AAC_FRAME) * AAC_FRAME

    def holds(self, sample: int, rate: int) -> bool:
        """Whether the frame starting at ``sample`` belongs to this segment."""
        if self.start is not None and sample < self.grid_sample(self.start, rate):
            return False
        return self.end is None or sample < self.grid_sample(self.end, rate)


WHOLE = AudioWindow()  #: all of the audio: a run that is one segment


class AudioTranscoder:
    """Decoded audio frames -> AAC at the source's rate and layout, in frames on the segment
    clock's grid, keeping those in ``window``. A frame's time is its own plus ``offset``.
    More than two channels are mixed down to stereo, unless ``keep_layout`` (where AAC takes
    the source's layout as it is)."""

    def __init__(
        self,
        container: av.container.OutputContainer,
        source: av.audio.stream.AudioStream,
        offset: Fraction,
        window: AudioWindow,
        keep_layout: bool = False,
    ) -> None:
        ctx = source.codec_context
        rate = ctx.sample_rate if ctx.sample_rate in _AAC_RATES else 48000
        self.stream = container.add_stream("aac", rate=rate)
        # A named layout (AAC refuses "2 channels" of unspecified order).
        layout = ctx.layout.name
        if layout.endswith(" channels"):  # unnamed
            layout = _DEFAULT_LAYOUTS.get(ctx.layout.nb_channels, layout)
        if keep_layout and layout in _AAC_LAYOUTS:
            self.stream.layout = layout
        else:
            self.stream.layout = _DEFAULT_LAYOUTS[transcoded_channels(ctx.layout.nb_channels)]
        self._resampler = av.AudioResampler(format="fltp", layout=self.stream.layout, rate=rate)
        self._fifo = av.AudioFifo()
        self.rate, self.offset, self.window = rate, offset, window
        self._next: int | None = None  #: the grid sample the next frame read starts at
        self._skip = 0  #: samples still to drop to reach the grid
        self._time_base = Fraction(1, rate)

    def anchor(self, frames: Sequence[av.AudioFrame]) -> None:
        """Place the first of ``frames`` (the audio to come, all or its start) on the clock.
        Its own time may be rounded (Matroska counts milliseconds: up to 24 samples at 48 kHz,
        a jump at the boundary): each frame's time less the samples before it dates the first
        sample, and the median of those dates is taken."""
        dates, before = [], Fraction(0)
        for frame in frames:
            if frame.pts is not None and frame.time_base is not None:
                dates.append(frame.pts * frame.time_base - before)
            before += Fraction(frame.samples, frame.sample_rate)
        if dates:
            self._start_grid(statistics.median_low(dates) + self.offset)

    def encode(self, frames: Iterable[av.AudioFrame] | None) -> list[av.Packet]:
        """The window's AAC packets for ``frames`` (None: the rest, then flush)."""
        packets: list[av.Packet] = []
        for frame in [None] if frames is None else frames:
            if frame is not None and self._next is None:
                self._start_grid((frame.pts or 0) * frame.time_base + self.offset)
            if frame is not None:
                frame.pts = None  # the grid times what comes out
            for chunk in self._resampler.resample(frame):
                self._push(chunk)
            packets += self._drain(final=frame is None)
        if frames is None:
            packets += self._kept(self.stream.encode(None))
        return packets

    def _start_grid(self, seconds: Fraction) -> None:
        """Align the first sample with the grid. A later segment starts :data:`PRIMING_FRAMES`
        before its window, wherever its read began (the encoder's state, and so its bytes,
        then depend on the audio alone). The first segment, and audio that starts too late
        for that (it comes on inside the segment), is led in with silence from the grid point
        before it: none of it is left out."""
        first = round(seconds * self.rate)
        primed = None
        if self.window.start is not None:
            primed = self.window.grid_sample(self.window.start, self.rate)
            primed -= PRIMING_FRAMES * AAC_FRAME
        if primed is None or first > primed:
            lead = first % AAC_FRAME
            self._next = first - lead
            if lead:
                self._fifo.write(self._silence(lead))
        else:
            self._skip = primed - first
            self._next = primed

    def _silence(self, samples: int) -> av.AudioFrame:
        channels = self.stream.layout.nb_channels
        frame = av.AudioFrame.from_ndarray(
            np.zeros((channels, samples), np.float32), format="fltp", layout=self.stream.layout
        )
        frame.sample_rate = self.rate
        return frame

    def _push(self, chunk: av.AudioFrame) -> None:
        chunk.pts = None
        if self._skip >= chunk.samples:
            self._skip -= chunk.samples
            return
        self._fifo.write(chunk)
        if self._skip:
            self._fifo.read(self._skip)
            self._skip = 0

    def _drain(self, final: bool) -> list[av.Packet]:
        packets: list[av.Packet] = []
        while self._fifo.samples >= AAC_FRAME or (final and self._fifo.samples):
            chunk = self._fifo.read(AAC_FRAME, partial=final)
            chunk.pts, chunk.time_base, chunk.sample_rate = self._next, self._time_base, self.rate
            self._next = (self._next or 0) + AAC_FRAME
            packets += self._kept(self.stream.encode(chunk))
        return packets

    def _kept(self, packets: list[av.Packet]) -> list[av.Packet]:
        """The packets whose frame starts in the window (a packet's time is its frame's)."""
        return [p for p in packets if p.pts is None or self.window.holds(
            round(p.pts * p.time_base * self.rate), self.rate)]  # fmt: skip
