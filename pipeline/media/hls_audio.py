"""Audio renditions of a finished HLS folder, where the input has more than one audio stream.

Every segment carries all of the input's audio streams, but a player plays the first of them
only: a second language in the same segments is out of its reach. So once every segment is
there, each audio stream gets a rendition of its own, which the master playlist offers as one
group (``#EXT-X-MEDIA:TYPE=AUDIO``; the first stream is the default):

- ``audio_N.m3u8``, with the folder's segment durations, and its segments
  ``audio_N_segment_NNNNN.ts`` (MPEG-TS) or ``audio_N_segment_NNNNN.m4s`` after
  ``audio_N_init.mp4`` (fragmented MP4), ``N`` the stream's place among the audio streams;
- each holds the stream's packets of that segment, copied with their times (bit for bit in
  MPEG-TS), so it plays in step with the picture. An encoder's priming frame, which ends
  before a segment's first picture (the segment before has that stretch), is left out, as in a
  fragmented folder. Each of the folder's segments is read once, for all of its streams.

The first stream has a rendition of its own too, although the segments carry it: a player
(Chromium's) that plays the audio in the segments does not switch from it to a rendition,
but switches between renditions. The segments keep all their audio, so ``index.m3u8`` alone
plays as before; a player of the master playlist fetches the audio of the segments and of
its rendition (audio is a small part of an upscaled video's bytes).

A stream that has no packet in some segment (one that starts late or stops early) is not
offered: a rendition with a hole would stall a player. Nor, in fragmented MP4, is one whose
segments configure its decoder differently. Either is left out with a warning; where that is
the first stream, or fewer than two are left, the master playlist offers no group, and players
play the segments' first audio stream as before."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import av

from carn_stream.pipeline.errors import OutputError, PipelineError, ffmpeg_reason
from carn_stream.pipeline.media.audio_transcode import transcoded_channels
from carn_stream.pipeline.media.decode import keep_language, open_input, stream_label
from carn_stream.pipeline.media.encode import SEGMENT_FORMAT, probe_to_video
from carn_stream.pipeline.media.fragment import check_tracks, fragment, played
from carn_stream.pipeline.media.hls import (
    AUDIO_NAME_RE,
    INIT_NAME,
    AudioMedia,
    audio_playlist,
    audio_prefix,
    carried_as_is,
    plan_playlist_text,
    segment_name,
    track_name,
    unique_name,
)
from carn_stream.pipeline.media.publish import publish_bytes, publish_text
from carn_stream.pipeline.media.renditions import carried_audio_tag
from carn_stream.pipeline.media.segments import SegmentPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioStream:
    """One of the input's audio streams, as its rendition names it."""

    number: int  #: its place among the audio streams
    name: str  #: its title, else its language's name, else "Audio N"
    language: str | None
    channels: int | None  #: as the segments carry it
    codec: str | None  #: its codec string (RFC 6381) as the segments carry it, where known
    copied: bool  #: MPEG-TS carries it as it is (else segments transcode it to AAC)


def audio_streams(source: Path) -> list[AudioStream]:
    """The input's audio streams, in order (the order the segments carry them in), as the
    segments carry them: copied where MPEG-TS takes them, else AAC (mono or stereo)."""
    streams: list[AudioStream] = []
    with open_input(source) as container:
        for number, stream in enumerate(container.streams.audio):
            language, title = stream_label(stream)
            name = unique_name(track_name(title, language, f"Audio {number + 1}"),
                               (s.name for s in streams))  # fmt: skip
            copied = carried_as_is(stream)
            channels = stream.codec_context.channels or None
            if channels and not copied:
                channels = transcoded_channels(channels)
            streams.append(AudioStream(number, name, language, channels,
                                       carried_audio_tag(stream), copied))  # fmt: skip
    return streams


def write_audio_renditions(
    folder: Path, plan: SegmentPlan, source: Path, segments: Path, fragmented: bool
) -> dict[int, AudioMedia]:
    """Write ``folder``'s audio renditions from its MPEG-TS ``segments`` (every one of
    ``plan``'s there; each read once); returns the audio group of its master playlist (by
    the stream's place among the audio streams), empty where the input has one audio stream
    or none. A stream that cannot be offered is left out, with a warning; where that is the
    first (the audio a player of the segments hears), no group is offered."""
    _remove_renditions(folder)  # (an earlier, interrupted finish's)
    try:
        streams = audio_streams(source)
    except (PipelineError, av.FFmpegError, OSError, ValueError) as exc:
        log.warning("the audio streams of %s cannot be read; one audio rendition: %s",
                    source.name, exc)  # fmt: skip
        return {}
    if len(streams) < 2:
        return {}
    renditions = {s.number: _Rendition(folder, s.number, fragmented) for s in streams}
    for segment in plan.segments:
        index = segment.index
        try:
            made = audio_segments(segments / segment_name(index), len(streams), index == 0)
        except OutputError as exc:
            log.warning("the audio of %s is not offered as renditions: %s", source.name, exc)
            _remove_renditions(folder)
            return {}
        for number, rendition in list(renditions.items()):
            try:
                rendition.add(index, made.get(number), segments)
            except (OutputError, av.FFmpegError, OSError, ValueError) as exc:
                stream = streams[number]
                log.warning("audio stream %d (%s) of %s is not offered on its own: %s",
                            number, stream.name, source.name, exc)  # fmt: skip
                _remove_renditions(folder, number)
                del renditions[number]
        if 0 not in renditions or len(renditions) < 2:
            _remove_renditions(folder)  # the segments' first audio stream plays
            return {}
    group: dict[int, AudioMedia] = {}
    for number, rendition in renditions.items():
        rendition.finish(plan)
        stream = streams[number]
        group[number] = AudioMedia(audio_playlist(number), stream.name, stream.language,
                                   number == 0, rendition.channels)  # fmt: skip
    return group


class _Rendition:
    """One audio stream's rendition, written segment by segment."""

    def __init__(self, folder: Path, number: int, fragmented: bool) -> None:
        self.folder, self.number, self.fragmented = folder, number, fragmented
        self.prefix = audio_prefix(number)
        self.init: bytes | None = None
        self.channels: int | None = None  #: as the segments hold it (a transcode may mix down)

    def add(self, index: int, data: tuple[bytes, int] | None, segments: Path) -> None:
        """Publish segment ``index`` (MPEG-TS ``data`` and its channels; None: the segment has
        no packet of the stream, which raises OutputError)."""
        if data is None:
            raise OutputError(f"segment {index} has none of its packets")
        media, channels = data
        if self.channels is None:
            self.channels = channels or None
        if self.fragmented:
            scratch = segments / f".{self.prefix}{segment_name(index)}.part"
            try:
                scratch.write_bytes(media)
                made = fragment(scratch, index + 1, lead_in=True)
            finally:
                scratch.unlink(missing_ok=True)
            if self.init is None:
                self.init = made.init
                publish_bytes(self.folder / f"{self.prefix}{INIT_NAME}", self.init)
            check_tracks(self.init, made.init, f"its segment {index}")
            media = made.media
        publish_bytes(self.folder / f"{self.prefix}{segment_name(index, self.fragmented)}", media)

    def finish(self, plan: SegmentPlan) -> None:
        """Publish its playlist: the folder's segment durations."""
        text = plan_playlist_text(plan, fragmented=self.fragmented, prefix=self.prefix)
        publish_text(self.folder / audio_playlist(self.number), text)


def audio_segments(segment: Path, count: int, lead_in: bool) -> dict[int, tuple[bytes, int]]:
    """Each of the first ``count`` audio streams of an MPEG-TS ``segment`` alone, as MPEG-TS:
    its packets copied with their times, and its channel count (a stream without a packet
    here is missing). An encoder's priming frame is left out as in a fragmented folder
    (:func:`~carn_stream.pipeline.media.fragment.played`; ``lead_in``: the first segment)."""
    made: dict[int, tuple[bytes, int]] = {}
    try:
        with av.open(str(segment), format=SEGMENT_FORMAT, options=probe_to_video(segment)) as src:
            audio = list(src.streams.audio)[:count]
            demuxed = src.demux([*src.streams.video[:1], *audio])
            packets = played([p for p in demuxed if p.dts is not None and p.size], lead_in)
            for number, stream in enumerate(audio):
                kept = [p for p in packets if p.stream.index == stream.index]
                if kept:
                    made[number] = (_alone(stream, kept), stream.codec_context.channels)
    except (av.FFmpegError, ValueError) as exc:
        raise OutputError(
            f"the audio of segment {segment.name} cannot be read ({ffmpeg_reason(exc)})"
        ) from exc
    return made


def _alone(stream: av.stream.Stream, packets: list[av.Packet]) -> bytes:
    """``packets`` of ``stream`` as an MPEG-TS file of that stream alone (its language kept)."""
    data = io.BytesIO()
    with av.open(data, "w", format=SEGMENT_FORMAT) as out:
        target = out.add_stream_from_template(stream)
        keep_language(target, stream)
        for packet in packets:
            packet.stream = target
            out.mux(packet)
    return data.getvalue()


def _remove_renditions(folder: Path, number: int | None = None) -> None:
    """Remove the folder's audio rendition files (of stream ``number`` only, where given)."""
    for path in folder.iterdir():
        match = AUDIO_NAME_RE.fullmatch(path.name)
        if match and (number is None or int(match[1]) == number):
            path.unlink(missing_ok=True)
