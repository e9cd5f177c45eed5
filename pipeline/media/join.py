"""The end of a segmented run: a format's final output made from its published segments.

An HLS folder gets its playlist closed; a file format gets the segments joined by remuxing (no
re-encoding) into one file, with the input's timestamps and time base back, counted from the
input's start as FFmpeg's own tools count them (all moved later when its video starts before
0; earlier when the input starts after 0, as a recording from a broadcast does), its audio copied
where the container takes it (else the segments' AAC), and what else of the input the container
can hold: subtitles, chapters, metadata, dispositions, attachments, cover art, the sample
aspect ratio (:mod:`carn_stream.pipeline.media.keep`). The file is written under a temporary
name, then renamed. A join asked to stop (``stop``) ends at its next packet, leaving no output
and every segment as it was.
"""

from __future__ import annotations

import heapq
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.colour import StaticHdr
from carn_stream.pipeline.errors import OutputError
from carn_stream.pipeline.media import keep
from carn_stream.pipeline.media.decode import main_video, open_input
from carn_stream.pipeline.media.encode import (
    SEGMENT_FORMAT,
    SEGMENT_OFFSET_SECONDS,
    probe_to_video,
)
from carn_stream.pipeline.media.formats import OutputFormat
from carn_stream.pipeline.media.fragment import publish_init
from carn_stream.pipeline.media.hdr_boxes import add_to_file
from carn_stream.pipeline.media.hls import INIT_NAME, segment_name, write_playlist
from carn_stream.pipeline.media.hls_master import write_folder_master
from carn_stream.pipeline.media.isobmff import SAMPLE_ENTRIES
from carn_stream.pipeline.media.segments import SegmentPlan

#: (time in seconds, source order, packet): the merge order of the joined file's packets.
#: Packets of the input (audio, subtitles) sort before segment packets at the same time.
Timed = tuple[Fraction, int, av.Packet]

log = logging.getLogger(__name__)

#: Whether a join is asked to stop (looked at between packets).
StopAsked = Callable[[], bool]


class JoinStopped(Exception):
    """The join stopped when asked: no output was made, and the segments are as they were."""


def _never() -> bool:
    return False


def finish_output(
    fmt: OutputFormat, output: Path, work_dir: Path, plan: SegmentPlan, source: Path,
    rotation: int, stop: StopAsked = _never,
) -> Path:  # fmt: skip
    """Make ``fmt``'s final output from all of the plan's published segments. Raises
    :class:`JoinStopped` where ``stop`` says so before a file format's join is done."""
    folder = fmt.segment_dir(output, work_dir)
    if fmt.is_folder:
        # init.mp4 is made now where no segment had every stream
        if fmt.fragmented and publish_init(output) is None:
            raise OutputError(f"{output}: no segment to make {INIT_NAME} of")
        durations = [s.duration for s in plan.segments]
        write_playlist(output, durations, plan.max_duration, complete=True,
                       fragmented=fmt.fragmented)  # fmt: skip
        write_folder_master(output, plan, source, folder, fmt.fragmented)
        return output
    paths = [folder / segment_name(s.index) for s in plan.segments]
    timing = VideoTiming(plan.time_base, plan.segments[-1].end_pts, plan.frame_rate,
                         plan.segments[0].start_pts, plan.origin)  # fmt: skip
    join_segments(paths, timing, source, output, fmt, rotation, plan.hdr, stop)
    shutil.rmtree(folder, ignore_errors=True)
    return output


@dataclass(frozen=True)
class VideoTiming:
    """The input's video timing, which the joined file gets back."""

    time_base: Fraction
    end_pts: int  #: where the last frame ends (so the file lasts as long as the input)
    frame_rate: Fraction | None = None
    start_pts: int = 0  #: the first frame's time
    origin: int = 0  #: seconds the segments' times are counted from (``SegmentPlan.origin``)

    @property
    def step(self) -> int:
        """One frame's duration in the time base (0 when the rate is unknown)."""
        if not self.frame_rate:
            return 0
        return max(1, round(1 / (self.frame_rate * self.time_base)))


def join_segments(
    paths: list[Path],
    timing: VideoTiming,
    source: Path,
    target: Path,
    fmt: OutputFormat,
    rotation: int = 0,
    hdr: StaticHdr | None = None,
    stop: StopAsked = _never,
) -> Path:
    """Remux segments (in order) into one file of ``fmt`` at ``target`` (see the module). An
    MP4 or QuickTime file gets the title's HDR10 metadata ``hdr`` in its header too (the
    stream has it at each keyframe). HEVC there is ``hvc1`` (Apple's players refuse ``hev1``),
    whose one set of parameter sets is the first segment's (the muxer takes them out of the
    stream): where a segment's differ (made by another encoder build), the file is made again
    as ``hev1``, which keeps each segment's own. ``stop``: see the module."""
    part = target.with_name(f".{target.name}.part")
    try:
        try:
            _join(paths, timing, source, part, fmt, rotation, True, stop)
        except _ParameterSetsDiffer as differ:
            log.warning("%s: %s; written as hev1", target.name, differ)
            _join(paths, timing, source, part, fmt, rotation, False, stop)
        if stop():
            raise JoinStopped
    except (av.FFmpegError, OSError, OutputError) as exc:
        part.unlink(missing_ok=True)
        raise OutputError(f"joining the segments into {target.name} failed: {exc}") from exc
    except JoinStopped:
        part.unlink(missing_ok=True)
        raise
    if hdr is not None and fmt.muxer in ("mp4", "mov"):
        scratch = target.with_name(f".{target.name}.hdr.part")
        try:  # (the stream has it at each keyframe whatever happens here)
            added, why = add_to_file(part, hdr, scratch=scratch), "its header cannot take it"
        except (OSError, OutputError) as exc:
            added, why = False, str(exc)
        if not added:
            log.warning("%s: HDR10 metadata left out of the header: %s", target.name, why)
    part.replace(target)
    return target


class _ParameterSetsDiffer(Exception):
    """A segment's HEVC parameter sets are not the first segment's."""


def _join(paths: list[Path], timing: VideoTiming, source: Path, part: Path, fmt: OutputFormat,
          rotation: int, hvc1: bool, stop: StopAsked) -> None:  # fmt: skip
    options = {"movflags": "+faststart"} if fmt.muxer in ("mp4", "mov") else {}
    probe = probe_to_video(paths[0])
    with (
        av.open(str(paths[0]), format=SEGMENT_FORMAT, options=probe) as first,
        open_input(source) as src,  # the user's file: the allow-lists apply
        av.open(str(part), "w", format=fmt.muxer, options=options) as out,
    ):
        name = first.streams.video[0].codec_context.name
        entry = SAMPLE_ENTRIES.get(name) if fmt.muxer in ("mp4", "mov") else None
        entry = None if entry == "hvc1" and not hvc1 else entry
        streams = _add_streams(first, src, out, fmt, timing, rotation, entry)
        shift = _start_shift(timing, streams)
        keep.copy_container_facts(src, out, fmt, shift)
        keep.copy_cover_art(source, out, fmt)
        merged = heapq.merge(
            _segment_video(paths, streams.video, timing, same_sets=entry == "hvc1"),
            _input_packets(src, streams),
            _segment_audio(paths, streams, timing.origin),
            key=lambda timed: (timed[0], timed[1]),
        )
        for _, _, packet in merged:
            if stop():
                raise JoinStopped
            if shift:
                moved = round(shift / packet.time_base)
                packet.pts = None if packet.pts is None else packet.pts + moved
                packet.dts = None if packet.dts is None else packet.dts + moved
            out.mux(packet)


def _start_shift(timing: VideoTiming, streams: _Streams) -> Fraction:
    """Seconds every time of the joined file (and its chapters) is moved by. Video shown
    before 0 (MPEG-TS after a 33-bit clock wrap) would be hidden by an MP4 edit list: it is
    moved later by that much. An input whose streams all start after 0 (a recording from a
    broadcast, at 5000 s say) is moved earlier, to start at 0 as FFmpeg's own tools make it: it
    made an MP4 with an empty edit that long, and a Matroska file that players showed blank
    for 5000 s before its first frame."""
    video_start = timing.start_pts * timing.time_base
    if video_start < 0:
        return -video_start
    kept = [*streams.input_audio, *streams.subtitles.streams]
    starts = [s.start_time * s.time_base for s in kept if s.start_time is not None]
    return -max(Fraction(0), min([video_start, *starts]))


def _hevc_parameter_sets(access_unit: bytes) -> tuple[bytes, ...]:
    """The VPS, SPS and PPS NAL units of an HEVC access unit in Annex B form (MPEG-TS's)."""
    units = (unit.rstrip(b"\0") for unit in access_unit.split(b"\0\0\1")[1:])
    return tuple(unit for unit in units if unit and (unit[0] >> 1) & 0x3F in (32, 33, 34))


@dataclass
class _Streams:
    """The joined file's streams and where their packets come from."""

    video: av.stream.Stream
    audio: dict[int, av.stream.Stream]  #: input (or segment) audio stream index -> output
    audio_from_input: bool  #: the input's audio is copied (else the segments' AAC)
    input_audio: list[av.stream.Stream]
    subtitles: keep.Subtitles


def _add_streams(first, src, out, fmt: OutputFormat, timing: VideoTiming, rotation: int,
                 entry: str | None):  # fmt: skip
    """``entry``: the video's sample entry (MPEG-TS's stream type is none; None: the muxer's
    choice)."""
    src_video = main_video(src)
    video = out.add_stream_from_template(first.streams.video[0])
    video.codec_tag = entry or "\0\0\0\0"
    video.time_base = timing.time_base
    if timing.frame_rate:  # the container's frame rate is the input's, not a guess
        video.codec_context.framerate = timing.frame_rate
    if rotation:
        video.set_display_rotation(rotation)
    keep.copy_stream_facts(src_video, video)
    keep.copy_sample_aspect_ratio(src_video, video)
    input_audio = list(src.streams.audio)
    from_input = all(fmt.keeps_audio(a) for a in input_audio)
    audio: dict[int, av.stream.Stream] = {}
    if from_input:
        for stream in input_audio:
            audio[stream.index] = out.add_stream_from_template(stream)
            keep.copy_stream_facts(stream, audio[stream.index])
    else:
        for stream, original in zip(first.streams.audio, input_audio, strict=False):
            audio[stream.index] = out.add_stream_from_template(stream)
            keep.copy_stream_facts(original, audio[stream.index])
    subtitles = keep.subtitle_streams(src, out, fmt)
    return _Streams(video, audio, from_input, input_audio, subtitles)


def _segment_video(
    paths: list[Path], video, timing: VideoTiming, same_sets: bool = False
) -> Iterator[Timed]:
    """The segments' video packets, the segment offset taken off and the plan's origin given
    back, in the input's time base,
    each lasting one frame (the last one up to the input's end: MPEG-TS keeps no durations,
    and without them the file would end a frame early). Each segment's encoder starts its
    decode times before its first frame by its reorder delay, counted in that segment's first
    frame durations: where those are long (variable frame rate), they would reach back past
    the previous segment's last, so a decode time never falls below the one before. With
    ``same_sets``, :class:`_ParameterSetsDiffer` is raised where a segment's first packet has
    other HEVC parameter sets than the first segment's."""
    offset = Fraction(SEGMENT_OFFSET_SECONDS) - timing.origin
    time_base = timing.time_base
    last: int | None = None
    sets: tuple[bytes, ...] | None = None
    for n, path in enumerate(paths):
        with av.open(str(path), format=SEGMENT_FORMAT) as segment:
            opened = True
            for packet in segment.demux(segment.streams.video[0]):
                if packet.dts is None or packet.size == 0:
                    continue
                if same_sets and opened:
                    own = _hevc_parameter_sets(bytes(packet))
                    if sets is not None and own != sets:
                        raise _ParameterSetsDiffer(f"segment {n} has other parameter sets")
                    sets, opened = own, False
                tb = packet.time_base
                packet.pts = round((packet.pts * tb - offset) / time_base)
                dts = round((packet.dts * tb - offset) / time_base)
                packet.dts = last = dts if last is None else min(max(dts, last + 1), packet.pts)
                packet.time_base = time_base
                left = timing.end_pts - packet.pts
                packet.duration = max(1, min(timing.step or left, left))
                packet.stream = video
                yield packet.dts * time_base, n, packet


def _input_packets(src, streams: _Streams) -> Iterator[Timed]:
    """The input's audio (when copied) and subtitles, in the input's order."""
    wanted = [*(streams.input_audio if streams.audio_from_input else []),
              *streams.subtitles.streams]  # fmt: skip
    if not wanted:
        return
    for packet in src.demux(wanted):
        if packet.dts is None and packet.pts is None:
            continue
        if packet.stream.type == "subtitle":
            converted = streams.subtitles.convert(packet)
            if converted is not None:
                yield converted.pts * converted.time_base, -1, converted
            continue
        if packet.size == 0:
            continue
        packet.stream = streams.audio[packet.stream.index]
        yield packet.dts * packet.time_base, -1, packet


def _segment_audio(paths: list[Path], streams: _Streams, origin: int) -> Iterator[Timed]:
    """The segments' audio (AAC made from audio the container cannot copy), offset taken off.

    Each segment's encoder starts with a priming frame, timed before the segment's start:
    packets that do not come after the last one taken from the segment before are left out
    (a muxer refuses decode times that do not increase; the boundary keeps one AAC frame of
    the previous segment's encoder instead of the priming one)."""
    if streams.audio_from_input:
        return
    offset = Fraction(SEGMENT_OFFSET_SECONDS) - origin
    last: dict[int, Fraction] = {}  #: per stream, the decode time of the last packet taken
    for path in paths:
        with av.open(str(path), format=SEGMENT_FORMAT) as segment:
            audio = list(segment.streams.audio)
            if not audio:
                continue
            for packet in segment.demux(audio):
                if packet.dts is None or packet.size == 0:
                    continue
                tb = packet.time_base
                at = packet.dts * tb - offset
                index = packet.stream.index
                if index in last and at <= last[index]:
                    continue  # overlaps the previous segment's audio
                last[index] = at
                packet.pts = round((packet.pts * tb - offset) / tb)
                packet.dts = round(at / tb)
                packet.stream = streams.audio[packet.stream.index]
                yield at, -1, packet
