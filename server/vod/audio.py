"""A video's audio streams as HLS audio renditions, where its input has more than one:
``/videos/<id>/audio_<n>/index.m3u8`` and its MPEG-TS segments, each holding one stream's
audio of one of the video's segments, as the video's segments carry it and at their times
(:func:`~carn_stream.pipeline.media.remux.remux_audio`), made when first asked for and kept in
the segment cache (as rendition ``audio_<n>``: within its budget, evicted as its segments
are). The upscaled segments carry all of the input's audio, but a player plays the first of it
only; the group lets a viewer choose (docs/PIPELINE.md, "Audio renditions").

A stream is offered where it has a packet in every segment (a rendition with a hole stalls a
player): copied where MPEG-TS carries it as it is (AAC, MP3, AC-3, E-AC-3), else made AAC as
the upscaled segments make it (Opus, FLAC, Vorbis, PCM, DTS...: the same frames, bit for bit).
Where the first stream (the one a player of the segments hears) cannot be, or fewer than two
can, the master playlist has no audio group; except that a first stream the original
rendition leaves out (it copies packets only) is a group of its own, so that the original
plays with sound."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

import av

from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.media.hls import (
    PLAYLIST_NAME,
    AudioMedia,
    plan_playlist_text,
    segment_index,
)
from carn_stream.pipeline.media.hls_audio import AudioStream, audio_streams
from carn_stream.pipeline.media.remux import RemuxTask, audio_peak_rates, remux_audio
from carn_stream.pipeline.media.segments import SegmentPlan
from carn_stream.server.metrics import Metrics
from carn_stream.server.streaming import OpenFile
from carn_stream.server.vod.cache import Key, SegmentCache
from carn_stream.server.vod.store import ORIGINAL, OfferedAudio, Video

log = logging.getLogger(__name__)

#: A video's audio rendition folder, in its URLs and cache (``audio_<n>``).
FOLDER = re.compile(r"audio_([0-9]{1,3})\Z")
METRIC_LABEL = "audio"  #: every audio rendition's ``rendition`` in the metrics (few values)


def folder_name(number: int) -> str:
    return f"audio_{number}"


def media_uri(number: int) -> str:
    """Audio rendition ``number``'s playlist, as the master playlist names it."""
    return f"{folder_name(number)}/{PLAYLIST_NAME}"


def offered_audio(source: Path, plan: SegmentPlan, original: bool) -> OfferedAudio | None:
    """Which of ``source``'s audio streams the video offers as renditions, and their peak rate
    (one reading of its audio; ``original``: the video has an original rendition). None where
    they cannot be read (logged): nothing is decided."""
    try:
        every = audio_streams(source)
        offered, rates = [], {}
        if len(every) > 1 or _unheard_in_original(every, original):
            rates = audio_peak_rates(source, plan)
            offered = [s for s in every if s.number in rates]
    except (PipelineError, av.FFmpegError, OSError, ValueError) as exc:
        log.warning("the audio streams of %s cannot be read: %s", source.name, exc)
        return None
    if not offered or offered[0].number != 0:  # (0: what the segments' players hear)
        return OfferedAudio()
    if len(offered) < 2 and not _unheard_in_original(offered, original):
        return OfferedAudio()
    return OfferedAudio(tuple(offered), max(rates[s.number] for s in offered))


def _unheard_in_original(streams: list[AudioStream], original: bool) -> bool:
    """Whether an original rendition, whose segments copy what MPEG-TS carries as it is, leaves
    out the first audio stream (which the upscaled segments make AAC): then one stream is a
    group of its own, so that the original plays with sound too."""
    return original and bool(streams) and not streams[0].copied


class VideoAudio:
    """The audio renditions of each video (which streams: decided once per plan, see
    :meth:`offered`) and their segments, in the segment ``cache`` (``shortfall``: the bytes
    missing to the disk's floor, which making a segment frees; ``evicted``: told what that
    evicted)."""

    def __init__(
        self,
        cache: SegmentCache,
        shortfall: Callable[[], int],
        evicted: Callable[[list[Key]], None],
        record: Callable[[str, OfferedAudio], None],
        metrics: Metrics,
    ) -> None:
        """``record``: stores what is decided for a video from before audio renditions were
        recorded with it (decided at ingest since); ``metrics``: where segment requests and
        segments made are counted (as rendition ``audio``, whichever stream)."""
        self._cache, self._shortfall, self._evicted = cache, shortfall, evicted
        self._record, self._metrics = record, metrics
        self._offered: dict[str, OfferedAudio] = {}  #: per video, once decided
        self._reading: dict[str, threading.Lock] = {}  #: (called from threads)
        #: one making of a segment at a time (players ask at once)
        self._making: dict[Key, asyncio.Lock] = {}

    def streams(self, video: Video) -> tuple[AudioStream, ...]:
        """The video's offered audio streams (none: no audio group)."""
        return self.offered(video).streams

    def peak_rate(self, video: Video) -> float:
        """The peak rate of the busiest offered stream (bits per second): what a player of a
        rendition fetches on top of its segments. As decided at ingest (its likeliest busiest
        segments made in memory), and once segments are made from their bytes too."""
        offered = self.offered(video)
        cached = self._cache.cached(video.id)
        made = (video.plan.peak_rate(cached.get(folder_name(s.number), {}))
                for s in offered.streams)  # fmt: skip
        return max(offered.peak_rate, *made, 0.0)

    def offered(self, video: Video) -> OfferedAudio:
        """The video's audio renditions: as recorded with it, else decided now (one reading of
        its input, one at a time) and recorded. An input that cannot be read offers none until
        a restart, and nothing is recorded."""
        found = self._offered.get(video.id) or video.audio
        if found is None:
            with self._reading.setdefault(video.id, threading.Lock()):
                found = self._offered.get(video.id)
                if found is None:
                    found = offered_audio(video.source, video.plan,
                                          video.rendition(ORIGINAL) is not None)  # fmt: skip
                    if found is not None:
                        self._record(video.id, found)
        found = found or OfferedAudio()
        self._offered[video.id] = found
        return found

    def media(self, video: Video) -> list[AudioMedia]:
        """The master playlist's audio renditions."""
        streams = self.streams(video)
        return [AudioMedia(media_uri(s.number), s.name, s.language, s is streams[0],
                           s.channels) for s in streams]  # fmt: skip

    def stream(self, video: Video, folder: str) -> AudioStream | None:
        """The offered stream an ``audio_<n>`` folder stands for (spelt as :func:`folder_name`
        spells it: ``audio_01`` is no other name for it)."""
        match = FOLDER.match(folder)
        if match is None or folder_name(int(match[1])) != folder:
            return None
        number = int(match[1])
        return next((s for s in self.streams(video) if s.number == number), None)

    def made_size(self, video: Video, stream: AudioStream, index: int) -> int | None:
        """The bytes of a cached segment; None when it is not made yet."""
        return self._cache.cached(video.id).get(folder_name(stream.number), {}).get(index)

    @staticmethod
    def playlist(video: Video) -> str:
        """A rendition's playlist: the video's segment durations."""
        return plan_playlist_text(video.plan)

    @staticmethod
    def index(video: Video, name: str) -> int | None:
        """The segment a file name stands for (MPEG-TS), None for any other name."""
        index = segment_index(name)
        return index if index is not None and index < len(video.plan.segments) else None

    async def segment(self, video: Video, stream: AudioStream, index: int) -> OpenFile:
        """Segment ``index`` of the stream's rendition, opened: from the cache, or made now."""
        key = Key(video.id, folder_name(stream.number), index)
        async with self._making.setdefault(key, asyncio.Lock()):
            if (cached := self._cache.open(key)) is not None:
                self._metrics.vod_cache_hits.labels(METRIC_LABEL).inc()
                return cached
            self._metrics.vod_cache_misses.labels(METRIC_LABEL).inc()
            target = self._cache.path(key, fragment=False)
            target.parent.mkdir(exist_ok=True)  # (not the video's folder: it may have gone)
            task = RemuxTask.of(video.source, video.plan, index, target)
            size = await asyncio.to_thread(remux_audio, task, stream.number)  # (a thread)
            opened = await asyncio.to_thread(OpenFile.of, target)  # (before any eviction)
            self._evicted(self._cache.add(key, size, self._shortfall()))
            self._metrics.vod_segments_made.labels(METRIC_LABEL, "request").inc()
            return opened

    def drop(self, video_id: str) -> None:
        """Forget the video's streams and remove their segments (made for a plan it no longer
        has)."""
        self._offered.pop(video_id, None)
        for rendition in self._cache.cached(video_id):
            if FOLDER.match(rendition):
                self._cache.drop(video_id, rendition)

    def forget(self, video_id: str) -> None:
        """Forget a deleted video (the cache forgets its segments)."""
        self._offered.pop(video_id, None)
        self._reading.pop(video_id, None)
        for key in [k for k in self._making if k.video == video_id]:
            del self._making[key]
