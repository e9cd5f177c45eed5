"""HLS output: FFmpeg's HLS muxer writing a playlist and MPEG-TS segments progressively.

Segments are written under a temporary name and renamed when complete, the playlist is an
EVENT playlist that grows while the job runs (a player can start early) and gains
``#EXT-X-ENDLIST`` when the encoder is closed.
"""

from __future__ import annotations

import re
from pathlib import Path

PLAYLIST_NAME = "index.m3u8"
SEGMENT_PATTERN = "segment_%05d.ts"
SEGMENT_NAME_RE = re.compile(r"^segment_\d{5,}\.ts$")


def hls_muxer_options(folder: Path, segment_seconds: float) -> dict[str, str]:
    if segment_seconds < 1:
        # HLS target durations are whole seconds and FFmpeg rounds them: shorter segments
        # would announce a target duration of 0, which players refuse for a growing playlist.
        raise ValueError("HLS segment duration must be at least 1 second")
    return {
        "hls_time": f"{segment_seconds:g}",
        "hls_list_size": "0",
        "hls_playlist_type": "event",
        "hls_segment_type": "mpegts",
        "hls_segment_filename": str(folder / SEGMENT_PATTERN),
        "hls_flags": "independent_segments+temp_file",
    }


def is_complete(folder: Path) -> bool:
    """True once the playlist is final (ends with ``#EXT-X-ENDLIST``)."""
    playlist = folder / PLAYLIST_NAME
    return playlist.is_file() and "#EXT-X-ENDLIST" in playlist.read_text()
