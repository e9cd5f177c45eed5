"""An input URL that answers with a listing of parts (an HLS playlist, a DASH manifest): fetch
what it lists and leave one file in the input's place.

Every playlist, manifest and part is fetched as any input is (the caller's ``download``:
address checks, redirects, the size cap and deadlines counted over the whole input), one
after the other, and appended to the stream it belongs to; a video with audio delivered apart
is then joined with it into one Matroska file (:mod:`~carn_stream.pipeline.media.listing`).
"""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from carn_stream.pipeline.media.dash_input import dash_listing, is_manifest
from carn_stream.pipeline.media.hls_input import hls_listing, is_playlist
from carn_stream.pipeline.media.listing import (
    MAX_LISTING_BYTES,
    AudioFile,
    Listing,
    ListingError,
    join_renditions,
)

#: Fetches a URL into a file; returns the URL it came from in the end (after redirects).
Download = Callable[[str, Path], str]
#: How much of a download is read to tell a listing (a manifest may start with comments).
HEAD_BYTES = 1024


def listing_kind(head: bytes) -> str | None:
    """``"HLS"`` or ``"DASH"`` for a file starting with ``head``; None for anything else."""
    if is_playlist(head):
        return "HLS"
    return "DASH" if is_manifest(head) else None


def fetch_listed(listing: Path, url: str, download: Download, dest: Path) -> None:
    """The stream the ``listing`` (fetched from ``url``) names, in ``dest`` once whole: see
    :func:`~carn_stream.pipeline.media.hls_input.hls_listing` and
    :func:`~carn_stream.pipeline.media.dash_input.dash_listing` for what is chosen. Raises
    :class:`ListingError` for what cannot be joined."""
    work = dest.with_name(f".{dest.name}.listed")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        with open(listing, "rb") as file:
            kind = listing_kind(file.read(HEAD_BYTES))
        text = _text(listing)
        if kind == "HLS":

            def read(uri: str) -> tuple[str, str]:
                final = download(uri, work / "playlist")
                return _text(work / "playlist"), final

            listed = hls_listing(text, url, read)
        else:
            listed = dash_listing(text, url)
        _join(listed, work, download, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _join(listed: Listing, work: Path, download: Download, dest: Path) -> None:
    audio = []
    for number, stream in enumerate(listed.audio):
        path = work / f"audio{number}"
        _concatenate(stream.parts, path, work, download)
        audio.append(AudioFile(path, stream.name, stream.language))
    video = work / "video"
    _concatenate(listed.video, video, work, download)
    if audio:
        joined = work / "joined"
        join_renditions(video, audio, joined)
        joined.replace(dest)
    else:
        video.replace(dest)


def _text(path: Path) -> str:
    if path.stat().st_size > MAX_LISTING_BYTES:
        raise ListingError(f"the playlist or manifest is over the limit of {MAX_LISTING_BYTES} "
                           "bytes")  # fmt: skip
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError:
        raise ListingError("the playlist or manifest is not UTF-8 text") from None


def _concatenate(parts: tuple[str, ...], target: Path, work: Path, download: Download) -> None:
    """The parts' bytes, one after the other, in ``target``."""
    part_file = work / "part"
    with open(target, "wb") as out:
        for part in parts:
            scheme = urllib.parse.urlsplit(part).scheme
            if scheme not in ("http", "https"):
                raise ListingError(f"it names a {scheme or 'schemeless'}: URI; only http(s) "
                                   "parts are fetched")  # fmt: skip
            download(part, part_file)
            with open(part_file, "rb") as data:
                shutil.copyfileobj(data, out, 1 << 20)
            part_file.unlink()
