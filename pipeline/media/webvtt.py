"""An input's text subtitles as WebVTT, the subtitle format HLS players read.

Each text subtitle stream (SubRip, ASS/SSA, mov_text, WebVTT) becomes one WebVTT file, its cues
as plain text (:func:`~carn_stream.pipeline.media.keep.subtitle_text`) timed from the first
segment's start, where a player's timeline starts (so the file also serves as a ``<track>``);
its ``X-TIMESTAMP-MAP`` ties that clock to the segments' MPEG-TS clock (times from the plan's
origin plus :data:`~carn_stream.pipeline.media.encode.SEGMENT_OFFSET_SECONDS`). Bitmap
subtitles (DVD, PGS, DVB) have no text and are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.media.decode import codec_name, open_input, stream_label
from carn_stream.pipeline.media.encode import SEGMENT_OFFSET_SECONDS
from carn_stream.pipeline.media.hls import track_name, unique_name
from carn_stream.pipeline.media.keep import TEXT_SUBTITLES, subtitle_text
from carn_stream.pipeline.media.publish import publish_text
from carn_stream.pipeline.media.segments import SegmentPlan

MPEG_TS_CLOCK = 90_000
#: A cue whose packet gives no duration lasts until the next one, at most this long (seconds).
LONGEST_CUE = Fraction(5)


@dataclass(frozen=True)
class SubtitleTrack:
    """One text subtitle stream of an input, as a subtitle rendition names it."""

    number: int  #: its place among the input's text subtitle streams (0, 1, ...)
    stream_index: int
    name: str  #: its title (an MP4 track's name), else its language's name, else "Subtitles N"
    language: str | None
    default: bool
    forced: bool


def text_subtitle_tracks(source: Path) -> list[SubtitleTrack]:
    """The input's text subtitle streams, in order."""
    tracks: list[SubtitleTrack] = []
    with open_input(source) as container:
        for stream in container.streams.subtitles:
            if codec_name(stream) not in TEXT_SUBTITLES:
                continue
            language, title = stream_label(stream)
            name = track_name(title, language, f"Subtitles {len(tracks) + 1}")
            unique = unique_name(name, (t.name for t in tracks))
            disposition = stream.disposition
            default = bool(disposition & av.stream.Disposition.default)
            tracks.append(SubtitleTrack(
                number=len(tracks), stream_index=stream.index, name=unique, language=language,
                default=default and not any(t.default for t in tracks),  # one at most
                forced=bool(disposition & av.stream.Disposition.forced),
            ))  # fmt: skip
    return tracks


@dataclass(frozen=True)
class Cue:
    start: Fraction  #: seconds from the file's time 0
    end: Fraction
    text: str


@dataclass(frozen=True)
class Clock:
    """Where a WebVTT file's time 0 lies: in the input's clock, and in the segments'."""

    zero: Fraction  #: seconds of the input's clock (the first segment's start)
    mpeg_ts: int  #: the segments' MPEG-TS time there (90 kHz)

    @classmethod
    def of(cls, plan: SegmentPlan) -> Clock:
        zero = plan.segments[0].start_pts * plan.time_base
        return cls(zero, round((zero - plan.origin + SEGMENT_OFFSET_SECONDS) * MPEG_TS_CLOCK))


def cues(source: Path, track: SubtitleTrack, zero: Fraction) -> list[Cue]:
    """The track's cues, in order of their start, timed from ``zero`` (input seconds)."""
    found: list[tuple[Fraction, Fraction | None, str]] = []
    with open_input(source) as container:
        stream = container.streams[track.stream_index]
        codec = codec_name(stream)
        for packet in container.demux(stream):
            at = packet.pts if packet.pts is not None else packet.dts
            if at is None or not packet.size:
                continue
            text = subtitle_text(codec, bytes(packet))
            if not text:
                continue
            start = at * packet.time_base - zero
            length = packet.duration * packet.time_base if packet.duration else None
            found.append((start, length, text))
    found.sort(key=lambda cue: cue[0])
    out = []
    for n, (start, length, text) in enumerate(found):
        if length is None:
            following = found[n + 1][0] if n + 1 < len(found) else start + LONGEST_CUE
            length = min(max(following - start, Fraction(0)), LONGEST_CUE)
        out.append(Cue(start, start + length, text))
    return out


def _clock(seconds: Fraction) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _escaped(text: str) -> str:
    """Cue text with what WebVTT reads as markup escaped, and no blank line (a cue's end)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "\n".join(line for line in text.splitlines() if line.strip())


def webvtt_lines(found: list[Cue], clock: Clock) -> Iterator[str]:
    """A WebVTT file of ``found``, its time 0 at ``clock``; cues before it are left out."""
    yield "WEBVTT"
    yield f"X-TIMESTAMP-MAP=MPEGTS:{clock.mpeg_ts},LOCAL:00:00:00.000"
    for cue in found:
        if cue.end <= max(cue.start, Fraction(0)):
            continue
        yield ""
        yield f"{_clock(cue.start)} --> {_clock(cue.end)}"
        yield _escaped(cue.text)


def write_webvtt(source: Path, track: SubtitleTrack, plan: SegmentPlan, target: Path) -> Path:
    """Write ``track`` of ``source`` as WebVTT for the segments of ``plan`` at ``target``
    (published by rename)."""
    clock = Clock.of(plan)
    text = "\n".join(webvtt_lines(cues(source, track, clock.zero), clock)) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    return publish_text(target, text)
