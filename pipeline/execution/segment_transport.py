"""A segment's input packets cut into a small container, without decoding, to travel elsewhere.

The head of a cluster sends each worker only the compressed packets a segment needs: the video
packets from the keyframe at or before the segment's start, in decode order, until every frame
of the segment is covered (open-GOP leading pictures included), and the audio packets of its
time range with a margin (the first segment also takes what precedes it, the last what follows).
The container is QuickTime/MOV: it keeps each stream's time base, B-frame timestamps (edit
lists) and the display rotation. Its movie time scale is a common multiple of the streams'
clocks, so edit lists do not round a stream's start, and timestamps read back exactly as they
were. Where the muxer stores a coarser clock as a finer one, the timestamps are scaled by a
whole factor: :func:`localize` adapts a task to the copy it reads. The copy counts its times
from the plan's origin (``SegmentPlan.origin``), as segments do: a MOV track cannot start
before 0, where an MPEG-TS input read before its 33-bit clock's wrap does.
"""

from __future__ import annotations

import asyncio
import io
import math
import tempfile
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.execution.executors import (
    FrameCallback,
    SegmentResult,
    SegmentTask,
    upscale_segment,
)
from carn_stream.pipeline.media.decode import (
    main_video,
    moved,
    open_input,
    whole_ticks,
    with_decode_times,
)
from carn_stream.pipeline.media.seeking import from_first_keyframe
from carn_stream.pipeline.media.segments import Segment, audio_packets, seek_to_show

if TYPE_CHECKING:  # the engine (torch) is the caller's
    from carn_stream.pipeline.engine.infer import InferenceWorker

#: The copy's containers, in the order tried: MOV holds the most video codecs, MP4 also Opus
#: and FLAC (which MOV refuses). One demuxer reads both, whatever the file's suffix.
FORMATS = ("mov", "mp4")
SUFFIX = ".mov"
AUDIO_MARGIN_SECONDS = 2  #: audio read either side of a segment (as the segment decoder does)
_MAX_TIMESCALE = 2**31 - 1
#: The most bytes one segment's copy for a cluster worker may hold: it is built in memory and
#: sent whole. A segment starts at the keyframe before it, so an input with few keyframes
#: (one, in a screen recording) made copies growing to the whole input, segment after segment.
MAX_COPY_BYTES = 512 * 1024 * 1024


class CopyTooLarge(InputError):
    """A segment's copy for a cluster worker would pass :data:`MAX_COPY_BYTES`."""


def _movie_timescale(streams: list[av.stream.Stream]) -> int | None:
    scale = 1
    for stream in streams:
        scale = math.lcm(scale, stream.time_base.denominator)
    return scale if scale <= _MAX_TIMESCALE else None


def cut_segment(
    source: Path, segment: Segment, time_base: Fraction, last: bool, origin: int = 0
) -> bytes:
    """The packets ``segment`` of ``source`` needs, remuxed into one MOV file in memory (MP4
    where MOV cannot hold a stream: Opus and FLAC audio, as WebM and Matroska carry), their
    times counted from ``origin`` (the plan's)."""
    failures = []
    for container_format in FORMATS:
        try:
            return _copy(source, segment, time_base, last, origin, container_format)
        except CopyTooLarge:
            raise
        except (av.FFmpegError, ValueError) as exc:
            failures.append(f"{container_format}: {exc}")
    raise InputError(
        f"{segment.describe()}: its packets cannot be copied for a cluster worker "
        f"({'; '.join(failures)})"
    )


def _copy(
    source: Path,
    segment: Segment,
    time_base: Fraction,
    last: bool,
    origin: int,
    container_format: str,
) -> bytes:
    with open_input(source) as video_in, open_input(source) as audio_in:
        video = main_video(video_in)
        audio = list(audio_in.streams.audio)
        options = {}
        timescale = _movie_timescale([video, *audio])
        if timescale is not None:
            options["movie_timescale"] = str(timescale)
        buffer = io.BytesIO()
        with av.open(buffer, "w", format=container_format, options=options) as out:
            out_video = out.add_stream_from_template(video)
            out_video.time_base = video.time_base
            out_audio = {}
            for stream in audio:
                out_audio[stream.index] = out.add_stream_from_template(stream)
                out_audio[stream.index].time_base = stream.time_base
            for packet in _video_packets(video_in, segment):
                packet.stream = out_video
                out.mux(moved(packet, -origin))
                if buffer.tell() > MAX_COPY_BYTES:
                    raise CopyTooLarge(
                        f"{segment.describe()}: its copy for a cluster worker passes "
                        f"{MAX_COPY_BYTES // 2**20} MiB (it starts at the keyframe before it, "
                        "and the input's keyframes are far apart); upscale this input on one "
                        "machine (CARN_STREAM_EXECUTOR=process)"
                    )
            for packet in audio_packets(audio_in, segment, time_base, last, AUDIO_MARGIN_SECONDS):
                packet.stream = out_audio[packet.stream.index]
                out.mux(moved(packet, -origin))
    return buffer.getvalue()


def _video_packets(container: av.container.InputContainer, segment: Segment):
    video = main_video(container)
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


def localize(
    segment: Segment, time_base: Fraction, copy: Path, origin: int = 0
) -> tuple[Segment, Fraction]:
    """The segment and time base as ``copy`` (made by :func:`cut_segment` from ``origin``)
    stores them."""
    with open_input(copy) as container:
        stored = main_video(container).time_base
    factor = time_base / stored
    if factor.denominator != 1:
        raise InputError(
            f"{segment.describe()}: the copied video clock {stored} is not a whole multiple "
            f"of the input's {time_base}"
        )
    k, ticks = factor.numerator, whole_ticks(origin, stored)
    start, end = segment.start_pts * k - ticks, segment.end_pts * k - ticks
    return replace(segment, start_pts=start, end_pts=end), stored


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
        segment, time_base = await asyncio.to_thread(
            localize, task.segment, task.time_base, copy, task.time_shift
        )
        local = replace(  # the copy's times count from the origin already
            task, source=copy, segment=segment, time_base=time_base, time_shift=0,
            target=Path(folder) / f"segment-{task.segment.index}.ts",
        )  # fmt: skip
        result = await upscale_segment(local, worker, on_frame, node)
        encoded = await asyncio.to_thread(local.target.read_bytes)
    return result, encoded
