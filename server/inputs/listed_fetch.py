"""An input URL that answers with a listing of parts (an HLS playlist, a DASH manifest): fetch
what it lists and leave one file in the input's place.

Every playlist, manifest and part is fetched as any input is (the caller's ``download``:
address checks, redirects, the size cap and deadlines counted over the whole input), one
after the other, and appended to the stream it belongs to (decrypted on the way where the
listing says it is encrypted, with keys fetched the same way). Nothing here reads media: audio
delivered apart from the video is kept beside the input
(:func:`~carn_stream.pipeline.media.listing.save_apart`), and joined with it where inputs are
first opened, in the worker that plans them
(:func:`~carn_stream.pipeline.media.listing.join_apart`).
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from carn_stream.pipeline.media.dash_input import dash_listing, is_manifest
from carn_stream.pipeline.media.decrypt import MAX_KEY_BYTES, check_key, decrypt_part
from carn_stream.pipeline.media.hls_input import hls_listing, is_playlist
from carn_stream.pipeline.media.listing import (
    MAX_LISTING_BYTES,
    AudioFile,
    Listed,
    ListedText,
    Listing,
    ListingError,
    TextStream,
    has_audio_apart,
    join_apart,
    save_apart,
)
from carn_stream.pipeline.media.webvtt_input import (
    MAX_SEGMENT_BYTES,
    Cues,
    MpegtsClock,
    read_segment,
)

#: How much of a download is read to tell a listing (a manifest may start with comments).
HEAD_BYTES = 1024
#: The URL schemes a listing's parts may have when it came from the web.
WEB = ("http", "https")


class Download(Protocol):
    """Fetches ``url`` into ``dest`` (at most ``limit`` bytes where given: a playlist, a
    manifest or a key); returns the URL it came from in the end (after redirects)."""

    def __call__(self, url: str, dest: Path, limit: int | None = None) -> str: ...


#: What each kind of listing is called in messages.
LISTING_NAMES = {"HLS": "an HLS playlist", "DASH": "a DASH manifest"}


def listing_kind(head: bytes) -> str | None:
    """``"HLS"`` or ``"DASH"`` for a file starting with ``head``; None for anything else."""
    if is_playlist(head):
        return "HLS"
    return "DASH" if is_manifest(head) else None


def fetch_listed(
    kind: str,
    listing: Path,
    url: str,
    download: Download,
    dest: Path,
    schemes: tuple[str, ...] = WEB,
) -> None:
    """The stream the ``listing`` of ``kind`` (:func:`listing_kind`; fetched from ``url``)
    names, in ``dest`` once whole (its
    audio delivered apart kept beside it, to be joined when it is planned): see
    :func:`~carn_stream.pipeline.media.hls_input.hls_listing` and
    :func:`~carn_stream.pipeline.media.dash_input.dash_listing` for what is chosen. Only URIs
    of ``schemes`` are followed. Raises :class:`ListingError` for what cannot be joined."""
    work = dest.with_name(f".{dest.name}.listed")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        text = _text(listing)
        if kind == "HLS":

            def read(uri: str) -> tuple[str, str]:
                _check_scheme(uri, schemes)
                final = download(uri, work / "playlist", MAX_LISTING_BYTES)
                return _text(work / "playlist"), final

            listed = hls_listing(text, url, read)
        else:
            listed = dash_listing(text, url)
        _fetch_parts(listed, work, download, dest, schemes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch_parts(
    listed: Listing, work: Path, download: Download, dest: Path, schemes: tuple[str, ...]
) -> None:
    for stream in (listed.video, *(a.stream for a in listed.apart),
                   *(t.stream for t in listed.subtitles)):  # fmt: skip
        for uri in (*stream.parts, *(k.uri for k in stream.keys if k)):  # (all before any)
            _check_scheme(uri, schemes)
    keys = _Keys(work, download)
    audio = []
    for number, entry in enumerate(listed.audio):
        path = None
        if entry.stream is not None:
            path = work / f"audio{number}"
            _concatenate(entry.stream, path, work, download, keys)
        audio.append(AudioFile(path, entry.name, entry.language))
    subtitles = [s for s in (_cues(text, work, download) for text in listed.subtitles) if s]
    if not listed.audio:  # (none listed: the video's own, if it has any, as it is)
        audio.append(AudioFile(None, every_own=True))
    video = work / "video"
    _concatenate(listed.video, video, work, download, keys)
    if listed.apart or subtitles or any(a.name or a.language for a in listed.audio):
        # (audio apart and subtitles to join, or the video's own audio to name as the listing
        # does: beside the input before the input is there, so a crash between leaves none)
        save_apart(dest, audio, video.stat().st_size, subtitles)
    video.replace(dest)


def _cues(text: ListedText, work: Path, download: Download) -> TextStream | None:
    """A subtitle stream's WebVTT segments read into one stream of cues; None where they are
    not WebVTT or pass the limits (left out: the video is not refused for its subtitles)."""
    cues = Cues(f"the subtitle stream {text.name or text.language or ''!r}")
    clock = MpegtsClock()
    for part in text.stream.parts:
        download(part, work / "cues", MAX_SEGMENT_BYTES)
        try:
            cues.add(read_segment((work / "cues").read_text("utf-8"), part, clock))
        except (UnicodeDecodeError, ListingError):
            return None
    timed = tuple((round(c.start * 1000), round(c.end * 1000), c.text) for c in cues.in_order())
    return TextStream(timed, text.name, text.language)


def _text(path: Path) -> str:
    if path.stat().st_size > MAX_LISTING_BYTES:
        raise ListingError(f"the playlist or manifest is over the limit of {MAX_LISTING_BYTES} "
                           "bytes")  # fmt: skip
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError:
        raise ListingError("the playlist or manifest is not UTF-8 text") from None


def _check_scheme(uri: str, schemes: tuple[str, ...]) -> None:
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme not in schemes:
        taken = "http(s)" if schemes == WEB else "/".join(schemes) + ":"
        raise ListingError(f"it names a {scheme or 'schemeless'}: URI; only {taken} URIs are "
                           "followed")  # fmt: skip


class _Keys:
    """The keys of a listing's encrypted parts, each fetched once (a playlist may name one key
    for all its segments, or change it every few)."""

    def __init__(self, work: Path, download: Download) -> None:
        self._work = work
        self._download = download
        self._known: dict[str, bytes] = {}

    def __getitem__(self, uri: str) -> bytes:
        if uri not in self._known:
            path = self._work / "key"
            self._download(uri, path, MAX_KEY_BYTES)
            self._known[uri] = check_key(path.read_bytes(), uri)
            path.unlink()
        return self._known[uri]


def _concatenate(
    stream: Listed, target: Path, work: Path, download: Download, keys: _Keys
) -> None:
    """The stream's parts' bytes (decrypted, where they are encrypted), one after the other,
    in ``target`` (up to its end, where the listing gives one)."""
    part_file = work / "part"
    with open(target, "wb") as out:
        for part, key in zip(stream.parts, stream.keys or [None] * len(stream.parts),
                             strict=True):  # fmt: skip
            download(part, part_file)
            if key is not None:
                decrypt_part(part_file, keys[key.uri], key.iv, out, part)
            else:
                with open(part_file, "rb") as data:
                    shutil.copyfileobj(data, out, 1 << 20)
            part_file.unlink()
        if stream.end is not None:
            if out.tell() < stream.end:
                raise ListingError(f"{stream.parts[0]} is shorter ({out.tell()} bytes) than the "
                                   f"byte ranges listed in it ({stream.end})")  # fmt: skip
            out.truncate(stream.end)


def join_local_listing(kind: str, listing: Path, dest: Path, keep: Path | None = None) -> None:
    """What a local playlist or manifest (of ``kind``) lists (``file:`` URIs only: files beside
    it, or anywhere its reader may read), joined into ``dest``. A listing that names ``keep``
    (an output that will replace that file) is refused."""

    def copy(uri: str, target: Path, limit: int | None = None) -> str:
        source = Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path))
        if not source.is_file():
            raise ListingError(f"it names {source}, which is not a file")
        if keep is not None and keep.is_file() and os.path.samefile(source, keep):
            raise ListingError(f"it names {keep}, which its output would replace; choose "
                               "another output")  # fmt: skip
        if limit is not None and source.stat().st_size > limit:
            raise ListingError(f"{source} is over the limit of {limit} bytes for a playlist, "
                               "key or subtitle segment")  # fmt: skip
        shutil.copyfile(source, target)
        return uri

    fetch_listed(kind, listing, listing.resolve().as_uri(), copy, dest, schemes=("file",))
    # (the CLI plans in the worker too, but a local listing is its user's own: joined here)
    if has_audio_apart(dest):
        join_apart(dest, dest)
