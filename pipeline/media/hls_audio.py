"""Audio renditions of a finished HLS folder, where the input has more than one audio stream.

Every segment carries all of the input's audio streams, but a player plays the first of them
only: a second language in the same segments is out of its reach. So once every segment is
there, each audio stream gets a rendition of its own, which the master playlist offers as one
group (``#EXT-X-MEDIA:TYPE=AUDIO``; the first stream is the default):

- ``audio_N.m3u8``, with the folder's segment durations, and its segments
  ``audio_N_segment_NNNNN.ts`` (MPEG-TS) or ``audio_N_segment_NNNNN.m4s`` after
  ``audio_N_init.mp4`` (fragmented MP4), ``N`` the stream's place among the audio streams;
- each holds the stream's packets of that segment, copied bit for bit with their times, so it
  plays in step with the picture. An encoder's priming frame, which ends before a segment's
  first picture (the segment before has that stretch), is left out, as in a fragmented folder.

The first stream has a rendition of its own too, although the segments carry it: a player
(Chromium's) that plays the audio in the segments does not switch from it to a rendition,
but switches between renditions. The segments keep all their audio, so ``index.m3u8`` alone
plays as before; a player of the master playlist fetches the audio of the segments and of
its rendition (audio is a small part of an upscaled video's bytes).

A stream that has no packet in some segment (one that starts late or stops early) is not
offered: a rendition with a hole would stall a player. Nor is one whose segments configure the
decoder differently. Either is left out with a warning; with fewer than two streams left, the
master playlist offers no group, and players play the segments' first audio stream as before.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import av

from carn_stream.pipeline.errors import OutputError, PipelineError, ffmpeg_reason
from carn_stream.pipeline.media.decode import codec_name, open_input, stream_label
from carn_stream.pipeline.media.encode import SEGMENT_FORMAT, probe_to_video
from carn_stream.pipeline.media.fragment import check_tracks, fragment, publish_bytes
from carn_stream.pipeline.media.hls import (
    AUDIO_NAME_RE,
    INIT_NAME,
    AudioMedia,
    audio_playlist,
    audio_prefix,
    playlist_text,
    publish_text,
    segment_name,
    unique_name,
)
from carn_stream.pipeline.media.renditions import audio_tag
from carn_stream.pipeline.media.segments import SegmentPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioStream:
    """One of the input's audio streams, as its rendition names it."""

    number: int  #: its place among the audio streams
    name: str  #: its title, else its language, else "Audio N"
    language: str | None
    channels: int | None
    codec: str | None  #: its codec string (RFC 6381), where one is known


def audio_streams(source: Path) -> list[AudioStream]:
    """The input's audio streams, in order (the order the segments carry them in)."""
    streams: list[AudioStream] = []
    with open_input(source) as container:
        for number, stream in enumerate(container.streams.audio):
            language, title = stream_label(stream)
            name = unique_name(title or language or f"Audio {number + 1}",
                               (s.name for s in streams))  # fmt: skip
            channels = stream.codec_context.channels or None
            codec = audio_tag(codec_name(stream), stream.codec_context.profile)
            streams.append(AudioStream(number, name, language, channels, codec))
    return streams


def write_audio_renditions(
    folder: Path, plan: SegmentPlan, source: Path, segments: Path, fragmented: bool
) -> list[AudioMedia]:
    """Write ``folder``'s audio renditions from its MPEG-TS ``segments`` (every one of
    ``plan``'s there); returns the audio group of its master playlist, empty where the input
    has one audio stream or none. A stream that cannot be offered is left out, with a
    warning."""
    _remove_renditions(folder)  # (an earlier, interrupted finish's)
    try:
        streams = audio_streams(source)
    except (PipelineError, av.FFmpegError, OSError) as exc:
        log.warning("the audio streams of %s cannot be read; one audio rendition: %s",
                    source.name, exc)  # fmt: skip
        return []
    if len(streams) < 2:
        return []
    group: list[AudioMedia] = []
    for stream in streams:
        try:
            _write_rendition(folder, plan, segments, stream.number, fragmented)
        except (OutputError, av.FFmpegError, OSError) as exc:
            log.warning("audio stream %d (%s) of %s is not offered on its own: %s",
                        stream.number, stream.name, source.name, exc)  # fmt: skip
            _remove_renditions(folder, stream.number)
            continue
        group.append(AudioMedia(audio_playlist(stream.number), stream.name, stream.language,
                                not group, stream.channels))  # fmt: skip
    if len(group) < 2:  # nothing to choose from: the segments' first audio stream plays
        _remove_renditions(folder)
        return []
    return group


def _write_rendition(
    folder: Path, plan: SegmentPlan, segments: Path, number: int, fragmented: bool
) -> None:
    """Audio stream ``number``'s segments and playlist (raises OutputError where a segment has
    no packet of it, or configures its decoder otherwise than the first)."""
    prefix = audio_prefix(number)
    init: bytes | None = None
    for segment in plan.segments:
        index = segment.index
        data = audio_segment(segments / segment_name(index), number, lead_in=index == 0)
        if data is None:
            raise OutputError(f"segment {index} has none of its packets")
        if fragmented:
            scratch = segments / f".{prefix}{segment_name(index)}.part"
            try:
                scratch.write_bytes(data)
                made = fragment(scratch, index + 1, lead_in=True)
            finally:
                scratch.unlink(missing_ok=True)
            if init is None:
                init = made.init
                publish_bytes(folder / f"{prefix}{INIT_NAME}", init)
            check_tracks(init, made.init, f"its segment {index}")
            data = made.media
        publish_bytes(folder / f"{prefix}{segment_name(index, fragmented)}", data)
    text = playlist_text([s.duration for s in plan.segments], plan.max_duration, complete=True,
                         kind="VOD", fragmented=fragmented, prefix=prefix)  # fmt: skip
    publish_text(folder / audio_playlist(number), text)


def audio_segment(segment: Path, number: int, lead_in: bool) -> bytes | None:
    """Audio stream ``number`` of an MPEG-TS ``segment`` alone, as MPEG-TS: its packets copied
    with their times; None where the segment has none. Audio that ends before the segment's
    first picture is an encoder's priming frame and left out, unless ``lead_in`` (the first
    segment: the audio before the first picture is the input's)."""
    data = io.BytesIO()
    try:
        with av.open(str(segment), format=SEGMENT_FORMAT, options=probe_to_video(segment)) as src:
            if number >= len(src.streams.audio):
                return None
            audio = src.streams.audio[number]
            packets, start = [], None
            for packet in src.demux([*src.streams.video[:1], audio]):
                if packet.dts is None or not packet.size:
                    continue
                if packet.stream.type == "video":
                    first = packet.pts * packet.time_base
                    start = first if start is None else min(start, first)
                else:
                    packets.append(packet)
            if not lead_in and start is not None:
                packets = [p for p in packets if (p.pts + p.duration) * p.time_base > start]
            if not packets:
                return None
            with av.open(data, "w", format=SEGMENT_FORMAT) as out:
                target = out.add_stream_from_template(audio)
                if language := audio.metadata.get("language"):
                    target.metadata["language"] = language
                for packet in packets:
                    packet.stream = target
                    out.mux(packet)
    except (av.FFmpegError, ValueError) as exc:
        raise OutputError(
            f"audio of segment {segment.name} cannot be written alone ({ffmpeg_reason(exc)})"
        ) from exc
    return data.getvalue()


def _remove_renditions(folder: Path, number: int | None = None) -> None:
    """Remove the folder's audio rendition files (of stream ``number`` only, where given)."""
    for path in folder.iterdir():
        match = AUDIO_NAME_RE.fullmatch(path.name)
        if match and (number is None or int(match[1]) == number):
            path.unlink(missing_ok=True)
