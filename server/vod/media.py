"""A video's media URLs, in one place: ``/videos/<id>/master.m3u8``, each rendition's
``/videos/<id>/<rendition>/index.m3u8`` and its segments; a signed link to one of them covers
them all (:data:`SCOPE`)."""

from __future__ import annotations

import re

from carn_stream.pipeline.media.hls import PLAYLIST_NAME

VIDEO_ID = re.compile(r"[0-9a-f]{32}")
MASTER_NAME = "master.m3u8"
REPORT_FOLDER, REPORT_PAGE = "report", "index.html"  #: a video stored small: its report's page
#: The media of one video a signed link covers: (scope, file).
SCOPE = re.compile(
    rf"^(/videos/{VIDEO_ID.pattern}/)({re.escape(MASTER_NAME)}|[a-z0-9]{{1,12}}/[^/]+)$"
)


def video_url(video_id: str) -> str:
    return f"/videos/{video_id}"


def master_url(video_id: str) -> str:
    return f"{video_url(video_id)}/{MASTER_NAME}"


def playlist_url(video_id: str, rendition: str) -> str:
    return f"{video_url(video_id)}/{rendition}/{PLAYLIST_NAME}"
