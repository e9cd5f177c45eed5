"""An HLS playlist given as an input URL: fetch what it lists and leave one file in its place.

Every playlist and segment is fetched as any input is (the caller's ``download``: address
checks, redirects, the size cap and deadlines counted over the whole input), one after the
other, and appended to the stream it belongs to; a variant with audio renditions of its own is
then joined with them into one Matroska file (:mod:`~carn_stream.pipeline.media.hls_input`).
"""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from carn_stream.pipeline.media.hls_input import (
    MAX_PLAYLIST_BYTES,
    AudioFile,
    MasterPlaylist,
    MediaPlaylist,
    Part,
    PlaylistError,
    join_renditions,
    packed_audio,
    parse_playlist,
)

#: Fetches a URL into a file; returns the URL it came from in the end (after redirects).
Download = Callable[[str, Path], str]


def fetch_listed(playlist: Path, url: str, download: Download, dest: Path) -> None:
    """The stream ``playlist`` (fetched from ``url``) lists, in ``dest`` once whole: the
    variant with the most pixels of a master playlist, with its audio renditions, or a media
    playlist's segments. Raises :class:`PlaylistError` for what cannot be joined."""
    parsed = parse_playlist(_text(playlist), url)
    work = dest.with_name(f".{dest.name}.hls")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        audio: list[AudioFile] = []
        if isinstance(parsed, MasterPlaylist):
            variant = parsed.best()
            parts = _media(variant.uri, work, download).parts("variant's")
            for number, rendition in enumerate(parsed.audio_of(variant)):
                assert rendition.uri is not None  # (audio_of: those with playlists)
                what = f"audio rendition {rendition.name or number}'s"
                audio_parts = _media(rendition.uri, work, download).parts(what)
                if any(packed_audio(p) for p in audio_parts):
                    raise PlaylistError(f"the {what} segments are packed audio (raw ADTS, AC-3 "
                                        "or MP3), which is not read")  # fmt: skip
                path = work / f"audio{number}"
                _concatenate(audio_parts, path, work, download)
                audio.append(AudioFile(path, rendition.name, rendition.language))
        else:
            parts = parsed.parts("media")
        video = work / "video"
        _concatenate(parts, video, work, download)
        if audio:
            joined = work / "joined"
            join_renditions(video, audio, joined)
            joined.replace(dest)
        else:
            video.replace(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _text(playlist: Path) -> str:
    if playlist.stat().st_size > MAX_PLAYLIST_BYTES:
        raise PlaylistError(f"the playlist is over the limit of {MAX_PLAYLIST_BYTES} bytes")
    try:
        return playlist.read_text("utf-8")
    except UnicodeDecodeError:
        raise PlaylistError("the playlist is not UTF-8 text") from None


def _media(uri: str, work: Path, download: Download) -> MediaPlaylist:
    """The media playlist at ``uri``."""
    path = work / "playlist.m3u8"
    final = download(uri, path)
    parsed = parse_playlist(_text(path), final)
    if not isinstance(parsed, MediaPlaylist):
        raise PlaylistError("a variant's playlist is itself a master playlist")
    return parsed


def _concatenate(parts: list[Part], target: Path, work: Path, download: Download) -> None:
    """The parts' bytes, one after the other, in ``target``."""
    part_file = work / "part"
    with open(target, "wb") as out:
        for part in parts:
            scheme = urllib.parse.urlsplit(part.uri).scheme
            if scheme not in ("http", "https"):
                raise PlaylistError(f"the playlist names a {scheme or 'schemeless'}: URI; only "
                                    "http(s) segments are fetched")  # fmt: skip
            download(part.uri, part_file)
            with open(part_file, "rb") as data:
                shutil.copyfileobj(data, out, 1 << 20)
            part_file.unlink()
