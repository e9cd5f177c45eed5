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
import threading
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.errors import InputError, LimitError, ffmpeg_reason
from carn_stream.pipeline.media.decode import ShownPackets, main_video, open_input
from carn_stream.pipeline.media.segments import InputLimits

#: FFmpeg demuxers of raw streams that carry no timestamps.
RAW_STREAM_DEMUXERS = frozenset({"h264", "hevc"})
#: File suffixes of raw streams (taken where a folder of videos is read).
RAW_STREAM_SUFFIXES = frozenset({".h264", ".264", ".avc", ".hevc", ".h265", ".265"})
#: The rate FFmpeg gives a raw stream whose header names none.
DEFAULT_RATE = Fraction(25)
MIN_RATE, MAX_RATE = Fraction(1, 1001), 1000  #: frames per second a raw stream may be given
_NTSC = Fraction(1000, 1001)


def is_raw_stream(source: Path) -> bool:
    """Whether ``source`` is a raw H.264/HEVC stream (opened as any input is; errors raise)."""
    with open_input(source) as container:
        return container.format.name in RAW_STREAM_DEMUXERS


def frame_rate(value: float | str | Fraction) -> Fraction:
    """A frame rate as given by a user (``25``, ``29.97``, ``"30000/1001"``): the NTSC rates
    (29.97, 59.94, 23.976) are taken as the exact N*1000/1001 they stand for."""
    try:
        given = Fraction(value) if not isinstance(value, float) else Fraction(str(value))
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"frame rate {value!r} is not a number") from exc
    rate = given.limit_denominator(1001)
    if given.denominator != 1:
        ntsc = round(given / _NTSC) * _NTSC
        if ntsc.denominator == 1001 and abs(ntsc - given) < Fraction(1, 200):
            rate = ntsc
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(
            f"frame rate {value} is out of range (at least {MIN_RATE}, at most {MAX_RATE})"
        )
    return rate


def stream_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The frame rate a raw stream's own header gives (its timing information), else FFmpeg's
    default."""
    for rate in (stream.codec_context.framerate, stream.guessed_rate):
        if rate and MIN_RATE <= rate <= MAX_RATE:
            return Fraction(rate)
    return DEFAULT_RATE


def copy_with_times(
    source: Path,
    target: Path,
    limits: InputLimits | None = None,
    rate: Fraction | None = None,
    stop: threading.Event | None = None,
) -> Fraction:
    """Copy the raw stream ``source`` into the MP4 ``target`` with timestamps, at ``rate``
    (None: the stream's own); returns the rate used. ``target`` may be ``source`` itself, which
    is then replaced; it is written under :func:`partial_name` and renamed when whole.
    ``limits`` stop the decode pass as soon as the stream is longer or has more frames than
    allowed; ``stop`` (set by a caller that has given up) ends either pass early."""
    with open_input(source) as container:
        stream = main_video(container)
        rate = rate if rate is not None else stream_rate(stream)
        if limits is not None:
            limits.check_size(stream.codec_context.width, stream.codec_context.height)
        places = _display_places(container, rate, limits, stop)
    part = partial_name(target)
    try:
        with open_input(source) as container:
            _write(container, part, rate, places, stop)
        _check_stop(stop)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return rate


def partial_name(target: Path) -> Path:
    """Where :func:`copy_with_times` (and a listed input's join) writes ``target`` until it is
    whole."""
    return target.with_name(f".{target.name}.part")


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise InputError("the raw stream's copy was stopped: its request was cancelled")


def _display_places(
    container: av.container.InputContainer,
    rate: Fraction,
    limits: InputLimits | None,
    stop: threading.Event | None,
) -> list[int]:
    """Each packet's place in display order, in decode order (from the first keyframe). A
    stream that starts at a recovery point rather than an IDR picture holds pictures a decoder
    decodes but never shows before its next keyframe: those that build the picture up (intra
    refresh), and the leading pictures of the first keyframe, which refer to pictures before
    the stream's start (RASL in HEVC, an open GOP's B-frames in H.264). They are kept, as later
    pictures may refer to them, placed before 0: the MP4's edit list has a decoder drop them
    again. Any other picture without a frame (fields coded as separate
    pictures, damage) refuses the stream."""
    stream = main_video(container)
    stream.thread_type = "AUTO"
    stream.codec_context.options = {"skip_loop_filter": "all"}
    max_frames = limits.max_frames if limits is not None else 0
    if limits is not None and math.isfinite(limits.max_duration):
        by_duration = math.floor(limits.max_duration * rate) + 1
        max_frames = min(max_frames, by_duration) if max_frames else by_duration
    shown = ShownPackets()
    order: list[int | None] = []  #: decode numbers, in the order the decoder shows them
    keys: list[int] = []
    count = 0
    try:
        for packet in container.demux(stream):
            _check_stop(stop)
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
            if packet.is_keyframe:
                keys.append(count)
            packet.pts = packet.dts = count
            count += 1
            order += [frame.pts for frame in stream.decode(packet)]
    except av.FFmpegError as exc:
        raise InputError(f"the raw stream could not be decoded ({ffmpeg_reason(exc)})") from exc
    numbers = [n for n in order if n is not None]
    if not numbers:
        raise InputError("the raw stream holds no frames a decoder shows")
    first = min(numbers)  #: the first picture shown, in decode order
    next_key = next((k for k in keys if k > first), count)
    unshown = sorted(set(range(count)) - set(numbers))
    hidden = [n for n in unshown if n < next_key]
    astray = [n for n in unshown if n >= next_key]
    if len(numbers) != len(order) or len(set(numbers)) != len(numbers) or astray:
        raise InputError(
            f"the raw stream's {count} pictures decode to {len(numbers)} frames, some of them "
            "mid-stream (fields coded as separate pictures, or damage): put it in a container "
            "(MP4, MKV, MPEG-TS) first"
        )
    places = [0] * count
    for i, n in enumerate(hidden):
        places[n] = i - len(hidden)
    for i, n in enumerate(numbers):
        places[n] = i
    return places


def _write(
    container: av.container.InputContainer,
    part: Path,
    rate: Fraction,
    places: list[int],
    stop: threading.Event | None,
) -> None:
    stream = main_video(container)
    time_base = 1 / rate
    #: decode times start this many frames before the first display time (B-frame reorder)
    delay = max(number - place for number, place in enumerate(places))
    options = {"movie_timescale": str(time_base.denominator)}
    shown = ShownPackets()
    written = 0
    try:
        with av.open(str(part), "w", format="mp4", options=options) as out:
            video = out.add_stream_from_template(stream)
            video.time_base = time_base
            for packet in container.demux(stream):
                _check_stop(stop)
                if not shown(packet) or written == len(places):
                    continue
                place = places[written]
                dts = written - delay
                if written and (place <= 0 or dts <= 0):
                    # A recovery point among the hidden pictures (or the first shown) is no
                    # place to start: an MP4 reader starts its edit list at the last keyframe
                    # at or before it, and would skip the pictures the first one builds up.
                    packet.is_keyframe = False
                packet.time_base = time_base
                packet.pts = place
                packet.dts = dts
                packet.duration = 1
                packet.stream = video
                out.mux(packet)
                written += 1
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(
            f"the raw stream could not be copied into MP4 ({ffmpeg_reason(exc)})"
        ) from exc
