"""The original rendition of a segment: its packets remuxed into MPEG-TS, nothing decoded.

A remuxed segment holds the video packets from the segment's keyframe up to the next
segment's keyframe (decode order) and the audio of its time range, with every timestamp moved
by :data:`~carn_stream.pipeline.media.encode.SEGMENT_OFFSET_SECONDS` exactly as upscaled segments
are, so a player can switch between the original and an upscaled rendition at any segment.
Audio that MPEG-TS cannot carry as it is is left out; an audio rendition's segment
(:func:`remux_audio`) holds one stream, copied or made AAC as upscaled segments make it.
Written under a temporary name and published by rename. Only a segment that starts on a
keyframe can be copied so (a plan cut between the keyframes of a long-GOP input has segments
that need a decode pre-roll): see
:attr:`~carn_stream.pipeline.media.segments.SegmentPlan.keyframe_aligned`.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.bitstream

from carn_stream.pipeline.errors import InputError, ffmpeg_reason
from carn_stream.pipeline.media.audio_transcode import AudioTranscoder
from carn_stream.pipeline.media.decode import (
    codec_name,
    keep_language,
    main_video,
    open_input,
    with_decode_times,
)
from carn_stream.pipeline.media.encode import (
    SEGMENT_MUXER,
    SEGMENT_OFFSET_SECONDS,
    on_segment_clock,
)
from carn_stream.pipeline.media.hls import carried_as_is
from carn_stream.pipeline.media.seeking import from_keyframe_at, seek_to_keyframe
from carn_stream.pipeline.media.segments import Segment, SegmentPlan, audio_window, segment_audio

log = logging.getLogger(__name__)

#: Video codecs whose packets MPEG-TS segments carry as they are.
REMUXABLE_VIDEO = frozenset({"h264", "hevc"})


@dataclass(frozen=True)
class RemuxTask:
    """Copy one segment of ``source`` into the MPEG-TS file ``target``."""

    source: Path
    segment: Segment
    next_start: int | None  #: the next segment's first pts (None: the last segment)
    time_base: Fraction
    target: Path
    origin: int = 0  #: the plan's (``SegmentPlan.origin``): seconds taken off every time
    #: the plan's: the H.264 header's parameter sets may not be the ones in force mid-way
    in_band_parameter_sets: bool = False

    @classmethod
    def of(cls, source: Path, plan: SegmentPlan, index: int, target: Path) -> RemuxTask:
        following = plan.segments[index + 1].start_pts if index + 1 < len(plan.segments) else None
        return cls(source, plan.segments[index], following, plan.time_base, target, plan.origin,
                   plan.in_band_parameter_sets)  # fmt: skip


def remux_segment(task: RemuxTask) -> int:
    """Write the segment; returns its size in bytes."""

    def write(part: Path) -> None:
        with open_input(task.source) as video_in, open_input(task.source) as audio_in:
            _write(task, video_in, audio_in, part)

    return _published(task.target, write)


def _published(target: Path, write: Callable[[Path], None]) -> int:
    """Have ``write`` make ``target`` under a temporary name, then publish it by rename (or
    remove what it left); returns its size in bytes."""
    # (a name of its own: a cancelled remux's thread may still be writing the same segment)
    part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        write(part)
        part.replace(target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return target.stat().st_size


@contextlib.contextmanager
def _refusing(failure: str) -> Iterator[None]:
    """FFmpeg's refusal, as an InputError that says what ``failure`` could not be done and
    FFmpeg's reason."""
    try:
        yield
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(f"{failure} ({ffmpeg_reason(exc)})") from exc


def remux_audio(task: RemuxTask, number: int) -> int:
    """Write the input's audio stream ``number`` (its place among the audio streams) of the
    segment alone, as the segments carry it (an audio rendition's segment): its packets copied
    where MPEG-TS takes them as they are, else transcoded to AAC on the segments' grid (the
    frames an upscaled segment holds, bit for bit); timed as the segments are. Returns its size
    in bytes. Raises InputError where the segment has no packet of the stream, or its audio
    cannot be read or written."""
    return _published(task.target, lambda part: _write_audio(task, number, str(part)))


def audio_segment_size(task: RemuxTask, number: int) -> int:
    """The bytes :func:`remux_audio` would write, made in memory (``task.target`` unused)."""
    buffer = io.BytesIO()
    _write_audio(task, number, buffer)
    return buffer.getbuffer().nbytes


def _write_audio(task: RemuxTask, number: int, target: str | io.BytesIO) -> None:
    segment, last = task.segment, task.next_start is None
    with open_input(task.source) as container:
        streams = list(container.streams.audio)
        if number >= len(streams):
            raise InputError(f"the input has no audio stream {number}")
        stream = streams[number]
        copied = carried_as_is(stream)
        decoded = frozenset() if copied else frozenset({stream.index})
        try:
            items = [i for i in segment_audio(container, segment, task.time_base, last, decoded)
                     if i.stream_index == stream.index]  # fmt: skip
        except av.FFmpegError as exc:
            raise InputError(f"reading {segment.describe()} failed: {exc}") from exc
        if not items:
            raise InputError(f"{segment.describe()} has no packet of audio stream {number}")
        done = "copied into MPEG-TS" if copied else "made AAC"
        with (
            _refusing(f"{segment.describe()}: audio stream {number} cannot be {done}"),
            av.open(target, "w", format="mpegts", options=SEGMENT_MUXER) as out,
        ):
            if copied:
                _copy_audio(out, stream, [i.packet for i in items if i.packet], task)
            else:
                _transcode_audio(out, stream, [f for i in items for f in i.frames], task)


def _copy_audio(
    out: av.container.OutputContainer, stream: av.stream.Stream, packets: list, task: RemuxTask
) -> None:
    target = out.add_stream_from_template(stream)
    keep_language(target, stream)
    for packet in packets:
        on_segment_clock(packet, task.origin)
        packet.stream = target
        out.mux(packet)


def _transcode_audio(
    out: av.container.OutputContainer, stream: av.stream.Stream, frames: list, task: RemuxTask
) -> None:
    """``frames`` made AAC as an upscaled segment's sink makes them (``encode.VideoSink``):
    on its clock, keeping the frames of the segment's window."""
    offset = Fraction(SEGMENT_OFFSET_SECONDS - task.origin)
    last = task.next_start is None
    window = audio_window(task.segment, task.time_base, last, task.origin).later(offset)
    transcoder = AudioTranscoder(out, stream, offset, window)
    keep_language(transcoder.stream, stream)
    transcoder.anchor(frames)
    out.mux(transcoder.encode(frames) + transcoder.encode(None))


def audio_peak_rates(source: Path, plan: SegmentPlan) -> dict[int, float]:
    """The input's audio streams (their places among its audio streams) that have a packet in
    every segment of ``plan``, each with its peak rate in bits per second as its audio
    rendition's segments will have it (MPEG-TS's overhead with it; AAC where it is transcoded):
    of the segments likeliest to be the busiest, made in memory (:func:`audio_segment_size`).
    Those are the two with the most of the stream's packet bytes per second (the muxer's share
    follows the packets' count and sizes, so the busiest in packets may come second in bytes
    made), and the shortest, where the muxer's fixed cost weighs most. One reading of the
    input's audio, then at most three segments made per stream (a stream whose segments cannot
    be made is left out, logged): the rate is that of the busiest segment made or a little
    under it (with the busiest in packets alone: 0.7% under, measured on a stereo AAC stream).
    A packet belongs to the segment its time falls in, as
    :func:`segment_audio` counts: the first segment takes what comes before it, the last what
    follows it."""
    starts = [s.start_pts * plan.time_base for s in plan.segments]
    with open_input(source) as container:
        streams = list(container.streams.audio)
        sizes: dict[int, dict[int, int]] = {s.index: {} for s in streams}
        for packet in container.demux(streams) if streams else ():
            if packet.dts is None or not packet.size:
                continue
            at = (packet.pts if packet.pts is not None else packet.dts) * packet.time_base
            segment = max(0, bisect.bisect_right(starts, at) - 1)
            counted = sizes[packet.stream.index]
            counted[segment] = counted.get(segment, 0) + packet.size
    durations = [s.duration for s in plan.segments]
    shortest = durations.index(min(durations))
    rates = {}
    for place, counted in enumerate(sizes.values()):
        if len(counted) < len(plan.segments):
            continue
        busiest = sorted(counted, key=lambda i: counted[i] / durations[i])[-2:]
        try:
            made = {i: audio_segment_size(RemuxTask.of(source, plan, i, Path(os.devnull)), place)
                    for i in {*busiest, shortest}}  # fmt: skip
        except InputError as exc:  # its segments could not be made: not offered
            log.warning("audio stream %d of %s is not offered: %s", place, source.name, exc)
            continue
        rates[place] = plan.peak_rate(made)
    return rates


def _write(task: RemuxTask, video_in, audio_in, part: Path) -> None:
    stream = main_video(video_in)
    if codec_name(stream) not in REMUXABLE_VIDEO:
        raise InputError(f"{codec_name(stream)} video cannot be remuxed into MPEG-TS")
    segment = task.segment
    if not segment.key:
        raise InputError(
            f"{segment.describe()} does not start on a keyframe: its packets cannot be copied "
            "as they are"
        )
    audio = [s for s in audio_in.streams.audio if carried_as_is(s)]
    kept = {s.index for s in audio}
    packets: list[tuple[Fraction, av.Packet]] = []
    try:
        for packet in _video_packets(video_in, stream, segment, task.next_start):
            at = packet.dts if packet.dts is not None else packet.pts
            packets.append((at * packet.time_base, packet))
        last = task.next_start is None
        for item in segment_audio(audio_in, segment, task.time_base, last):
            packet = item.packet
            if packet is None or packet.stream.index not in kept:
                continue
            at = packet.dts if packet.dts is not None else packet.pts
            packets.append((at * packet.time_base, packet))
    except av.FFmpegError as exc:
        raise InputError(f"reading {segment.describe()} failed: {exc}") from exc
    if not any(p.stream.type == "video" for _, p in packets):
        raise InputError(f"{segment.describe()}: no video packet to remux")
    with (
        _refusing(f"{segment.describe()}: its packets cannot be copied into MPEG-TS"),
        av.open(str(part), "w", format="mpegts", options=SEGMENT_MUXER) as out,
    ):
        streams = {stream.index: out.add_stream_from_template(stream)}
        for a in audio:
            streams[a.index] = out.add_stream_from_template(a)
            keep_language(streams[a.index], a)
        annexb = _annex_b(stream, streams[stream.index])
        parameter_sets = b""
        if annexb is not None and not task.in_band_parameter_sets:
            parameter_sets = bytes(streams[stream.index].codec_context.extradata or b"")
        first = True
        for _, packet in sorted(packets, key=lambda item: item[0]):
            on_segment_clock(packet, task.origin)
            target = streams[packet.stream.index]
            ready = [packet]
            if annexb is not None and packet.stream.index == stream.index:
                ready = annexb.filter(packet)
                if first and ready:
                    ready[0], first = _starting(ready[0], parameter_sets), False
            for item in ready:
                item.stream = target
                out.mux(item)


def _annex_b(stream, out_stream) -> av.bitstream.BitStreamFilterContext | None:
    """For H.264 stored as in MP4 and Matroska (length-prefixed, its parameter sets in the
    header): the filter to MPEG-TS's start-code form, which puts the header's parameter sets
    before IDR pictures (``out_stream`` gets them in that form too)."""
    extradata = bytes(stream.codec_context.extradata or b"")
    if codec_name(stream) != "h264" or not extradata or extradata[0] != 1:
        return None
    return av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream, out_stream)


#: H.264 NAL unit types: an IDR picture's slice, a sequence parameter set.
_IDR, _SPS = 5, 7


def _nal_types(data: bytes) -> set[int]:
    """The NAL unit types in start-code-form H.264 ``data``."""
    types, at = set(), data.find(b"\x00\x00\x01")
    while at != -1 and at + 3 < len(data):
        types.add(data[at + 3] & 0x1F)
        at = data.find(b"\x00\x00\x01", at + 3)
    return types


def _starting(packet: av.Packet, parameter_sets: bytes) -> av.Packet:
    """A segment's first packet, with the header's parameter sets before it when it has none
    and is no IDR picture (an open GOP's I-frame): a player that starts at this segment could
    not decode it. Only where the stream carries no parameter sets of its own (the plan's
    ``in_band_parameter_sets``): those in force there may differ from the header's."""
    if not parameter_sets or _nal_types(bytes(packet)) & {_IDR, _SPS}:
        return packet
    started = av.Packet(parameter_sets + bytes(packet))
    started.pts, started.dts, started.time_base = packet.pts, packet.dts, packet.time_base
    started.is_keyframe = packet.is_keyframe
    return started


def _video_packets(container, stream, segment: Segment, next_start: int | None):
    """Packets in decode order from the segment's keyframe to the next segment's keyframe."""
    if segment.index > 0:
        seek_to_keyframe(container, stream, segment.start_pts)
    for packet in with_decode_times(from_keyframe_at(container.demux(stream), segment.start_pts)):
        if packet.size == 0:
            continue
        if packet.dts is None and packet.pts is None:
            continue
        if next_start is not None and packet.is_keyframe and packet.pts == next_start:
            return
        yield packet
