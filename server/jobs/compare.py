"""Frames to judge a finished job by: CARN-M against plain bicubic on the same frame.

The job's input is deleted when the job ends, so a few source frames are kept then (spread
over the video, at most :data:`SAMPLES`, as PNG), with the output's frames at the same
indices. The bicubic counterpart is made from the kept source frame on first request (FFmpeg's
bicubic scaler, to the output's size) and cached beside it. Both PNGs come from the same
RGB conversion, so only the upscaling differs.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np

from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.frames import upright
from carn_stream.pipeline.media.decode import main_video, open_input
from carn_stream.pipeline.media.deinterlace import progressive
from carn_stream.pipeline.media.encode import SEGMENT_FORMAT
from carn_stream.pipeline.media.hls import INIT_NAME, PLAYLIST_NAME
from carn_stream.pipeline.media.images import read_rgb, write_png
from carn_stream.server.jobs.media import COMPARE_NAME

SAMPLES = 4
KINDS = ("carn", "bicubic")
log = logging.getLogger(__name__)


def sample_indices(total: int, count: int = SAMPLES) -> list[int]:
    """``count`` frame indices spread over ``total`` frames, away from the very ends."""
    if total <= 0:
        return []
    count = min(count, total)
    return sorted({int((k + 0.5) * total / count) for k in range(count)})


def _video_files(output: Path) -> list[Path]:
    """An MP4, or an HLS folder's segments in playlist order."""
    if not output.is_dir():
        return [output]
    lines = (output / PLAYLIST_NAME).read_text().splitlines()
    return [output / line for line in lines if line and not line.startswith("#")]


def _open_output(path: Path):
    """One of the job's own files: an MPEG-TS segment is opened as such (a short one is too
    small to be recognised by probing), a fragmented-MP4 one after its folder's init.mp4."""
    if path.suffix == ".ts":
        return av.open(str(path), format=SEGMENT_FORMAT)
    if path.suffix == ".m4s":
        return av.open(io.BytesIO((path.parent / INIT_NAME).read_bytes() + path.read_bytes()))
    return av.open(str(path))


def _frames_at(
    files: list[Path], wanted: set[int], opener=open_input, deinterlace: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """Frames at the ``wanted`` indices of ``files`` played one after the other (by default
    a user's files, opened under the allow-lists); with ``deinterlace``, made progressive as
    the job made them before upscaling."""
    index = 0
    for path in files:
        with opener(path) as container:
            frames: Iterable[tuple[int | None, av.VideoFrame]] = (
                (frame.pts, frame) for frame in container.decode(main_video(container))
            )
            if deinterlace:
                frames = progressive(frames)
            for _, frame in frames:
                if index in wanted:  # as players show it: turned by its display rotation
                    yield index, upright(frame.to_ndarray(format="rgb24"), int(frame.rotation))
                index += 1
                if index > max(wanted):
                    return


def save_comparison(
    source: Path, output: Path, job_folder: Path, total: int, deinterlace: bool = True
) -> list[int]:
    """Keep source and output frames at a few indices of a finished job; returns them. The
    source's frames are made progressive where the job's were (``deinterlace``), so that only
    the upscaling differs.

    A failure here costs the comparison only, never the finished job: it is logged.
    """
    wanted = set(sample_indices(total))
    if not wanted:
        return []
    folder = job_folder / COMPARE_NAME
    try:
        folder.mkdir(exist_ok=True)
        for index, rgb in _frames_at([source], wanted, deinterlace=deinterlace):
            write_png(folder / f"{index}-source.png", rgb)
        for index, rgb in _frames_at(_video_files(output), wanted, _open_output):
            write_png(folder / f"{index}-carn.png", rgb)
    except (av.FFmpegError, OSError, ValueError, PipelineError) as exc:
        log.warning("keeping comparison frames of %s failed: %s", job_folder.name, exc)
    return compared_frames(job_folder)


def compared_frames(job_folder: Path) -> list[int]:
    """Indices with both a source and an output frame kept."""
    folder = job_folder / COMPARE_NAME
    if not folder.is_dir():
        return []
    found = [int(p.name.split("-")[0]) for p in folder.glob("*-carn.png")]
    return sorted(n for n in found if (folder / f"{n}-source.png").is_file())


def comparison_png(job_folder: Path, index: int, kind: str) -> Path | None:
    """The PNG of frame ``index`` as CARN-M made it, or its bicubic counterpart (made once)."""
    if kind not in KINDS or index not in compared_frames(job_folder):
        return None
    folder = job_folder / COMPARE_NAME
    carn = folder / f"{index}-carn.png"
    if kind == "carn":
        return carn
    bicubic = folder / f"{index}-bicubic.png"
    if not bicubic.is_file():
        height, width = read_rgb(carn).shape[:2]
        frame = av.VideoFrame.from_ndarray(read_rgb(folder / f"{index}-source.png"), "rgb24")
        big = frame.reformat(width=width, height=height, interpolation="BICUBIC")
        write_png(bicubic, big.to_ndarray(format="rgb24"))
    return bicubic
