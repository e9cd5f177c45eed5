"""Signed media links: HLS and MP4 URLs a native ``<video>`` can open without a header.

A link is ``/media/<expiry>/<signature><path>``; the signature is an HMAC-SHA256, keyed with the API
token, of the link's scope and expiry. A scope is what one link covers, given by the owners of the
media as patterns (a job's media: its HLS folder, preview playlist, output file and comparison
frames; a video's playlists and segments), so the playlists and segments a playlist names relatively
carry the same signature in their path. The signature sits in the path, not in a query string,
because players resolve segment URIs against the playlist's path and drop its query."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Sequence

PREFIX = "/media/"
#: Patterns of media paths whose first group is the scope a signature covers.
Scopes = Sequence[re.Pattern[str]]
_LINK_RE = re.compile(r"^/media/(\d{1,12})/([A-Za-z0-9_-]{43})(/.*)$")


def media_scope(path: str, scopes: Scopes) -> str | None:
    """What a signature for ``path`` covers; None for paths that are not media."""
    for pattern in scopes:
        match = pattern.match(path)
        if match is not None:
            return match[1]
    return None


def _signature(token: str, scope: str, expires: int) -> str:
    digest = hmac.new(token.encode(), f"{scope}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(path: str, token: str, lifetime: float, scopes: Scopes, now: float | None = None) -> str:
    """The signed link to the media file at ``path``."""
    scope = media_scope(path, scopes)
    if scope is None:
        raise ValueError(f"{path} is not a media path")
    expires = int((time.time() if now is None else now) + lifetime)
    return f"{PREFIX}{expires}/{_signature(token, scope, expires)}{path}"


def verify(link: str, token: str, scopes: Scopes, now: float | None = None) -> str | None:
    """The media path a signed link opens, or None when it is malformed, forged or expired."""
    match = _LINK_RE.match(link)
    if match is None:
        return None
    expires, signature, path = int(match[1]), match[2], match[3]
    scope = media_scope(path, scopes)
    if scope is None or expires < (time.time() if now is None else now):
        return None
    if not hmac.compare_digest(signature, _signature(token, scope, expires)):
        return None
    return path


def without_signature(path: str) -> str:
    """A path as logs may show it: a signed link's signature (a credential for the link's
    life) cut out, ``/media/…/jobs/<id>/hls/index.m3u8``."""
    match = _LINK_RE.match(path)
    return f"{PREFIX}…{match[3]}" if match else path


class LogFilter(logging.Filter):
    """Keeps signatures out of uvicorn's access log (its record's third argument is the
    path with its query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], without_signature(args[2]), *args[3:])
        return True

