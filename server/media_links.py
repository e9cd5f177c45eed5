"""Signed media links: HLS and MP4 URLs a native ``<video>`` can open without a header.

A link is ``/media/<expiry>/<signature><path>``; the signature is an HMAC-SHA256, keyed with
the API token, of the link's scope and expiry. The scope is a job's media (its HLS folder, its
preview playlist, its output file and its comparison frames) or a video's playlists and
segments, so the playlists and segments a playlist names relatively carry the same signature
in their path. The signature sits in the path, not in a query
string, because players resolve segment URIs against the playlist's path and drop its query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

PREFIX = "/media/"
_MEDIA_RE = re.compile(
    r"^(/jobs/[0-9a-f]{32}/)(hls/[^/]+|output\.[a-z0-9]{2,4}|preview\.m3u8|compare/\d{1,9}\.png)$"
    r"|^(/videos/[0-9a-f]{32}/)(master\.m3u8|[a-z0-9]{1,12}/[^/]+)$"
)
_LINK_RE = re.compile(r"^/media/(\d{1,12})/([A-Za-z0-9_-]{43})(/.*)$")


def media_scope(path: str) -> str | None:
    """What a signature for ``path`` covers; None for paths that are not media."""
    match = _MEDIA_RE.match(path)
    if match is None:
        return None
    return match[1] or match[3]


def _signature(token: str, scope: str, expires: int) -> str:
    digest = hmac.new(token.encode(), f"{scope}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(path: str, token: str, lifetime: float, now: float | None = None) -> str:
    """The signed link to the media file at ``path``."""
    scope = media_scope(path)
    if scope is None:
        raise ValueError(f"{path} is not a media path")
    expires = int((time.time() if now is None else now) + lifetime)
    return f"{PREFIX}{expires}/{_signature(token, scope, expires)}{path}"


def verify(link: str, token: str, now: float | None = None) -> str | None:
    """The media path a signed link opens, or None when it is malformed, forged or expired."""
    match = _LINK_RE.match(link)
    if match is None:
        return None
    expires, signature, path = int(match[1]), match[2], match[3]
    scope = media_scope(path)
    if scope is None or expires < (time.time() if now is None else now):
        return None
    if not hmac.compare_digest(signature, _signature(token, scope, expires)):
        return None
    return path
