"""A job's media, in one place: where its files are on disk and the URLs that serve them.

A job's folder is ``<data>/jobs/<id>/``: the service's copy of the input, the work folder of a
file output's segments, the output (an HLS folder, or ``output.mp4``/``.mkv``/``.mov``) and the
frames kept for comparison. Its media are served under ``/jobs/<id>/``, and a signed link to
one of them covers them all (:data:`SCOPE`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carn_stream.pipeline.media.formats import FORMATS, OutputFormat
from carn_stream.pipeline.media.hls import (
    AUDIO_NAME_RE,
    INIT_NAME,
    MASTER_NAME,
    PLAYLIST_NAME,
    SUBTITLE_NAME_RE,
    either_segment_index,
)
from carn_stream.server.limits import INPUT_NAME

if TYPE_CHECKING:
    from carn_stream.server.jobs.store import Job

JOB_ID = re.compile(r"[0-9a-f]{32}")
HLS = FORMATS["hls"].output_name()  #: the HLS output's folder, and its URL path
PREVIEW_NAME = "preview.m3u8"
COMPARE_NAME = "compare"
WORK_NAME = "work"
#: The media of one job a signed link covers: (scope, file).
SCOPE = re.compile(
    rf"^(/jobs/{JOB_ID.pattern}/)"
    rf"({HLS}/[^/]+|output\.[a-z0-9]{{2,4}}|{re.escape(PREVIEW_NAME)}|{COMPARE_NAME}/\d{{1,9}}\.png)$"
)


@dataclass(frozen=True)
class JobMedia:
    """The URLs of job ``job_id``'s media (of format ``fmt``) and, given the jobs folder
    ``root``, where its files are."""

    job_id: str
    fmt: OutputFormat
    root: Path | None = None

    @classmethod
    def of(cls, job: Job, root: Path | None = None) -> JobMedia:
        """Job ``job``'s media: its format as it holds the job's codec (an HEVC job's HLS
        folder is of fragmented-MP4 segments)."""
        fmt = FORMATS[job.params.format].for_codec(job.params.codec, job.params.fmp4)
        return cls(job.id, fmt, root)

    # ------------------------------------------------------------------ on disk

    @property
    def folder(self) -> Path:
        if self.root is None:
            raise ValueError("this job's media were described without the jobs folder")
        return self.root / self.job_id

    @property
    def input(self) -> Path:
        """The service's copy of the input (never a local input file)."""
        return self.folder / INPUT_NAME

    @property
    def work(self) -> Path:
        return self.folder / WORK_NAME

    @property
    def output(self) -> Path:
        return self.folder / self.fmt.output_name()

    @property
    def compare(self) -> Path:
        return self.folder / COMPARE_NAME

    def hls_file(self, name: str) -> Path | None:
        """The HLS output's playlist, one of its segments, or (once finished) its master
        playlist and audio and subtitle renditions; None for any other name."""
        ours = name in (PLAYLIST_NAME, MASTER_NAME, INIT_NAME)
        ours = ours or any(r.fullmatch(name) for r in (SUBTITLE_NAME_RE, AUDIO_NAME_RE))
        # either kind: a job of a codec whose segments were MPEG-TS before an upgrade has them
        segment = either_segment_index(name)
        if not self.fmt.is_folder or (not ours and segment is None):
            return None
        return self.output / name

    # ------------------------------------------------------------------ URLs

    @property
    def url(self) -> str:
        return f"/jobs/{self.job_id}"

    @property
    def playlist_url(self) -> str:
        return f"{self.url}/{HLS}/{PLAYLIST_NAME}"

    @property
    def preview_url(self) -> str:
        return f"{self.url}/{PREVIEW_NAME}"

    @property
    def output_url(self) -> str:
        """A file output's URL (``/jobs/<id>/output.mp4``)."""
        return f"{self.url}/{self.fmt.output_name()}"

    def compare_url(self, index: int) -> str:
        return f"{self.url}/{COMPARE_NAME}/{index}.png"

    def media_urls(self, succeeded: bool) -> dict[str, str]:
        """The links a job offers: an HLS job's playlist and preview while it runs and after;
        a file job's output once it has succeeded (``mp4``: ``/jobs/<id>/output.mp4``)."""
        if self.fmt.is_folder:
            urls = {"playlist": self.playlist_url, "preview": self.preview_url}
            if succeeded:  # with the input's subtitles, where it has text ones
                urls["master"] = f"{self.url}/{HLS}/{MASTER_NAME}"
            return urls
        return {self.fmt.name: self.output_url} if succeeded else {}
