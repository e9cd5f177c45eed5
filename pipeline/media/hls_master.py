"""The master playlist of a finished HLS folder: its one rendition, described from its own
segments (size, codecs, peak bit rate), the input's audio streams as audio renditions where
it has several (:mod:`~carn_stream.pipeline.media.hls_audio`), and its text subtitles as WebVTT
subtitle renditions beside it (``subtitles_N.m3u8``, ``subtitles_N.vtt``)."""

from __future__ import annotations

import logging
from pathlib import Path

import av

from carn_stream.pipeline.colour import video_range
from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.media.decode import codec_name
from carn_stream.pipeline.media.encode import SEGMENT_FORMAT, probe_to_video
from carn_stream.pipeline.media.hls import (
    MASTER_NAME,
    PLAYLIST_NAME,
    SubtitleMedia,
    Variant,
    audio_prefix,
    master_playlist_text,
    segment_name,
    subtitle_file,
    subtitle_playlist_text,
)
from carn_stream.pipeline.media.hls_audio import write_audio_renditions
from carn_stream.pipeline.media.publish import publish_text
from carn_stream.pipeline.media.renditions import audio_tag, video_tag
from carn_stream.pipeline.media.segments import SegmentPlan
from carn_stream.pipeline.media.webvtt import text_subtitle_tracks, write_webvtt

log = logging.getLogger(__name__)

def write_folder_master(
    folder: Path, plan: SegmentPlan, source: Path, segments: Path, fragmented: bool = False
) -> Path:
    """Write ``folder``'s master playlist, and its audio and subtitle renditions, once every
    segment of ``plan`` is there (``segments``: the folder of its MPEG-TS segments;
    ``fragmented``: the folder's are fragmented MP4, made from those). Subtitles or audio
    streams that cannot be read are left out, with a warning."""
    subtitles: list[SubtitleMedia] = []
    try:
        for track in text_subtitle_tracks(source):
            write_webvtt(source, track, plan, folder / subtitle_file(track.number, "vtt"))
            playlist = subtitle_file(track.number, "m3u8")
            text = subtitle_playlist_text(float(plan.duration), subtitle_file(track.number, "vtt"))
            publish_text(folder / playlist, text)
            subtitles.append(SubtitleMedia(playlist, track.name, track.language, track.default,
                                           track.forced))  # fmt: skip
    except (PipelineError, av.FFmpegError, OSError) as exc:
        log.warning("the subtitles of %s cannot be read; left out: %s", source.name, exc)
        subtitles = []
    audio = write_audio_renditions(folder, plan, source, segments, fragmented)
    variant = _variant(folder, plan, segments, fragmented, list(audio))
    text = master_playlist_text([variant], subtitles, list(audio.values()))
    return publish_text(folder / MASTER_NAME, text)


def _variant(
    folder: Path, plan: SegmentPlan, segments: Path, fragmented: bool, audio: list[int]
) -> Variant:
    """The folder's rendition: its first segment's picture size and codecs, the peak rate of
    what a player fetches (each segment, and the largest of its audio renditions' segments
    ``audio``). The first segment is read as far as its video (it may open with a long
    stretch of audio)."""

    def size(name: str) -> int:
        return (folder / name).stat().st_size

    peak = plan.peak_rate({
        s.index: size(segment_name(s.index, fragmented))
        + max((size(audio_prefix(n) + segment_name(s.index, fragmented)) for n in audio), default=0)
        for s in plan.segments
    })  # fmt: skip
    first = segments / segment_name(0)
    with av.open(str(first), format=SEGMENT_FORMAT, options=probe_to_video(first)) as segment:
        video = segment.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        codecs = [_video_tag(segment, video)]
        for stream in segment.streams.audio:
            tag = audio_tag(codec_name(stream), stream.codec_context.profile) or ""
            if tag not in codecs:
                codecs.append(tag)
    rate = float(plan.frame_rate) if plan.frame_rate else None
    # Codec strings only when all are known (a list that leaves one out misleads a player).
    known = ",".join(codecs) if all(codecs) else ""
    return Variant(PLAYLIST_NAME, round(peak), width, height, known, rate,
                   video_range(plan.transfer))


def _video_tag(segment: av.container.InputContainer, video: av.stream.Stream) -> str:
    """H.264's or HEVC's codec string from the segment's parameter sets: its extradata, else
    its first packet ("" for other codecs)."""
    extradata = bytes(video.codec_context.extradata or b"")
    if tag := video_tag(video.codec_context.name, extradata):
        return tag
    first = next((p for p in segment.demux(video) if p.size), None)
    return video_tag(video.codec_context.name, bytes(first) if first else b"") or ""
