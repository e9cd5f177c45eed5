"""Raw H.264 and HEVC streams (Annex B, as cameras and encoders write them) given timestamps.

A raw stream has no container: its packets carry no times and there is no index to seek in, so
it cannot be cut into segments as it is. :func:`copy_with_times` copies it once, packet for
packet, into an MP4 that says when each frame is shown; nothing is re-encoded. Packets are
numbered in decode order at the stream's frame rate (the rate its own header gives, FFmpeg's
25 fps where it gives none, or the rate the caller names), and one decode pass, with the loop
filter skipped since only the order matters, gives each packet its place in display order.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.errors import InputError, LimitError, ffmpeg_reason
from carn_stream.pipeline.media.decode import ShownPackets, open_input
from carn_stream.pipeline.media.segments import InputLimits

#: FFmpeg demuxers of raw streams that carry no timestamps.
RAW_STREAM_DEMUXERS = frozenset({"h264", "hevc"})
#: File suffixes of raw streams (taken where a folder of videos is read).
RAW_STREAM_SUFFIXES = frozenset({".h264", ".264", ".avc", ".hevc", ".h265", ".265"})
#: The rate FFmpeg gives a raw stream whose header names none.
DEFAULT_RATE = Fraction(25)
MAX_RATE = 1000  #: frames per second a raw stream may be given
_NTSC = Fraction(1000, 1001)


def is_raw_stream(source: Path) -> bool:
    """Whether ``source`` is a raw H.264/HEVC stream (opened as any input is; errors raise)."""
    with open_input(source) as container:
        return container.format.name in RAW_STREAM_DEMUXERS


def frame_rate(value: float | str | Fraction) -> Fraction:
    """A frame rate as given by a user (``25``, ``29.97``, ``"30000/1001"``): the NTSC rates
    (29.97, 59.94, 23.976) are taken as the exact N*1000/1001 they stand for."""
    try:
        rate = Fraction(value) if not isinstance(value, float) else Fraction(str(value))
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"frame rate {value!r} is not a number") from exc
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"frame rate {value} is out of range (above 0, at most {MAX_RATE})")
    if rate.denominator != 1:
        ntsc = round(rate / _NTSC) * _NTSC
        if ntsc.denominator == 1001 and abs(ntsc - rate) < Fraction(1, 200):
            return ntsc
    return rate.limit_denominator(1001)


def stream_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The frame rate a raw stream's own header gives (its timing information), else FFmpeg's
    default."""
    for rate in (stream.codec_context.framerate, stream.guessed_rate):
        if rate and 0 < rate <= MAX_RATE:
            return Fraction(rate)
    return DEFAULT_RATE


def copy_with_times(
    source: Path,
    target: Path,
    limits: InputLimits | None = None,
    rate: Fraction | None = None,
) -> Fraction:
    """Copy the raw stream ``source`` into the MP4 ``target`` with timestamps, at ``rate``
    (None: the stream's own); returns the rate used. ``target`` may be ``source`` itself, which
    is then replaced; it is written under a temporary name and renamed when whole. ``limits``
    stop the decode pass as soon as the stream is longer or has more frames than allowed."""
    with open_input(source) as container:
        stream = container.streams.video[0]
        rate = rate or stream_rate(stream)
        if limits is not None:
            limits.check_size(stream.codec_context.width, stream.codec_context.height)
        shown = _display_order(container, rate, limits)
    part = target.with_name(f".{target.name}.part")
    try:
        with open_input(source) as container:
            _write(container, part, rate, shown)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return rate


def _display_order(
    container: av.container.InputContainer, rate: Fraction, limits: InputLimits | None
) -> list[int]:
    """For each packet shown (decode order), its place in display order."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.options = {"skip_loop_filter": "all"}
    max_frames = limits.max_frames if limits is not None else 0
    if limits is not None and math.isfinite(limits.max_duration):
        by_duration = math.floor(limits.max_duration * rate) + 1
        max_frames = min(max_frames, by_duration) if max_frames else by_duration
    shown = ShownPackets()
    order: list[int] = []  #: decode numbers, in the order the decoder shows them
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                order += [frame.pts for frame in stream.decode(None)]
                continue
            if not shown(packet):
                continue
            if max_frames and count >= max_frames:
                raise LimitError(
                    f"input has more than {max_frames} frames at {float(rate):g} fps, over "
                    "the limit (a raw stream is read up to that point)"
                )
            packet.pts = packet.dts = count
            count += 1
            order += [frame.pts for frame in stream.decode(packet)]
    except av.FFmpegError as exc:
        raise InputError(f"the raw stream could not be decoded ({ffmpeg_reason(exc)})") from exc
    if not count:
        raise InputError("the raw stream holds no frames")
    if None in order or sorted(order) != list(range(count)):
        raise InputError(
            f"the raw stream's {count} pictures decode to {len(order)} frames (fields coded "
            "as separate pictures, or damage): put it in a container (MP4, MKV, MPEG-TS) first"
        )
    place = [0] * count
    for shown_at, number in enumerate(order):
        place[number] = shown_at
    return place


def _write(
    container: av.container.InputContainer, part: Path, rate: Fraction, place: list[int]
) -> None:
    stream = container.streams.video[0]
    time_base = 1 / rate
    #: decode times start this many frames before the first display time (B-frame reorder)
    delay = max(number - shown_at for number, shown_at in enumerate(place))
    options = {"movie_timescale": str(time_base.denominator)}
    shown = ShownPackets()
    number = 0
    try:
        with av.open(str(part), "w", format="mp4", options=options) as out:
            video = out.add_stream_from_template(stream)
            video.time_base = time_base
            for packet in container.demux(stream):
                if not shown(packet) or number >= len(place):
                    continue
                packet.time_base = time_base
                packet.pts = place[number]
                packet.dts = number - delay
                packet.duration = 1
                packet.stream = video
                out.mux(packet)
                number += 1
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(
            f"the raw stream could not be copied into MP4 ({ffmpeg_reason(exc)})"
        ) from exc
