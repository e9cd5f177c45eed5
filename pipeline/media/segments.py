"""Segments, the unit of work: a video planned as time ranges of about the target duration.

The plan comes from the input's packet index (demux, and a decode up to the first frame shown:
see :data:`FIRST_SHOWN_PACKETS`), so it is fast for any length. An input whose keyframes come
at least every :data:`MAX_GOP_TARGETS` targets (most encodes: x264's default is a keyframe
every 10 s at 25 fps) is cut on keyframes only, the one nearest each target, so every
segment's packets can be copied as they are. A long-GOP input
(one keyframe, a screen recording) is cut on a keyframe where one lies within
:data:`KEYFRAME_REACH` of the target and between keyframes otherwise, so it is segmented like
any other. Each segment records its exact
presentation range in the video stream's time base, its frame count, its first frame's index
and whether it starts on a keyframe; across the plan every input frame belongs to exactly one
segment. Decoding a segment starts at the keyframe at or before its start, drops the frames
before the start (the pre-roll) and stops at its end, which keeps open-GOP and B-frame inputs
exact.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from carn_stream.pipeline.colour import UNSPECIFIED_TRANSFER, StaticHdr
from carn_stream.pipeline.errors import InputError, LimitError, ffmpeg_reason
from carn_stream.pipeline.frames import SourceFrame, upscaled_size
from carn_stream.pipeline.media.audio_transcode import TRANSCODE_MARGIN_SECONDS, AudioWindow
from carn_stream.pipeline.media.decode import (
    AudioItem,
    FrameTimes,
    ShownPackets,
    decode_order_times,
    describe,
    main_video,
    open_input,
    source_frame,
    static_hdr,
)
from carn_stream.pipeline.media.deinterlace import progressive
from carn_stream.pipeline.media.seeking import (
    from_first_keyframe,
    from_keyframe_at,
    seek_for_audio,
    seek_to_keyframe,
)

#: Segments are never shorter than this (a shorter tail joins the segment before it).
MIN_SEGMENT_SECONDS = 1.0
#: A segment ends on a keyframe when one lies within this fraction of the target duration
#: either side of it (0.5: between 0.5 and 1.5 targets); otherwise between keyframes, at the
#: frame nearest the target.
KEYFRAME_REACH = 0.5
#: Keyframes this many targets apart or closer (every GOP of the input): cut on keyframes only.
MAX_GOP_TARGETS = 3.0
#: The planning rule's version, stored with each plan: a plan made by an earlier rule (a
#: command's work folder, a job's or a video's stored plan) is made again, never resumed.
PLAN_RULE = 6  # 4: frames a decoder never shows (before the first keyframe, discarded) left out;
#                5: and those before the first frame a decode from the top shows;
#                6: segments count their times from the plan's origin, plus 70 s
#: Packets a plan decodes at most to find the first frame a decoder shows. A recording joined
#: at a recovery point (intra refresh) shows nothing until its picture is whole, a refresh
#: period later (x264's is its keyframe interval, 250 frames by default).
FIRST_SHOWN_PACKETS = 600
#: A plan's target duration that makes the whole input one segment.
WHOLE = math.inf


@dataclass(frozen=True)
class Segment:
    """One range of the video: ``start_pts <= pts < end_pts``."""

    index: int
    start_pts: int  #: first frame's presentation timestamp
    end_pts: int  #: the next segment's start, or the end of the last frame
    frames: int
    first_frame: int  #: index of the segment's first frame in the whole video
    start: float  #: seconds, from the time base
    duration: float  #: seconds
    #: it starts on a keyframe: decoded without pre-roll, and its packets can be copied as they
    #: are (the original rendition of a video). The first segment may not: an MP4 trimmed by
    #: stream copy, a recording joined at a recovery point (it is decoded from the top).
    key: bool = True

    @property
    def end(self) -> float:
        return self.start + self.duration

    def describe(self) -> str:
        """How a user reads it: ``segment 3 (12.00-16.00 s)``."""
        return f"segment {self.index} ({self.start:.2f}-{self.end:.2f} s)"


@dataclass(frozen=True)
class SegmentPlan:
    """The whole video as segments, in order, with what the probe learnt of the input."""

    time_base: Fraction  #: the video stream's time base (segment timestamps are in it)
    segments: tuple[Segment, ...]
    width: int
    height: int
    frame_rate: Fraction | None
    codec: str
    has_audio: bool
    #: the container numbers video packets in decode order (AVI): see ``decode.FrameTimes``
    decode_order: bool = False
    #: whole seconds the segments' times are counted from: the second of the input's earliest
    #: time (its first frame, or audio before it), a multiple of every stream's clock tick.
    #: Segments carry ``time - origin + encode.SEGMENT_OFFSET_SECONDS``, so however late (near
    #: the 33-bit MPEG-TS clock's wrap, 26.5 h) or early (before 0, after it) an input's times
    #: lie, theirs stay small and positive; a joined file gets them back.
    origin: int = 0
    #: H.264 stored with its parameter sets in the header (MP4, Matroska) that also carries
    #: some in its packets (at a keyframe): they may change mid-way (recordings joined)
    in_band_parameter_sets: bool = False
    #: the first frame's transfer characteristics (H.273: 16 PQ, 18 HLG), for players to
    #: choose by (HLS's VIDEO-RANGE)
    transfer: int = UNSPECIFIED_TRANSFER
    #: the title's HDR10 metadata, from its first frame: every segment's encoder writes it
    hdr: StaticHdr | None = None
    rule: int = PLAN_RULE  #: the planning rule that made it (0: before rules were recorded)

    @property
    def current(self) -> bool:
        """Made by today's planning rule (a stored plan of an older one is made again)."""
        return self.rule == PLAN_RULE

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments)

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time_base": [self.time_base.numerator, self.time_base.denominator],
            "segments": [asdict(s) for s in self.segments],
            "width": self.width,
            "height": self.height,
            "frame_rate": None
            if self.frame_rate is None
            else [self.frame_rate.numerator, self.frame_rate.denominator],
            "codec": self.codec,
            "has_audio": self.has_audio,
            "decode_order": self.decode_order,
            "origin": self.origin,
            "in_band_parameter_sets": self.in_band_parameter_sets,
            "transfer": self.transfer,
            "hdr": None if self.hdr is None else self.hdr.to_dict(),
            "rule": self.rule,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentPlan:
        """Read a stored plan back, checking that it is whole and consistent."""
        try:
            rate = data["frame_rate"]
            plan = cls(
                time_base=Fraction(*map(int, data["time_base"])),
                segments=tuple(
                    Segment(
                        index=int(s["index"]),
                        start_pts=int(s["start_pts"]),
                        end_pts=int(s["end_pts"]),
                        frames=int(s["frames"]),
                        first_frame=int(s["first_frame"]),
                        start=float(s["start"]),
                        duration=float(s["duration"]),
                        key=bool(s.get("key", True)),  # plans before the key field: all keyed
                    )
                    for s in data["segments"]
                ),
                width=int(data["width"]),
                height=int(data["height"]),
                frame_rate=None if rate is None else Fraction(*map(int, rate)),
                codec=str(data["codec"]),
                has_audio=bool(data["has_audio"]),
                decode_order=bool(data.get("decode_order", False)),
                origin=int(data.get("origin", 0)),
                in_band_parameter_sets=bool(data.get("in_band_parameter_sets", False)),
                transfer=int(data.get("transfer", UNSPECIFIED_TRANSFER)),
                hdr=None if data.get("hdr") is None else StaticHdr.from_dict(data["hdr"]),
                rule=int(data.get("rule", 0)),
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"not a segment plan: {exc}") from exc
        plan.check()
        return plan

    def check(self) -> None:
        """Raise ValueError unless the segments tile the video in order."""
        if not self.segments:
            raise ValueError("a plan needs at least one segment")
        first = 0
        for i, s in enumerate(self.segments):
            if s.index != i or s.first_frame != first or s.frames < 1 or s.end_pts <= s.start_pts:
                raise ValueError(f"segment {i} of the plan is inconsistent")
            if i and s.start_pts != self.segments[i - 1].end_pts:
                raise ValueError(f"segment {i} does not start where segment {i - 1} ends")
            first += s.frames

    @property
    def max_duration(self) -> float:
        return max(s.duration for s in self.segments)

    def peak_rate(self, sizes: dict[int, int]) -> float:
        """The peak bit rate (bits per second) of segments of ``sizes`` bytes (segment index ->
        bytes; an index past the plan, of another plan's, counts for nothing); 0 for none."""
        return max((8 * size / self.segments[i].duration for i, size in sizes.items()
                    if 0 <= i < len(self.segments)), default=0)  # fmt: skip

    @property
    def keyframe_aligned(self) -> bool:
        """Every segment starts on a keyframe (its packets can be remuxed as they are)."""
        return all(s.key for s in self.segments)


@dataclass(frozen=True)
class InputLimits:
    """What an input may be: checked from its header before anything is decoded, on its packet
    index while it is planned, and on every decoded frame (a stream may change size after its
    header)."""

    scale: int
    max_output_pixels: int
    max_duration: float  #: seconds
    max_frames: int = 0  #: frames of the whole input (0: no limit)

    def check(self, width: int, height: int, duration: float | None) -> None:
        self.check_size(width, height)
        if duration is not None and duration > self.max_duration:
            raise LimitError(
                f"input is {duration:.0f} s long, over the limit of {self.max_duration:g} s"
            )

    def check_size(self, width: int, height: int, frame: int | None = None) -> None:
        """Refuse a picture (the header's, or decoded frame ``frame``'s) whose upscaled size is
        over the pixel limit."""
        out_w, out_h = upscaled_size(width, height, self.scale)
        if self.max_output_pixels and out_w * out_h > self.max_output_pixels:
            what = "output" if frame is None else f"frame {frame} is {width}x{height}: its output"
            raise LimitError(
                f"{what} would be {out_w}x{out_h}, over the limit of "
                f"{self.max_output_pixels} pixels per frame"
            )


@dataclass(frozen=True, slots=True)
class _Packet:
    pts: int
    duration: int
    key: bool
    parameter_sets: bool = False  #: a keyframe carrying an H.264 SPS in-band (see the plan's)


def _video_packets(
    container: av.container.InputContainer,
    first: _FirstShown,
    limits: InputLimits | None = None,
) -> list[_Packet]:
    """The video stream's packets in presentation order, from the first frame a decoder shows
    (``first`` learns which, and what it carries, as they are read). With ``limits``, reading
    stops as soon as the packets span more than the duration limit or outnumber the frame
    limit, so a header without a duration cannot make the index grow without bound."""
    video = main_video(container)
    tb = video.time_base
    max_span = math.floor(limits.max_duration / tb) if limits is not None and tb else None
    max_count = limits.max_frames if limits is not None else 0
    packets: list[_Packet] = []
    low = high = None
    shown = ShownPackets()
    read_first = 0  #: packets kept when the first frame came out
    length_size = _avcc_length_size(video)
    try:
        for packet in container.demux(video):
            if first.fed(packet):
                read_first = len(packets)
            if not shown(packet):
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                raise InputError(
                    "the video stream has packets without timestamps (a raw H.264/HEVC "
                    "stream has none); it cannot be segmented"
                )
            sets = length_size is not None and packet.is_keyframe and _has_sps(packet, length_size)
            packets.append(_Packet(pts, packet.duration or 0, packet.is_keyframe, sets))
            low = pts if low is None else min(low, pts)
            high = pts if high is None else max(high, pts)
            if max_span is not None and high - low > max_span:
                raise LimitError(
                    f"input is longer than the limit of {limits.max_duration:g} s "
                    "(its packets were read up to that point)"
                )
            if max_count and len(packets) > max_count:
                raise LimitError(f"input has more than {max_count} frames, over the limit")
    except av.FFmpegError as exc:
        raise InputError(f"the input could not be read to the end ({ffmpeg_reason(exc)})") from exc
    if first.time is not None:
        packets = _from_first_shown(packets, first.time, read_first)
    if not packets:
        raise InputError("the input's video stream holds no frames")
    return sorted(packets, key=lambda p: p.pts)


def _avcc_length_size(video: av.video.stream.VideoStream) -> int | None:
    """The byte length of each NAL unit's size of H.264 stored as in MP4 and Matroska (its
    header an ``avcC`` record); None for other video."""
    extradata = bytes(video.codec_context.extradata or b"")
    if video.codec_context.name != "h264" or len(extradata) < 7 or extradata[0] != 1:
        return None
    return (extradata[4] & 3) + 1


def _has_sps(packet: av.Packet, length_size: int) -> bool:
    """Whether a length-prefixed H.264 ``packet`` holds a sequence parameter set."""
    data = memoryview(packet)
    at = 0
    while at + length_size < len(data):
        size = int.from_bytes(data[at : at + length_size], "big")
        if data[at + length_size] & 0x1F == 7:
            return True
        at += length_size + size
    return False


class _FirstShown:
    """The time of the first frame a decode from the top shows, as the packets are read (None:
    none within :data:`FIRST_SHOWN_PACKETS`, or the decode failed: the decode proper says
    why). The pictures before it are decoded and never shown: the build-up of a recording
    joined at a recovery point (intra refresh), an open GOP's leading pictures. They are no
    frames of the video. What the first frame says of the whole title is kept: its transfer
    characteristics and its HDR10 metadata."""

    def __init__(self, container: av.container.InputContainer) -> None:
        self.time: int | None = None
        self.transfer = UNSPECIFIED_TRANSFER
        self.hdr: StaticHdr | None = None
        self._video = main_video(container)
        self._times = FrameTimes(container)
        self._left = FIRST_SHOWN_PACKETS
        self._video.codec_context.options = {"skip_loop_filter": "all"}  # timing only

    def fed(self, packet: av.Packet) -> bool:
        """Decode ``packet`` while no frame has come out; whether the first one came out."""
        if not self._left:
            return False
        self._left -= 1
        self._times.fed(packet)
        try:
            frames = packet.decode()
        except av.FFmpegError:
            self._left = 0
            return False
        if frames:
            self.time = self._times.of(frames[0])
            self.transfer, self.hdr = int(frames[0].color_trc), static_hdr(frames[0])
            self._left = 0
        return bool(frames)


def _from_first_shown(packets: list[_Packet], time: int, read: int) -> list[_Packet]:
    """``packets`` (in decode order) without the pictures shown before ``time``, the first
    frame's, that the decoder never showed: those read before it came out (the first ``read``)
    and those after, up to the next keyframe (leading pictures). A later picture with an
    earlier time stays: recordings joined end to end, whose times start again."""
    limit = next((i for i in range(read + 1, len(packets)) if packets[i].key), len(packets))
    return [p for i, p in enumerate(packets) if i >= limit or p.pts >= time]


def _cut_points(
    pts: list[int], end: int, keys: list[int], tb: Fraction, target: float, minimum: float
) -> list[int]:
    """Segment starts about ``target`` seconds apart, none closer than ``minimum``: on keyframes
    only when every GOP is at most :data:`MAX_GOP_TARGETS` targets long; otherwise the keyframe
    nearest the target within :data:`KEYFRAME_REACH` of it, else the frame nearest it."""
    starts = [pts[0]]
    gops = [b - a for a, b in zip([pts[0], *keys], [*keys, end], strict=True)]
    # (one keyframe is a long GOP, however short the input)
    keyframes_only = len(keys) > 1 and max(gops) * tb <= MAX_GOP_TARGETS * target
    near = max(minimum, target * (1 - KEYFRAME_REACH))
    far = target * (1 + KEYFRAME_REACH)
    while True:
        base = starts[-1]
        lo = bisect.bisect_left(keys, base + near / tb)
        if keyframes_only:  # the keyframes either side of the target
            at = bisect.bisect_left(keys, base + target / tb)
            lo, hi = max(lo, at - 1), at + 1
        else:
            hi = bisect.bisect_right(keys, base + far / tb)
        options = [k for k in keys[lo:hi] if base < k < end]
        if not options and not keyframes_only:  # no keyframe near the target: between them
            frame = _frame_near(pts, base, base + target / tb, base + minimum / tb)
            options = [frame] if frame is not None and frame < end else []
        if (end - base) * tb <= far:
            options.append(end)  # the rest fits in one segment: not cutting is an option
        if not options:
            break
        best = min(options, key=lambda c: abs(float((c - base) * tb) - target))
        if best >= end:
            break
        starts.append(best)
    if len(starts) > 1 and (end - starts[-1]) * tb < minimum:
        starts.pop()  # a short tail joins the segment before it
    return starts


def _frame_near(pts: list[int], base: int, wanted: Fraction, earliest: Fraction) -> int | None:
    """The frame timestamp nearest ``wanted`` and not before ``earliest`` (None: no frame is)."""
    i = bisect.bisect_left(pts, wanted)
    options = [p for p in pts[max(i - 1, 0) : i + 1] if p > base and p >= earliest]
    if not options:
        j = bisect.bisect_left(pts, earliest)
        options = pts[j : j + 1]
    return min(options, key=lambda p: abs(p - wanted)) if options else None


def plan_segments(
    source: str | Path,
    target_seconds: float = 4.0,
    minimum_seconds: float = MIN_SEGMENT_SECONDS,
    input_options: dict[str, str] | None = None,
    limits: InputLimits | None = None,
) -> SegmentPlan:
    """Plan ``source`` as segments of about ``target_seconds`` (``WHOLE``: one segment), cut on
    keyframes near the target and between them where there are none; ``limits`` are checked
    on the stream's header first, and on the plan's duration."""
    if target_seconds < minimum_seconds:
        raise ValueError(f"segment duration must be at least {minimum_seconds:g} s")
    with open_input(source, input_options) as container:
        info = describe(container)
        if limits is not None:
            limits.check(info.width, info.height, info.duration)
        tb = main_video(container).time_base
        first_shown = _FirstShown(container)
        packets = _video_packets(container, first_shown, limits)
        has_audio = bool(container.streams.audio)
        decode_order = decode_order_times(container)
        origin = _origin(container, packets[0].pts * tb)
    pts = [p.pts for p in packets]
    if len(set(pts)) != len(pts):
        raise InputError("the video stream has frames with the same timestamp")
    keys = [p.pts for p in packets if p.key]
    last = packets[-1]
    step = last.duration or (round(1 / (info.frame_rate * tb)) if info.frame_rate else 1)
    end = last.pts + max(step, 1)
    if math.isinf(target_seconds):
        starts = [pts[0]]
    else:
        starts = _cut_points(pts, end, keys, tb, target_seconds, minimum_seconds)
    ends = [*starts[1:], end]
    key_set = set(keys)
    segments = []
    first = 0
    position = 0
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        count = 0
        while position < len(pts) and pts[position] < end:
            count += 1
            position += 1
        segments.append(
            Segment(
                index=index,
                start_pts=start,
                end_pts=end,
                frames=count,
                first_frame=first,
                start=float((start - pts[0]) * tb),
                duration=float((end - start) * tb),
                key=start in key_set,
            )
        )
        first += count
    plan = SegmentPlan(
        time_base=tb,
        segments=tuple(segments),
        width=info.width,
        height=info.height,
        frame_rate=info.frame_rate,
        codec=info.codec,
        has_audio=has_audio,
        decode_order=decode_order,
        origin=origin,
        in_band_parameter_sets=any(p.parameter_sets for p in packets),
        transfer=first_shown.transfer,
        hdr=first_shown.hdr,
    )
    plan.check()
    if limits is not None:
        limits.check(plan.width, plan.height, plan.duration)
    return plan


def _origin(container: av.container.InputContainer, first_frame: Fraction) -> int:
    """The plan's origin (see ``SegmentPlan.origin``) for an input whose first frame is shown at
    ``first_frame`` seconds."""
    streams = [main_video(container), *container.streams.audio]
    unit = math.lcm(*(s.time_base.numerator for s in streams if s.time_base))
    earliest = first_frame
    if container.start_time is not None:
        earliest = min(earliest, Fraction(container.start_time, av.time_base))
    return math.floor(earliest / unit) * unit


#: Keyframes before its own a segment's decode may start from, where a decoder withholds the
#: frames after a keyframe until their picture is whole (a recovery point rather than an IDR
#: picture: intra refresh).
RECOVERY_KEYFRAMES = 3


def seek_to_show(container: av.container.InputContainer, segment: Segment) -> None:
    """Place ``container`` so that decoding its video from the first keyframe read shows the
    segment's first frame: from the keyframe at or before the segment's start, or an earlier
    one (:data:`RECOVERY_KEYFRAMES`), as a trial decode up to that frame finds. Read on with
    :func:`from_first_keyframe`."""
    video = main_video(container)
    target = segment.start_pts
    for tries_left in range(RECOVERY_KEYFRAMES, -1, -1):
        seek_to_keyframe(container, video, target)
        if not tries_left:
            return
        key: list[int | None] = []
        try:
            first = next(_frames_in(container, segment, key), None)
        except av.FFmpegError:
            first = None  # the decode proper says what went wrong
        earlier = _earlier_start(first, key, segment, target)
        if earlier is None:
            seek_to_keyframe(container, video, target)
            return
        target = earlier


def segments_show_their_start(source: Path, plan: SegmentPlan, checked: int = 3) -> bool:
    """Whether a decode from each segment's own keyframe (where a copy of its packets starts)
    shows the segment's first frame, as the first segment and the ``checked`` after it say.
    Not so with intra refresh, whose keyframes are recovery points: such segments cannot be
    played on their own (copied from the input, as an HLS rendition), nor can the first of a
    recording joined at one."""
    with open_input(source) as container:
        video = main_video(container)
        for segment in plan.segments[: 1 + checked]:
            seek_to_keyframe(container, video, segment.start_pts)
            try:
                shown = _frames_in(container, segment, [], plan.decode_order, own_keyframe=True)
                first = next(shown, None)
            except av.FFmpegError:
                return False
            if first is None or first[0] != segment.start_pts:
                return False
    return True


def _earlier_start(
    first: tuple[int, av.VideoFrame] | None, key: list[int | None], segment: Segment, target: int
) -> int | None:
    """Where to seek to next when the first frame shown (``first``; None: none) of a decode
    from keyframe ``key[0]`` is not the segment's first: just before that keyframe (None: it
    is, or there is no earlier keyframe to try)."""
    if (first is not None and first[0] <= segment.start_pts) or not key or key[0] is None:
        return None
    return key[0] - 1 if key[0] <= target else None


def _frames_in(
    container: av.container.InputContainer,
    segment: Segment,
    key: list[int | None],
    decode_order: bool = False,
    from_top: bool = False,
    own_keyframe: bool = False,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(time, frame) of each frame in the segment a decode shows, from where the container is
    (after a seek: from the first keyframe read, whose time goes into ``key``; with
    ``own_keyframe``, from the one shown at the segment's start)."""
    video = main_video(container)
    packets = container.demux(video)
    if own_keyframe:
        packets = from_keyframe_at(packets, segment.start_pts)
    elif not from_top:
        packets = from_first_keyframe(packets)
    times = FrameTimes(container, decode_order)
    for packet in packets:
        if not key:
            key.append(packet.pts if packet.pts is not None else packet.dts)
        times.fed(packet)
        try:
            frames = packet.decode()
        except av.FFmpegError:
            if packet.pts is None or packet.pts < segment.end_pts:
                raise
            # Damage past the segment's end is the next segment's business: flush what the
            # decoder still holds of this one.
            frames = video.codec_context.decode(None)
        for frame in frames:
            pts = times.of(frame)
            if pts is None or pts < segment.start_pts:
                continue  # before the segment (or a leading picture of an open GOP)
            if pts < segment.end_pts:
                yield pts, frame


def segment_frames(
    container: av.container.InputContainer,
    segment: Segment,
    threads: int = 0,
    decode_order: bool = False,
    deinterlace: bool = True,
) -> Iterator[SourceFrame]:
    """The segment's frames, decoded from the keyframe at or before its start, in order; where
    the segment's first frame does not come out of that decode (a recovery point: see
    :data:`RECOVERY_KEYFRAMES`), from an earlier keyframe. ``decode_order``: the plan's (the
    input's packets are numbered in decode order; a copy of them in another container says so
    only through it). ``deinterlace``: frames flagged interlaced are made progressive
    (:mod:`~carn_stream.pipeline.media.deinterlace`)."""
    video = main_video(container)
    video.thread_type = "AUTO"
    video.codec_context.thread_count = threads
    index = segment.first_frame
    last = segment.first_frame + segment.frames
    target = segment.start_pts
    tries_left = RECOVERY_KEYFRAMES if segment.index > 0 else 0
    try:
        while True:
            if segment.index > 0:  # the first segment reads from the top, whatever precedes
                seek_to_keyframe(container, video, target)  # its first keyframe
            key: list[int | None] = []
            shown = _frames_in(container, segment, key, decode_order, segment.index == 0)
            first = next(shown, None)
            earlier = _earlier_start(first, key, segment, target) if tries_left else None
            if earlier is not None:
                shown.close()
                tries_left -= 1
                target = earlier
                continue
            timed = itertools.chain([first] if first else [], shown)
            if deinterlace:
                timed = progressive(timed, segment.frames)
            for pts, frame in timed:
                yield source_frame(index, pts, frame, video)
                index += 1
                if index == last:
                    return
            break
    except av.FFmpegError as exc:
        raise InputError(f"decoding {segment.describe()} failed: {ffmpeg_reason(exc)}") from exc
    if index != last:
        raise InputError(
            f"{segment.describe()}: decoded {index - segment.first_frame} of "
            f"{segment.frames} frames"
        )


#: Audio interleaves loosely with video: reading starts this much before the audio wanted and
#: goes this much past it (seconds).
AUDIO_READ_AHEAD = 2


def audio_packets(
    container: av.container.InputContainer,
    segment: Segment,
    time_base: Fraction,
    last: bool,
    margin: float | Fraction = 0,
) -> Iterator[av.Packet]:
    """The audio packets whose time falls in the segment, widened by ``margin`` seconds each
    side; the first segment also takes what lies before its first frame, the last what follows
    its last one. Widened, a packet that reaches into the margin counts too (a MOV copy's PCM
    comes in chunks of most of a second)."""
    streams = list(container.streams.audio)
    if not streams:
        return
    start = segment.start_pts * time_base - margin
    end = segment.end_pts * time_base + margin
    if segment.index > 0:
        # Not before the input's start, which may be negative (MPEG-TS after a timestamp wrap).
        earliest = Fraction(min(0, container.start_time or 0), 1_000_000)
        seek_for_audio(container, streams[0], max(earliest, start - AUDIO_READ_AHEAD))
    for packet in container.demux(streams):
        if packet.dts is None or packet.size == 0:
            continue
        at = _audio_time(packet)
        if not last and at >= end + AUDIO_READ_AHEAD:
            return
        if margin and packet.duration and at < start < at + packet.duration * packet.time_base:
            at = start
        if _in_segment(at, segment, start, end, last):
            yield packet


def _audio_time(packet: av.Packet) -> Fraction:
    return (packet.pts if packet.pts is not None else packet.dts) * packet.time_base


def _in_segment(at: Fraction, segment: Segment, start: Fraction, end: Fraction, last: bool) -> bool:
    """Whether audio at ``at`` belongs to a segment spanning ``start`` to ``end``."""
    return (segment.index == 0 or at >= start) and (last or at < end)


def audio_window(segment: Segment, time_base: Fraction, last: bool, shift: int = 0) -> AudioWindow:
    """The segment's part of the clock its frames are written on (less ``shift`` seconds),
    for transcoded audio: from its first frame (the first segment: from the start) to the next
    segment's (the last: to the end)."""
    start = segment.start_pts * time_base - shift
    end = segment.end_pts * time_base - shift
    return AudioWindow(None if segment.index == 0 else start, None if last else end)


def segment_audio(
    container: av.container.InputContainer,
    segment: Segment,
    time_base: Fraction,
    last: bool,
    decode_streams: frozenset[int] = frozenset(),
) -> Iterator[AudioItem]:
    """The segment's audio (:func:`audio_packets`): packets to copy, or decoded frames for the
    stream indexes in ``decode_streams``, read :data:`TRANSCODE_MARGIN_SECONDS` beyond the
    segment's ends (the transcoder keeps what falls in its window)."""
    margin = TRANSCODE_MARGIN_SECONDS if decode_streams else 0
    start, end = segment.start_pts * time_base, segment.end_pts * time_base
    for packet in audio_packets(container, segment, time_base, last, margin):
        sid = packet.stream.index
        if sid in decode_streams:
            yield AudioItem(sid, frames=tuple(packet.decode()))
        elif _in_segment(_audio_time(packet), segment, start, end, last):
            yield AudioItem(sid, packet=packet)
