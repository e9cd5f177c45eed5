"""``/videos``: ingest a video once, play it as HLS with upscaled renditions made on request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from carn_stream.model.scales import SUPPORTED_SCALES
from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.media.hls import PLAYLIST_NAME, SEGMENT_NAME_RE
from carn_stream.server.admission import check_disk
from carn_stream.server.deps import Limit, Offset, Signer, require_token
from carn_stream.server.inputs.exposure import public_url
from carn_stream.server.inputs.fetch import FetchError
from carn_stream.server.jobs.params import Scale
from carn_stream.server.speed import SpeedBook
from carn_stream.server.vod.manager import NotReady, SegmentError, VideoGone, VideoManager
from carn_stream.server.vod.media import (
    MASTER_NAME,
    VIDEO_ID,
    master_url,
    playlist_url,
    video_url,
)
from carn_stream.server.vod.store import TUNE_STATES, Rendition, Video

router = APIRouter(prefix="/videos", tags=["videos"])

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


class VideoCreate(BaseModel):
    """A video to serve: its upscaled renditions are made when players ask for them."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=4096, examples=["https://example.com/clip.mp4"])
    scales: list[Scale] = Field(
        [2], min_length=1, max_length=len(SUPPORTED_SCALES), description="upscaled renditions"
    )
    tune: bool = Field(
        False,
        description="also fine-tune a model on this video's own frames in the background "
        "(`carn-stream tune`, every requested scale) and serve its upscaled segments with it "
        "once done; `tune` in the response follows it",
    )

    @field_validator("scales")
    @classmethod
    def _distinct(cls, scales: list[int]) -> list[int]:
        return sorted(set(scales))


class SegmentInfo(BaseModel):
    index: int
    start: float = Field(description="seconds from the start of the video")
    duration: float
    frames: int


class PaceOut(BaseModel):
    """Whether this machine makes a rendition as fast as it plays."""

    fps: float | None = Field(description="frames per second the model makes at the video's size")
    source_fps: float | None = Field(description="the video's frame rate")
    keeps_up: bool | None = Field(description="fps >= source_fps (null: not measured yet)")
    measured: bool = Field(description="measured at this size (else estimated from another)")
    basis: str
    text: str


class RenditionOut(Rendition):
    playlist: str
    segments_cached: int
    bytes_cached: int
    cached: list[int] = Field(description="indexes of the segments in the cache")
    pace: PaceOut | None = Field(
        None, description="upscaled renditions: this machine's speed at the video's size "
        "against its frame rate (the original is copied, not upscaled)",
    )  # fmt: skip


class TuneOut(BaseModel):
    state: str = Field(json_schema_extra={"enum": list(TUNE_STATES)})
    weights: str | None
    psnr_generic: float | None = Field(
        description="Y-PSNR (dB) of the service's model on held-out frames of the video"
    )
    psnr_tuned: float | None = Field(description="Y-PSNR (dB) of the video's own model on them")
    error: str | None


class VideoOut(BaseModel):
    id: str
    url: str
    created_at: float
    duration: float = Field(description="seconds")
    frames: int
    width: int
    height: int
    frame_rate: float | None
    segments: list[SegmentInfo]
    renditions: list[RenditionOut]
    tune: TuneOut
    links: dict[str, str]

    @classmethod
    def of(
        cls, video: Video, cached: dict[str, dict[int, int]], sign: Callable[[str], str] = str,
        speed: SpeedBook | None = None,
    ) -> VideoOut:  # fmt: skip
        """The video as the API shows it: its URL without secrets, playlist links signed by
        ``sign`` (when the server has a token), each upscaled rendition's pace from ``speed``."""
        plan = video.plan
        base = video_url(video.id)
        rate = float(plan.frame_rate) if plan.frame_rate else None
        renditions = []
        for r in video.renditions:
            made = cached.get(r.name, {})
            pace = None
            if speed is not None and r.scale > 1:
                found = speed.pace(r.scale, plan.width, plan.height, rate)
                pace = PaceOut(**{k: v for k, v in found.as_dict().items()
                                  if k in PaceOut.model_fields})  # fmt: skip
            renditions.append(RenditionOut(
                **r.model_dump(), playlist=sign(playlist_url(video.id, r.name)),
                segments_cached=len(made), bytes_cached=sum(made.values()), cached=sorted(made),
                pace=pace,
            ))  # fmt: skip
        return cls(
            id=video.id,
            url=public_url(video.url),
            created_at=video.created_at,
            duration=plan.duration,
            frames=plan.frames,
            width=plan.width,
            height=plan.height,
            frame_rate=float(plan.frame_rate) if plan.frame_rate else None,
            segments=[
                SegmentInfo(index=s.index, start=s.start, duration=s.duration, frames=s.frames)
                for s in plan.segments
            ],
            renditions=renditions,
            tune=TuneOut(
                state=video.tune_state,
                weights=video.weights,
                psnr_generic=video.psnr_generic,
                psnr_tuned=video.psnr_tuned,
                error=video.tune_error,
            ),
            links={"self": base, "master": sign(master_url(video.id))},
        )


class VideoPage(BaseModel):
    items: list[VideoOut]
    total: int
    offset: int
    limit: int


def get_videos(request: Request) -> VideoManager:
    return request.app.state.videos


Videos = Annotated[VideoManager, Depends(get_videos)]


def _video_or_404(videos: VideoManager, video_id: str) -> Video:
    video = videos.get(video_id) if VIDEO_ID.fullmatch(video_id) else None
    if video is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no video {video_id!r}")
    return video


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=VideoOut,
    dependencies=[Depends(require_token)],
)  # fmt: skip
async def create_video(body: VideoCreate, videos: Videos, sign: Signer) -> VideoOut:
    """Fetch and plan a video (no upscaling yet); it can be played as soon as this returns."""
    check_disk(videos.settings)
    try:
        video = await videos.ingest(body.url, body.scales, body.tune)
    except NotReady as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except (FetchError, PipelineError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return VideoOut.of(video, {}, sign, videos.metrics.speed)


@router.get("", response_model=VideoPage)
def list_videos(
    videos: Videos,
    sign: Signer,
    offset: Offset = 0,
    limit: Limit = 50,
) -> VideoPage:
    """Videos, newest first."""
    items, total = videos.store.list(offset, limit)
    out = [VideoOut.of(v, videos.cached(v.id), sign, videos.metrics.speed) for v in items]
    return VideoPage(items=out, total=total, offset=offset, limit=limit)


@router.get("/{video_id}", response_model=VideoOut)
def get_video(video_id: str, videos: Videos, sign: Signer) -> VideoOut:
    """Duration, segments, renditions with what of each is cached, and the fine-tune's state."""
    video = _video_or_404(videos, video_id)
    return VideoOut.of(video, videos.cached(video.id), sign, videos.metrics.speed)


@router.delete(
    "/{video_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Depends(require_token)]
)
async def delete_video(video_id: str, videos: Videos) -> Response:
    """Remove the video, its source copy and its cached segments."""
    video = _video_or_404(videos, video_id)
    await videos.delete(video.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(f"/{{video_id}}/{MASTER_NAME}", response_class=Response)
def master_playlist(video_id: str, videos: Videos) -> Response:
    """The master playlist: the original rendition first, then each upscaled one."""
    video = _video_or_404(videos, video_id)
    return Response(videos.master_playlist(video), media_type=PLAYLIST_TYPE)


@router.get(f"/{{video_id}}/{{rendition}}/{PLAYLIST_NAME}", response_class=Response)
def media_playlist(video_id: str, rendition: str, videos: Videos) -> Response:
    """A rendition's complete VOD playlist (every segment, whether made yet or not)."""
    video = _video_or_404(videos, video_id)
    if video.rendition(rendition) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"video has no rendition {rendition!r}")
    return Response(videos.media_playlist(video), media_type=PLAYLIST_TYPE)


@router.get("/{video_id}/{rendition}/{name}", response_class=Response)
async def segment(video_id: str, rendition: str, name: str, videos: Videos) -> Response:
    """One MPEG-TS segment: from the cache, or made now."""
    video = _video_or_404(videos, video_id)
    index = int(name[8:-3]) if SEGMENT_NAME_RE.match(name) else -1
    if video.rendition(rendition) is None or not 0 <= index < len(video.plan.segments):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {rendition}/{name}")
    try:
        data = await videos.segment(video, rendition, index)
    except VideoGone as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except NotReady as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except SegmentError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
    return Response(data, media_type="video/mp2t")
