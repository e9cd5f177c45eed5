"""A segment's input packets cut into a small container, without decoding, to travel elsewhere.

The head of a cluster sends each worker only the compressed packets a segment needs: the video
packets from the keyframe at or before the segment's start, in decode order, until every frame
of the segment is covered (open-GOP leading pictures included), and the audio packets of its
time range with a margin (the first segment also takes what precedes it, the last what follows).
The container is QuickTime/MOV: it keeps each stream's time base, B-frame timestamps (edit
lists) and the display rotation. Its movie time scale is a common multiple of the streams'
clocks, so edit lists do not round a stream's start, and timestamps read back exactly as they
were. Where the muxer stores a coarser clock as a finer one, the timestamps are scaled by a
whole factor: :func:`localize` adapts a task to the copy it reads. A MOV track cannot start
before 0: where the segment's video does (MPEG-TS before a 33-bit clock wrap that the input
starts ahead of), every time in the copy is moved later by whole seconds, which the copy
records (:data:`TIME_SHIFT_KEY`) and the worker takes off again as it decodes.
"""

from __future__ import annotations

import asyncio
import io
import math
import tempfile
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import av

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.execution.executors import (
    FrameCallback,
    SegmentResult,
    SegmentTask,
    upscale_segment,
)
from carn_stream.pipeline.media.decode import open_input, with_decode_times
from carn_stream.pipeline.media.seeking import from_first_keyframe
from carn_stream.pipeline.media.segments import Segment, audio_packets, seek_to_show

if TYPE_CHECKING:  # the engine (torch) is the caller's
    from carn_stream.pipeline.engine.infer import InferenceWorker

FORMAT = "mov"
SUFFIX = ".mov"
AUDIO_MARGIN_SECONDS = 2  #: audio read either side of a segment (as the segment decoder does)
_MAX_TIMESCALE = 2**31 - 1
#: The copy's metadata entry for the seconds its times were moved later (absent: none).
TIME_SHIFT_KEY = "carn_stream_time_shift"


class LocalSegment(NamedTuple):
    """A segment as a copy made by :func:`cut_segment` stores it."""

    segment: Segment
    time_base: Fraction
    time_shift: int  #: seconds the copy's times are later than the input's


def _movie_timescale(streams: list[av.stream.Stream]) -> int | None:
    scale = 1
    for stream in streams:
        scale = math.lcm(scale, stream.time_base.denominator)
    return scale if scale <= _MAX_TIMESCALE else None


def cut_segment(source: Path, segment: Segment, time_base: Fraction, last: bool) -> bytes:
    """The packets ``segment`` of ``source`` needs, remuxed into one MOV file in memory."""
    with open_input(source) as video_in, open_input(source) as audio_in:
        video = video_in.streams.video[0]
        audio = list(audio_in.streams.audio)
        options = {}
        timescale = _movie_timescale([video, *audio])
        if timescale is not None:
            options["movie_timescale"] = str(timescale)
        buffer = io.BytesIO()
        try:
            video_packets = list(_video_packets(video_in, segment))
            audio_packets_ = list(
                audio_packets(audio_in, segment, time_base, last, AUDIO_MARGIN_SECONDS)
            )
            shift = _time_shift(video_packets, audio_packets_)
            if shift:
                options["movflags"] = "use_metadata_tags"
            with av.open(buffer, "w", format=FORMAT, options=options) as out:
                if shift:
                    out.metadata[TIME_SHIFT_KEY] = str(shift)
                out_video = out.add_stream_from_template(video)
                out_video.time_base = video.time_base
                out_audio = {}
                for stream in audio:
                    out_audio[stream.index] = out.add_stream_from_template(stream)
                    out_audio[stream.index].time_base = stream.time_base
                for packet in video_packets:
                    packet.stream = out_video
                    out.mux(_moved(packet, shift))
                for packet in audio_packets_:
                    packet.stream = out_audio[packet.stream.index]
                    out.mux(_moved(packet, shift))
        except (av.FFmpegError, ValueError) as exc:
            raise InputError(
                f"{segment.describe()}: its packets cannot be copied for a cluster worker ({exc})"
            ) from exc
    return buffer.getvalue()


def _time_shift(video: list[av.Packet], audio: list[av.Packet]) -> int:
    """Whole seconds to move every time later by, so that none is negative, where the video
    starts before 0 (0: none needed). A multiple of each time base's numerator, so that it is
    a whole number of ticks in every stream."""
    starts = [p.pts for p in video if p.pts is not None]
    if not starts or min(starts) >= 0:
        return 0
    times = [t * p.time_base for p in (*video, *audio) for t in (p.pts, p.dts) if t is not None]
    unit = math.lcm(*(p.time_base.numerator for p in (*video, *audio)))
    return unit * math.ceil(-min(times) / unit)


def _moved(packet: av.Packet, seconds: int) -> av.Packet:
    if seconds:
        ticks = seconds / packet.time_base
        if ticks.denominator != 1:  # not with a multiple of the numerator (see _time_shift)
            raise ValueError(f"{seconds} s is no whole number of ticks of {packet.time_base}")
        if packet.pts is not None:
            packet.pts += int(ticks)
        if packet.dts is not None:
            packet.dts += int(ticks)
    return packet


def _video_packets(container: av.container.InputContainer, segment: Segment):
    video = container.streams.video[0]
    if segment.index > 0:
        seek_to_show(container, segment)
    # From the first keyframe, the first segment's too: the packets of a recording cut mid-GOP
    # before it show nothing, and a MOV that starts with one shown after the B-frames that
    # follow it read back a frame early ("decoded 24 of 25 frames").
    packets = from_first_keyframe(container.demux(video))
    covered = 0
    first = True
    for packet in with_decode_times(packets):
        if packet.size == 0 or (packet.dts is None and packet.pts is None):
            continue
        pts = packet.pts if packet.pts is not None else packet.dts
        if not first and (packet.is_discard or pts <= segment.start_pts):
            # Only the first packet starts the copy: a reader of its edit list would start at
            # a later keyframe shown no later than the segment's start, and skip the pictures
            # the first one builds up (a recovery point's; see elementary._write).
            packet.is_keyframe = False
        first = False
        yield packet
        if segment.start_pts <= pts < segment.end_pts:
            covered += 1
            if covered == segment.frames:
                return


def write_copy(data: bytes, folder: Path) -> Path:
    """Write a received segment container into ``folder``; returns its path."""
    with tempfile.NamedTemporaryFile(dir=folder, suffix=SUFFIX, delete=False) as handle:
        handle.write(data)
    return Path(handle.name)


def localize(segment: Segment, time_base: Fraction, copy: Path) -> LocalSegment:
    """The segment and time base as ``copy`` (made by :func:`cut_segment`) stores them, and the
    seconds its times were moved later."""
    with open_input(copy) as container:
        stored = container.streams.video[0].time_base
        shift = int(container.metadata.get(TIME_SHIFT_KEY, 0))
    factor = time_base / stored
    if factor.denominator != 1:
        raise InputError(
            f"{segment.describe()}: the copied video clock {stored} is not a whole multiple "
            f"of the input's {time_base}"
        )
    k, ticks = factor.numerator, shift / stored
    if ticks.denominator != 1:
        raise InputError(f"{segment.describe()}: the copy's times moved by {shift} s are not "
                         f"whole ticks of its video clock {stored}")  # fmt: skip
    start, end = segment.start_pts * k + int(ticks), segment.end_pts * k + int(ticks)
    return LocalSegment(replace(segment, start_pts=start, end_pts=end), stored, shift)


async def upscale_copy(
    data: bytes,
    task: SegmentTask,
    worker: InferenceWorker,
    on_frame: FrameCallback | None,
    node: str,
) -> tuple[SegmentResult, bytes]:
    """Upscale the segment in ``data`` (from :func:`cut_segment`) as a worker that never sees
    the input does: from the copy, written into a folder of its own, with the task adapted to
    it (:func:`localize`). Returns the result and the encoded segment."""
    with tempfile.TemporaryDirectory(prefix="carn-segment-") as folder:
        copy = await asyncio.to_thread(write_copy, data, Path(folder))
        segment, time_base, shift = await asyncio.to_thread(
            localize, task.segment, task.time_base, copy
        )
        local = replace(
            task, source=copy, segment=segment, time_base=time_base,
            time_shift=task.time_shift + shift,
            target=Path(folder) / f"segment-{task.segment.index}.ts",
        )  # fmt: skip
        result = await upscale_segment(local, worker, on_frame, node)
        encoded = await asyncio.to_thread(local.target.read_bytes)
    return result, encoded
