"""``/jobs``: submit, inspect, list, cancel, and fetch outputs (HLS while running, MP4)."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from carn_stream.pipeline.hls import PLAYLIST_NAME, SEGMENT_NAME_RE
from carn_stream.server.deps import get_runner, get_store, require_token
from carn_stream.server.fetch import FetchError, validate_url
from carn_stream.server.jobs import JobRunner
from carn_stream.server.store import STATES, Job, JobStore

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
    "veryslow", "p1", "p2", "p3", "p4", "p5", "p6", "p7",
)  # fmt: skip


class JobCreate(BaseModel):
    """A request to upscale the video at ``url``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=4096, examples=["https://example.com/clip.mp4"])
    scale: Literal[2, 3, 4] = 2
    output: Literal["hls", "mp4"] = "hls"
    codec: Literal["h264", "hevc", "h264_nvenc", "hevc_nvenc"] = "h264"
    crf: int = Field(18, ge=0, le=51)
    preset: Literal[PRESETS] | None = None  # type: ignore[valid-type]
    weights: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.pth$",
        description="a weights file in the service's models folder (CARN_STREAM_MODELS_DIR), "
        "e.g. a per-video model from `carn-stream tune`; default: the service's model",
        examples=["clip-x4.pth"],
    )


class JobProgress(BaseModel):
    frames_done: int
    frames_total: int
    fps: float
    eta_seconds: float | None


class JobOut(BaseModel):
    id: str
    state: Literal[STATES]  # type: ignore[valid-type]
    url: str
    scale: int
    output: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    weights: str | None
    progress: JobProgress
    error: str | None
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job) -> JobOut:
        links = {"self": f"/jobs/{job.id}"}
        if job.params["output"] == "hls":
            links["playlist"] = f"/jobs/{job.id}/hls/{PLAYLIST_NAME}"
        else:
            links["mp4"] = f"/jobs/{job.id}/output.mp4"
        return cls(
            id=job.id,
            state=job.state,
            url=job.url,
            scale=job.params["scale"],
            output=job.params["output"],
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            weights=job.params.get("weights"),
            progress=JobProgress(
                frames_done=job.frames_done,
                frames_total=job.frames_total,
                fps=round(job.fps, 3),
                eta_seconds=job.eta_seconds,
            ),
            error=job.error,
            links=links,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    offset: int
    limit: int


Store = Annotated[JobStore, Depends(get_store)]
Runner = Annotated[JobRunner, Depends(get_runner)]


def _job_or_404(store: JobStore, job_id: str) -> Job:
    job = store.get(job_id) if JOB_ID_RE.match(job_id) else None
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    return job


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=JobOut,
    dependencies=[Depends(require_token)],
)  # fmt: skip
async def create_job(body: JobCreate, request: Request, store: Store, runner: Runner) -> JobOut:
    """Queue a job. The URL's scheme and host addresses are checked now; the rest when it runs."""
    try:
        await asyncio.to_thread(validate_url, body.url, runner.policy)
    except FetchError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    if body.weights is not None:
        folder = request.app.state.settings.models_dir
        if folder is None or not (folder / body.weights).is_file():
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"no weights file {body.weights!r} in the service's models folder"
                + ("" if folder else " (CARN_STREAM_MODELS_DIR is not set)"),
            )
    params = body.model_dump(exclude={"url"})
    job = store.create(body.url, params)
    runner.wake()
    return JobOut.of(job)


@router.get("", response_model=JobPage)
def list_jobs(
    store: Store,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    state: Literal[STATES] | None = None,  # type: ignore[valid-type]
) -> JobPage:
    """Jobs, newest first."""
    jobs, total = store.list(offset, limit, state)
    return JobPage(items=[JobOut.of(j) for j in jobs], total=total, offset=offset, limit=limit)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, store: Store) -> JobOut:
    return JobOut.of(_job_or_404(store, job_id))


@router.delete("/{job_id}", response_model=JobOut, dependencies=[Depends(require_token)])
async def cancel_job(job_id: str, store: Store, runner: Runner) -> JobOut:
    """Cancel a queued or running job (its outputs are removed). 409 if it already ended."""
    job = _job_or_404(store, job_id)
    if not await runner.cancel(job.id):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {job.state}")
    return JobOut.of(_job_or_404(store, job_id))


@router.get("/{job_id}/hls/{name}", response_class=FileResponse)
def hls_file(job_id: str, name: str, store: Store, runner: Runner) -> FileResponse:
    """The playlist and its segments; available while the job runs."""
    job = _job_or_404(store, job_id)
    if name != PLAYLIST_NAME and not SEGMENT_NAME_RE.match(name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no HLS file {name!r}")
    path = runner.job_dir(job.id) / "hls" / name
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name} is not available (yet)")
    if name == PLAYLIST_NAME:
        return FileResponse(
            path, media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-cache"}
        )
    return FileResponse(path, media_type="video/mp2t")


@router.api_route("/{job_id}/output.mp4", methods=["GET", "HEAD"], response_class=FileResponse)
def mp4_file(job_id: str, store: Store, runner: Runner) -> FileResponse:
    """The finished MP4 (HTTP Range requests supported)."""
    job = _job_or_404(store, job_id)
    path = runner.job_dir(job.id) / "output.mp4"
    if job.state != "succeeded" or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no MP4 output")
    return FileResponse(path, media_type="video/mp4", filename=f"{job.id}.mp4")
