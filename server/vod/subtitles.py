"""A video's text subtitles as HLS subtitle renditions: ``/videos/<id>/subtitles/<n>.m3u8``
(one WebVTT file for the whole video) and ``<n>.vtt``, made from the video's input when first
asked for and kept in its folder (:mod:`carn_stream.pipeline.media.webvtt`)."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import av

from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.media.hls import SubtitleMedia, subtitle_playlist_text
from carn_stream.pipeline.media.webvtt import SubtitleTrack, text_subtitle_tracks, write_webvtt
from carn_stream.server.vod.store import Video

log = logging.getLogger(__name__)

SUBTITLES = "subtitles"  #: the folder of a video's subtitle renditions, in its URLs and cache
#: A subtitle rendition's files: ``<n>.m3u8`` (its playlist) and ``<n>.vtt``.
FILE_NAME = re.compile(r"([0-9]{1,3})\.(m3u8|vtt)\Z")


class VideoSubtitles:
    """The text subtitle tracks of each video (read once from its input) and their files."""

    def __init__(self, folder: Callable[[str], Path]) -> None:
        self._folder = folder
        self._tracks: dict[str, list[SubtitleTrack]] = {}
        #: one reading of the input per file at a time (a long input takes a while to read,
        #: and players ask at once)
        self._making: dict[Path, asyncio.Lock] = {}

    def tracks(self, video: Video) -> list[SubtitleTrack]:
        """The video's text subtitle streams (none when its input cannot be read)."""
        found = self._tracks.get(video.id)
        if found is None:
            try:
                found = text_subtitle_tracks(video.source)
            except (PipelineError, av.FFmpegError, OSError) as exc:
                log.warning("video %s: its subtitles cannot be read: %s", video.id, exc)
                found = []
            self._tracks[video.id] = found
        return found

    def media(self, video: Video) -> list[SubtitleMedia]:
        """The master playlist's subtitle renditions."""
        return [SubtitleMedia(f"{SUBTITLES}/{t.number}.m3u8", t.name, t.language, t.default,
                              t.forced) for t in self.tracks(video)]  # fmt: skip

    def track(self, video: Video, name: str) -> tuple[SubtitleTrack, str] | None:
        """The track a file name stands for, and the file's kind (``m3u8`` or ``vtt``)."""
        match = FILE_NAME.match(name)
        if match is None:
            return None
        number = int(match[1])
        tracks = self.tracks(video)
        return (tracks[number], match[2]) if number < len(tracks) else None

    @staticmethod
    def playlist(video: Video, track: SubtitleTrack) -> str:
        return subtitle_playlist_text(float(video.plan.duration), f"{track.number}.vtt")

    async def file(self, video: Video, track: SubtitleTrack) -> Path:
        """The track's WebVTT file, made now when it is not yet."""
        path = self._folder(video.id) / SUBTITLES / f"{track.number}.vtt"
        lock = self._making.setdefault(path, asyncio.Lock())
        async with lock:
            if not path.is_file():  # (threads of its own: ingests and segments go on)
                await asyncio.to_thread(write_webvtt, video.source, track, video.plan, path)
        return path

    def drop(self, video_id: str) -> None:
        """Remove the video's WebVTT files (timed by a plan it no longer has)."""
        shutil.rmtree(self._folder(video_id) / SUBTITLES, ignore_errors=True)

    def forget(self, video_id: str) -> None:
        self._tracks.pop(video_id, None)
        folder = self._folder(video_id)
        for path in [p for p in self._making if p.is_relative_to(folder)]:
            del self._making[path]
