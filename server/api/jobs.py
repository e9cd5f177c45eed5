"""``/jobs``: submit, inspect, list, cancel, and fetch outputs (HLS while running, files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from carn_stream.model import WeightsError
from carn_stream.model.named_weights import weights_file
from carn_stream.pipeline.errors import OutputError
from carn_stream.pipeline.media.codecs import check_codec
from carn_stream.pipeline.media.hls import (
    INIT_NAME,
    MASTER_NAME,
    PLAYLIST_NAME,
    PLAYLIST_TYPE,
    audio_playlist,
    segment_media_type,
    with_default_audio,
)
from carn_stream.server.admission import check_admission, queue_full
from carn_stream.server.blocking import PoolBusy
from carn_stream.server.deps import (
    AudioChoice,
    Limit,
    Offset,
    Signer,
    get_runner,
    get_store,
    require_token,
)
from carn_stream.server.inputs.exposure import public_url
from carn_stream.server.inputs.fetch import FetchError, validate_url
from carn_stream.server.jobs.media import JOB_ID, JobMedia
from carn_stream.server.jobs.params import JobParams
from carn_stream.server.jobs.runner import JobRunner
from carn_stream.server.jobs.store import (
    ENDED_WITHOUT_OUTPUT,
    SEGMENT_STATES,
    STATES,
    Job,
    JobStore,
    QueueFull,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])



class JobCreate(JobParams):
    """A request to upscale the video at ``url``."""

    url: str = Field(min_length=1, max_length=4096, examples=["https://example.com/clip.mp4"])


class JobProgress(BaseModel):
    frames_done: int
    frames_total: int
    fps: float = Field(description="frames per second over the last few seconds")
    eta_seconds: float | None


class SegmentCounts(BaseModel):
    total: int
    done: int
    running: int
    failed: int


class SegmentOut(BaseModel):
    index: int
    state: Literal[SEGMENT_STATES]  # type: ignore[valid-type]
    start: float = Field(description="seconds from the start of the video")
    duration: float
    frames: int
    attempts: int
    seconds: float | None = Field(description="time the segment took to make")
    bytes: int | None
    node: str | None = Field(description="where it was made")
    error: str | None


class JobOut(JobParams):
    """A job: its parameters, state, progress and links."""

    model_config = ConfigDict(extra="forbid")

    id: str
    state: Literal[STATES]  # type: ignore[valid-type]
    url: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    progress: JobProgress
    segments: SegmentCounts
    error: str | None
    cancelling: bool = Field(description="cancelled and still stopping: it ends cancelled")
    links: dict[str, str]

    @classmethod
    def of(
        cls, job: Job, counts: dict[str, int] | None = None, sign: Callable[[str], str] = str,
        cancelling: bool = False,
    ) -> JobOut:  # fmt: skip
        """The job as the API shows it: its URL without secrets, media links signed by
        ``sign`` (when the server has a token)."""
        counts = counts or dict.fromkeys(SEGMENT_STATES, 0)
        media = JobMedia.of(job)
        links = {"self": media.url, "segments": f"{media.url}/segments"}
        if job.state not in ENDED_WITHOUT_OUTPUT:  # HLS: playable while it runs
            urls = media.media_urls(succeeded=job.state == "succeeded")
            links.update({name: sign(url) for name, url in urls.items()})
        return cls(
            **job.params.model_dump(),
            id=job.id,
            state=job.state,
            url=public_url(job.url),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            progress=JobProgress(
                frames_done=job.frames_done,
                frames_total=job.frames_total,
                fps=round(job.fps, 3),
                eta_seconds=job.eta_seconds,
            ),
            segments=SegmentCounts(
                total=sum(counts.values()),
                done=counts["done"],
                running=counts["running"],
                failed=counts["failed"],
            ),
            error=job.error or job.damage,
            cancelling=cancelling,
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
    job = store.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    return job


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=JobOut,
    dependencies=[Depends(require_token)],
)  # fmt: skip
async def create_job(body: JobCreate, store: Store, runner: Runner, sign: Signer) -> JobOut:
    """Queue a job. The URL's scheme and host addresses are checked now; the rest when it runs."""
    check_admission(runner.settings, store)
    try:
        # DNS: on the address checks' own pool, never behind downloads
        await runner.checks(validate_url, body.url, runner.intake.policy)
    except FetchError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except PoolBusy as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "5"}
        ) from exc
    if body.weights is not None:
        try:
            weights_file(body.weights, runner.settings.models_dir, runner.settings.data_dir)
        except WeightsError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    params = JobParams(**body.model_dump(exclude={"url"}))
    if params.deinterlace is None:  # fixed now: a restart with another setting keeps it
        params = params.model_copy(update={"deinterlace": runner.intake.deinterlace})
    try:
        check_codec(params.codec, params.preset)
    except OutputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    try:  # the queue again: other submissions were checked while this one awaited
        job = store.create(body.url, params, runner.settings.max_queued_jobs)
    except QueueFull as exc:
        raise queue_full(exc.args[0]) from exc
    runner.wake()
    return JobOut.of(job, sign=sign)


@router.get("", response_model=JobPage)
def list_jobs(
    store: Store,
    runner: Runner,
    sign: Signer,
    offset: Offset = 0,
    limit: Limit = 50,
    state: Literal[STATES] | None = None,  # type: ignore[valid-type]
) -> JobPage:
    """Jobs, newest first."""
    jobs, total = store.list(offset, limit, state)
    counts = store.segment_counts([j.id for j in jobs])
    items = [JobOut.of(j, counts[j.id], sign, runner.cancelling(j.id)) for j in jobs]
    return JobPage(items=items, total=total, offset=offset, limit=limit)


def _job_out(store: JobStore, runner: JobRunner, job: Job, sign: Callable[[str], str]) -> JobOut:
    counts = store.segment_counts([job.id])[job.id]
    return JobOut.of(job, counts, sign, runner.cancelling(job.id))


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, store: Store, runner: Runner, sign: Signer) -> JobOut:
    return _job_out(store, runner, _job_or_404(store, job_id), sign)


@router.get("/{job_id}/segments", response_model=list[SegmentOut])
def get_segments(job_id: str, store: Store) -> list[SegmentOut]:
    """The job's segments in order: state, attempts, time taken and where each was made."""
    job = _job_or_404(store, job_id)
    return [SegmentOut(**vars(s)) for s in store.segments(job.id)]


@router.delete(
    "/{job_id}", response_model=JobOut, dependencies=[Depends(require_token)],
    responses={status.HTTP_202_ACCEPTED: {"model": JobOut, "description": "still stopping"}},
)  # fmt: skip
async def cancel_job(
    job_id: str, store: Store, runner: Runner, sign: Signer, response: Response
) -> JobOut:
    """Cancel a queued or running job (its outputs are removed): 200 once it has ended
    ``cancelled``; 202 while it is still stopping after a few seconds (``cancelling``: its files
    going). 409 if it already ended."""
    job = _job_or_404(store, job_id)
    if not await runner.cancel(job.id):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {job.state}")
    out = _job_out(store, runner, _job_or_404(store, job_id), sign)
    if out.state in ("queued", "running"):
        response.status_code = status.HTTP_202_ACCEPTED
    return out


@router.get("/{job_id}/hls/{name}", response_class=FileResponse)
def hls_file(
    job_id: str, name: str, store: Store, runner: Runner, audio: AudioChoice = None
) -> Response:
    """The playlist and its segments (MPEG-TS; HEVC and ``fmp4`` jobs: fragmented MP4, after
    ``init.mp4``), available while the job runs; once it has succeeded, its master playlist,
    the input's audio streams as renditions (``audio_N.m3u8`` and its segments, where it has
    several) and its text subtitles (``subtitles_N.m3u8``, ``.vtt``). ``audio`` (the master
    playlist): the audio rendition players start with."""
    job = _job_or_404(store, job_id)
    if job.state in ENDED_WITHOUT_OUTPUT:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} {job.state}: no output")
    media = runner.media(job)
    path = media.hls_file(name)
    if path is None:
        reason = _not_this_output(media, f"no HLS file {name!r}")
        raise HTTPException(status.HTTP_404_NOT_FOUND, reason)
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name} is not available (yet)")
    if name.endswith(".vtt"):
        return FileResponse(path, media_type="text/vtt; charset=utf-8")
    if name == MASTER_NAME and audio is not None:
        return _master_with_audio(path, audio)
    if name != PLAYLIST_NAME and name.endswith(".m3u8"):  # written once, when the job ends
        return FileResponse(path, media_type=PLAYLIST_TYPE)
    if name == PLAYLIST_NAME:
        # Read whole at once: the running job replaces it (by rename) as segments finish, and a
        # file response sent the length of one version and the bytes of the next (a client
        # read 0 of 128 bytes).
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name} is not available") from None
        return Response(
            text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": "no-cache"}
        )
    if name.endswith(INIT_NAME):  # (the folder's, or an audio rendition's)
        return FileResponse(path, media_type="video/mp4")
    return FileResponse(path, media_type=segment_media_type(name.endswith(".m4s")))


def _master_with_audio(path: Path, number: int) -> Response:
    """A finished job's master playlist with audio rendition ``number`` as the default."""
    try:
        text = with_default_audio(path.read_text(), audio_playlist(number))
    except LookupError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"the job has no audio rendition {number}") from None  # fmt: skip
    return Response(text, media_type=PLAYLIST_TYPE)


@router.get("/{job_id}/output.{ext}", response_class=FileResponse)
@router.head("/{job_id}/output.{ext}", response_class=FileResponse, include_in_schema=False)
def output_file(job_id: str, ext: str, store: Store, runner: Runner) -> FileResponse:
    """The finished file of a job's own format (output.mp4, output.mkv, output.mov); HTTP Range
    requests and HEAD supported."""
    job = _job_or_404(store, job_id)
    media = runner.media(job)
    if media.fmt.is_folder or media.fmt.suffix != f".{ext}":
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, _not_this_output(media, f"job {job_id} has no .{ext} output")
        )
    if job.state != "succeeded" or not media.output.is_file():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"job {job_id} is {job.state}: its output is not ready"
        )
    fmt = media.fmt
    return FileResponse(media.output, media_type=fmt.media_type, filename=f"{job.id}{fmt.suffix}")


def _not_this_output(media: JobMedia, what: str) -> str:
    """A 404's message for a link of another format: the job's own format and its link."""
    own = media.playlist_url if media.fmt.is_folder else media.output_url
    return f"{what}: it is a {media.fmt.name} job; its output is {own}"
