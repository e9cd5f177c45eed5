"""A video's media URLs, in one place: ``/videos/<id>/master.m3u8``, each rendition's
``/videos/<id>/<rendition>/index.m3u8`` and its segments (and those of its audio and subtitle
renditions); a signed link to one of them covers them all (:data:`SCOPE`)."""

from __future__ import annotations

import re
import secrets

from carn_stream.pipeline.media.hls import MASTER_NAME, PLAYLIST_NAME

VIDEO_ID = re.compile(r"[0-9a-f]{32}")
REPORT_FOLDER, REPORT_PAGE = "report", "index.html"  #: a video stored small: its report's page
#: The media of one video a signed link covers: (scope, file).
SCOPE = re.compile(
    rf"^(/videos/{VIDEO_ID.pattern}/)({re.escape(MASTER_NAME)}|[a-z0-9_]{{1,12}}/[^/]+)$"
)  # (a folder: a rendition, ``audio_<n>``, ``subtitles``)


#: A player's id in its playlists' URIs (``?viewer=``): its playhead's name (prefetch per player).
VIEWER = re.compile(r"[A-Za-z0-9_-]{1,32}")


def new_viewer() -> str:
    """A fresh player id, given out with each master playlist."""
    return secrets.token_hex(8)


def viewer_query(viewer: str) -> str:
    """The query string that carries ``viewer`` in a playlist's URIs ("" for none)."""
    return f"?viewer={viewer}" if viewer else ""


def video_url(video_id: str) -> str:
    return f"/videos/{video_id}"


def master_url(video_id: str) -> str:
    return f"{video_url(video_id)}/{MASTER_NAME}"


def playlist_url(video_id: str, rendition: str) -> str:
    return f"{video_url(video_id)}/{rendition}/{PLAYLIST_NAME}"
