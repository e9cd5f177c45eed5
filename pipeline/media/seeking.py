"""Seeking to the keyframe a segment is decoded from, in every container.

A demuxer with a keyframe index (MP4, Matroska) lands on the keyframe at or before the target.
MPEG-TS has none: FFmpeg seeks by the timestamps it reads there, decode timestamps, and takes
every packet for a keyframe, so with B-frames (a keyframe's decode timestamp comes before its
presentation) it lands on a packet after the keyframe, and the segment's frames are missing.
:func:`seek_to_keyframe` checks where it landed and moves back until the first keyframe read
from there is the one wanted or an earlier one.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av

#: How far back the first retry moves the target (seconds); each further retry doubles it.
FIRST_STEP_SECONDS = 0.5
RETRIES = 8
#: A target before any stream's start: FFmpeg then reads from the top.
TOP = -(2**40)


def seek_to_keyframe(
    container: av.container.InputContainer, stream: av.stream.Stream, pts: int
) -> None:
    """Place ``container`` so that the first keyframe of ``stream`` read from it is shown at
    or before ``pts`` (in the stream's time base). Read on with :func:`from_first_keyframe`."""
    step = max(1, round(FIRST_STEP_SECONDS / stream.time_base))
    target = pts
    for _ in range(RETRIES):
        container.seek(target, stream=stream, backward=True, any_frame=False)
        if _first_keyframe_at_or_before(container.demux(stream), pts):
            container.seek(target, stream=stream, backward=True, any_frame=False)
            return
        target -= step
        step *= 2
    container.seek(TOP, stream=stream, backward=True, any_frame=False)


def seek_for_audio(
    container: av.container.InputContainer, audio: av.stream.Stream, seconds: Fraction | float
) -> None:
    """Place ``container`` so that ``audio`` is read from ``seconds`` or before. FFmpeg seeks
    by the default stream, the video's keyframes, and where none lies so early it refuses (an
    AVI that starts mid-GOP indexes from its first keyframe) or lands later (a MOV whose video
    starts after its audio); ``audio``'s own index, every packet of which is a point to start
    from, is tried next, then the audio's start. A placement holds when the first packet read
    from it, of any stream, lies at or before ``seconds`` (audio that starts later is then
    still ahead); where none does, reading starts where the last one that worked put it."""
    wanted = Fraction(seconds)
    begins = audio.start_time or 0
    ticks = max(begins, math.floor(wanted / audio.time_base))
    placements = (
        lambda: container.seek(math.floor(wanted * 1_000_000), backward=True),
        lambda: container.seek(ticks, stream=audio, backward=True),
        lambda: container.seek(begins, stream=audio, backward=True),
    )
    worked = None
    for place in placements:
        try:
            place()
        except av.FFmpegError:
            continue
        worked = place
        first = next((p for p in container.demux() if p.size and p.dts is not None), None)
        if first is None or first.dts * first.time_base <= wanted:
            break
    if worked is None:
        raise av.FFmpegError(errno.ESPIPE, f"no seek places {audio} at {float(wanted):.3f} s")
    worked()


def _first_keyframe_at_or_before(packets: Iterable[av.Packet], pts: int) -> bool:
    for packet in packets:
        if not packet.size:
            continue
        if packet.is_keyframe:
            shown = packet.pts if packet.pts is not None else packet.dts
            return shown is not None and shown <= pts
        if packet.dts is not None and packet.dts > pts:
            return False  # past the target: a keyframe from here on is shown after it
    return False  # no keyframe up to the end


def from_first_keyframe(packets: Iterable[av.Packet]) -> Iterator[av.Packet]:
    """``packets`` from the first keyframe on (after a seek that landed before it)."""
    started = False
    for packet in packets:
        started = started or (packet.is_keyframe and packet.size > 0)
        if started:
            yield packet


def from_keyframe_at(packets: Iterable[av.Packet], pts: int) -> Iterator[av.Packet]:
    """``packets`` from the keyframe shown at ``pts`` on: where a copy of a segment's packets
    starts (a seek may land on an earlier keyframe)."""
    started = False
    for packet in packets:
        started = started or (packet.is_keyframe and packet.size > 0 and packet.pts == pts)
        if started:
            yield packet
