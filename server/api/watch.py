"""Watching a job: a playable snapshot of its growing HLS output, and its frames to compare
(CARN-M against bicubic, as PNG)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel

from carn_stream.pipeline.media.hls import PLAYLIST_NAME, PLAYLIST_TYPE
from carn_stream.server.deps import Signer, get_runner, get_store
from carn_stream.server.jobs.compare import compared_frames, comparison_png
from carn_stream.server.jobs.media import HLS, JOB_ID, JobMedia
from carn_stream.server.jobs.runner import JobRunner
from carn_stream.server.jobs.store import ENDED_WITHOUT_OUTPUT, JobStore

router = APIRouter(prefix="/jobs", tags=["jobs"])


class Comparison(BaseModel):
    frames: list[int]  #: frame indices with a CARN-M and a bicubic picture
    links: dict[str, str]  #: frame index -> URL of its PNG (add ``?kind=bicubic``)


def _media(job_id: str, store: JobStore, runner: JobRunner) -> JobMedia:
    job = store.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    if job.state in ENDED_WITHOUT_OUTPUT:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} {job.state}: no output")
    return runner.media(job)


@router.get("/{job_id}/compare", response_model=Comparison)
def list_comparison(
    job_id: str,
    store: Annotated[JobStore, Depends(get_store)],
    runner: Annotated[JobRunner, Depends(get_runner)],
    sign: Signer,
) -> Comparison:
    """Frames of a finished job kept for comparison (none before it has succeeded); links
    signed like the job's other media when the server has a token."""
    media = _media(job_id, store, runner)
    frames = compared_frames(media.folder)
    return Comparison(frames=frames, links={str(n): sign(media.compare_url(n)) for n in frames})


@router.get("/{job_id}/compare/{index}.png", response_class=FileResponse)
def comparison_frame(
    job_id: str,
    index: int,
    store: Annotated[JobStore, Depends(get_store)],
    runner: Annotated[JobRunner, Depends(get_runner)],
    kind: Annotated[Literal["carn", "bicubic"], Query()] = "carn",
) -> FileResponse:
    """Frame ``index`` as CARN-M made it, or plain bicubic of the same source frame."""
    path = comparison_png(_media(job_id, store, runner).folder, index, kind)
    if path is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"job {job_id} kept no frame {index} for comparison"
        )
    return FileResponse(path, media_type="image/png")


@router.get("/{job_id}/preview.m3u8")
def preview_playlist(
    job_id: str,
    store: Annotated[JobStore, Depends(get_store)],
    runner: Annotated[JobRunner, Depends(get_runner)],
) -> Response:
    """The segments written so far as a finished (VOD) playlist: a player starts on the first
    segment instead of waiting for three of a growing one; the page reloads it for more."""
    media = _media(job_id, store, runner)
    path = media.hls_file(PLAYLIST_NAME)
    try:
        if path is None:
            raise FileNotFoundError(f"job {job_id} is a {media.fmt.name} job")
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no segment yet") from None
    out = []
    for line in lines:
        if line.startswith("#EXT-X-PLAYLIST-TYPE") or line == "#EXT-X-ENDLIST":
            continue
        if line.startswith('#EXT-X-MAP:URI="'):  # a fragmented-MP4 folder's init.mp4
            line = line.replace('URI="', f'URI="{HLS}/', 1)
        out.append(line if not line or line.startswith("#") else f"{HLS}/{line}")
        if line.startswith("#EXT-X-VERSION"):
            out.append("#EXT-X-PLAYLIST-TYPE:VOD")
    out.append("#EXT-X-ENDLIST")
    return Response(
        "\n".join(out) + "\n",
        media_type=PLAYLIST_TYPE,
        headers={"Cache-Control": "no-store"},
    )
