"""``/videos``: ingest a video once, play it as HLS with upscaled renditions made on request."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Literal

import av
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from carn_stream.model.recipe import TITLE_STORE_CRF
from carn_stream.model.scales import SUPPORTED_SCALES
from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.media.hls import (
    INIT_NAME,
    PLAYLIST_NAME,
    PLAYLIST_TYPE,
    language_tag,
    segment_index,
    segment_media_type,
    with_default_audio,
)
from carn_stream.pipeline.media.hls_audio import AudioStream
from carn_stream.pipeline.media.webvtt import SubtitleTrack
from carn_stream.server.admission import check_disk
from carn_stream.server.blocking import PoolBusy
from carn_stream.server.deps import AudioChoice, Limit, Offset, Signer, require_token
from carn_stream.server.disconnect import ClientGone, unless_disconnected
from carn_stream.server.inputs.exposure import public_url
from carn_stream.server.inputs.fetch import DiskFull, FetchError
from carn_stream.server.jobs.params import Deinterlace, InputFps, Scale, raw_rate
from carn_stream.server.pages import STATIC_DIR
from carn_stream.server.speed import SpeedBook
from carn_stream.server.streaming import FileStream, Turns
from carn_stream.server.vod.audio import folder_name, media_uri
from carn_stream.server.vod.manager import (
    Busy,
    LowOnDisk,
    NotReady,
    SegmentError,
    SegmentRefused,
    VideoGone,
    VideoManager,
)
from carn_stream.server.vod.media import (
    MASTER_NAME,
    REPORT_FOLDER,
    REPORT_PAGE,
    VIDEO_ID,
    VIEWER,
    master_url,
    new_viewer,
    playlist_url,
    video_url,
)
from carn_stream.server.vod.store import TUNE_STATES, Rendition, Storage, Video
from carn_stream.server.vod.subtitles import SUBTITLES
from carn_stream.server.vod.title import StoreRequest

router = APIRouter(prefix="/videos", tags=["videos"])

#: Answered (to nobody) when the client hung up before its answer was ready.
CLIENT_GONE = 499
RETRY = {"Retry-After": "5"}


class StoreIn(BaseModel):
    """How a video is stored small."""

    model_config = ConfigDict(extra="forbid")

    scale: Scale = Field(description="the copy is 1/scale of the source's size")
    crf: int = Field(TITLE_STORE_CRF, ge=0, le=51, description="the copy's CRF")
    codec: Literal["h264", "hevc"] = Field("h264", description="the copy's codec")
    keep_source: StrictBool = Field(False, description="keep the source once the model is made")


class VideoCreate(BaseModel):
    """A video to serve: its upscaled renditions are made when players ask for them."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=4096, examples=["https://example.com/clip.mp4"])
    scales: list[Scale] = Field(
        [2], min_length=1, max_length=len(SUPPORTED_SCALES), description="upscaled renditions"
    )
    tune: StrictBool = Field(  # "yes" or 1 would begin a CPU-heavy fine-tune unasked
        False,
        description="also fine-tune a model on this video's own frames in the background "
        "(`carn-stream tune`, every requested scale) and serve its upscaled segments with it "
        "once done; `tune` in the response follows it",
    )

    store: StoreIn | None = Field(
        None,
        description="keep a low-resolution copy instead of the source (1/scale of its size, "
        "the codec and CRF given), train the title's own compression-aware model on it in the "
        "background and serve the source's size by upscaling the copy with that model; "
        "`GET /videos/{id}/report` then measures what that saves",
    )
    input_fps: InputFps
    deinterlace: Deinterlace

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
    progress: float | None = Field(
        None, description="the video's own model: fraction of its training done (stored small)"
    )


class SubtitleOut(BaseModel):
    name: str = Field(description="the stream's title, else its language's name (`Français`)")
    language: str | None = Field(description="its language tag (`en` for the input's `eng`)")
    default: bool
    forced: bool
    playlist: str = Field(description="its HLS subtitle playlist (the master playlist names it)")
    webvtt: str = Field(description="its WebVTT file, timed as the player's timeline (a "
                        "`<track>` element can show it)")


class AudioOut(BaseModel):
    number: int = Field(description="its place among the input's audio streams, from 0: "
                        "`audio_<number>`, and the master playlist's `?audio=`")
    name: str = Field(description="the stream's title, else its language's name "
                      "(`Français`), else `Audio N`")
    language: str | None = Field(description="its language tag (`en` for the input's `eng`)")
    channels: int | None = Field(description="as the segments carry it (made AAC: 1 or 2)")
    codec: str | None = Field(description="its RFC 6381 codec string as the segments carry it")
    default: bool = Field(description="the rendition players start with (the first stream)")
    playlist: str = Field(description="its HLS audio playlist (the master playlist names it)")


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
    store: Storage | None = Field(
        None, description="how the video is stored when stored small: bytes kept against the "
        "source's, and whether the source is still kept"
    )
    tune: TuneOut
    deinterlace: bool = Field(description="frames flagged interlaced are made progressive")
    subtitles: list[SubtitleOut] = Field(
        [], description="the input's text subtitle streams, as WebVTT subtitle renditions"
    )
    audio: list[AudioOut] = Field(
        [], description="the input's audio streams offered as audio renditions (none: the "
        "master playlist has no audio group, and players hear the segments' first stream)"
    )
    links: dict[str, str]

    @classmethod
    def of(
        cls, video: Video, cached: dict[str, dict[int, int]], sign: Callable[[str], str] = str,
        progress: float | None = None,
        speed: SpeedBook | None = None,
        deinterlace: bool = True,
        subtitles: Sequence[SubtitleTrack] = (),
        audio: Sequence[AudioStream] = (),
    ) -> VideoOut:
        """The video as the API shows it: its URL without secrets, playlist links signed by
        ``sign`` (when the server has a token), each upscaled rendition's pace from ``speed``;
        ``deinterlace``: whether its frames are made progressive (``VideoManager.deinterlaces``);
        ``subtitles``: its text subtitle tracks; ``audio``: its offered audio streams."""
        plan = video.plan
        base = video_url(video.id)
        links = {"self": base, "master": sign(master_url(video.id))}
        if video.storage is not None:  # the per-title report: JSON, and a page with its plot
            links["report"] = f"{base}/report"
            links["report_page"] = sign(f"{base}/{REPORT_FOLDER}/{REPORT_PAGE}")
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
                progress=progress,
            ),
            store=video.storage,
            deinterlace=deinterlace,
            subtitles=[
                SubtitleOut(
                    name=t.name, language=t.language and language_tag(t.language),
                    default=t.default, forced=t.forced,
                    playlist=sign(f"{base}/{SUBTITLES}/{t.number}.m3u8"),
                    webvtt=sign(f"{base}/{SUBTITLES}/{t.number}.vtt"),
                )
                for t in subtitles
            ],
            audio=[
                AudioOut(
                    number=a.number, name=a.name, language=a.language and language_tag(a.language),
                    channels=a.channels, codec=a.codec, default=i == 0,
                    playlist=sign(playlist_url(video.id, folder_name(a.number))),
                )
                for i, a in enumerate(audio)
            ],
            links=links,
        )


def _shown(video: Video, videos: VideoManager, sign: Callable[[str], str]) -> VideoOut:
    """The video as the API shows it, with what is cached of it and its tracks (which may read
    its input: called from a thread)."""
    return VideoOut.of(
        video, videos.cached(video.id), sign, videos.tune_progress(video), videos.metrics.speed,
        videos.deinterlaces(video), videos.subtitles.tracks(video), videos.audio.streams(video),
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


def _planned_or_404(videos: VideoManager, video_id: str) -> Video:
    """The video, to serve media of: 404 where there is none, 503 while it waits to be planned
    again (its media are timed by the plan it is about to have)."""
    video = _video_or_404(videos, video_id)
    with _busy_as_503():
        videos.check_planned(video)
    return video


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=VideoOut,
    dependencies=[Depends(require_token)],
)  # fmt: skip
async def create_video(
    body: VideoCreate, request: Request, videos: Videos, sign: Signer
) -> VideoOut | Response:
    """Fetch and plan a video (no upscaling yet); it can be played as soon as this returns.
    A client that hangs up stops its download."""
    check_disk(videos.settings)
    try:
        store = StoreRequest(**body.store.model_dump()) if body.store else None
        ingest = videos.ingest(body.url, body.scales, body.tune, store, raw_rate(body.input_fps),
                               body.deinterlace)  # fmt: skip
        video = await unless_disconnected(request.receive, ingest)
    except ClientGone:
        return Response(status_code=CLIENT_GONE)
    except (NotReady, Busy, PoolBusy) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), RETRY) from exc
    except DiskFull as exc:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, str(exc)) from exc
    except (FetchError, PipelineError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, "the server's disk is full; "
                            "try again later") from exc  # fmt: skip
    return await asyncio.to_thread(_shown, video, videos, sign)


@router.get("", response_model=VideoPage)
def list_videos(
    videos: Videos,
    sign: Signer,
    offset: Offset = 0,
    limit: Limit = 50,
) -> VideoPage:
    """Videos, newest first."""
    items, total = videos.store.list(offset, limit)
    out = [_shown(v, videos, sign) for v in items]
    return VideoPage(items=out, total=total, offset=offset, limit=limit)


@router.get("/{video_id}", response_model=VideoOut)
def get_video(video_id: str, videos: Videos, sign: Signer) -> VideoOut:
    """Duration, segments, renditions with what of each is cached, and the fine-tune's state."""
    return _shown(_video_or_404(videos, video_id), videos, sign)


@router.delete(
    "/{video_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Depends(require_token)]
)
async def delete_video(video_id: str, videos: Videos) -> Response:
    """Remove the video, its source copy and its cached segments (a video this version cannot
    read too)."""
    if not VIDEO_ID.fullmatch(video_id) or not await videos.delete(video_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no video {video_id!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{video_id}/report")
def title_report(video_id: str, videos: Videos) -> dict:
    """A video stored small: bicubic, the generic model and the title's own model measured on
    its frames against the source (PSNR, SSIM, VMAF, temporal error), the rate-quality curves
    of storing the source's size directly against the copy plus upscaling, BD-rates and where
    upscaling wins, and how long each part took. 404 until the title's model is made."""
    video = _video_or_404(videos, video_id)
    if video.storage is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"video {video_id} is not stored small")
    report = videos.report(video)
    if report is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"video {video_id}: the report comes with its own model "
            f"(now {video.tune_state})",
        )  # fmt: skip
    return report


@router.get(f"/{{video_id}}/{REPORT_FOLDER}/{{name}}", include_in_schema=False)
def title_report_files(video_id: str, name: str, videos: Videos) -> Response:
    """The report's page, its plot and its JSON, under one folder (so one signed link opens
    them all)."""
    video = _video_or_404(videos, video_id)
    if name == REPORT_PAGE:
        return FileResponse(STATIC_DIR / "report.html", media_type="text/html")
    if name == "plot.svg" and (path := videos.report_plot(video)) is not None:
        return FileResponse(path, media_type="image/svg+xml")
    if name == "report.json" and (report := videos.report(video)) is not None:
        return JSONResponse(report)
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report file {name!r} (yet)")


#: A player's id (given out with the master playlist; the URIs of its playlists carry it), so
#: that segments are made ahead of each player of a rendition, not only of the last one to ask.
Viewer = Annotated[
    str | None,
    Query(pattern=f"^{VIEWER.pattern}$",
          description="the player's id, as the master playlist's URIs carry it"),
]  # fmt: skip
#: Playlists name one player: a shared cache must not hand them to another.
PER_PLAYER = {"Cache-Control": "no-store"}


@contextlib.contextmanager
def _busy_as_503() -> Iterator[None]:
    """A video being planned again: 503, try again in a moment."""
    try:
        yield
    except Busy as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), RETRY) from exc


#: One rendition of a video's master playlist (``original``, ``x2``...), for a player that is to
#: play that one alone with the video's audio and subtitle renditions.
OnlyRendition = Annotated[
    str | None,
    Query(pattern=r"^[a-z0-9]{1,12}$", description="that rendition alone (`original`, `x2`...), "
          "with the video's audio and subtitle renditions"),
]  # fmt: skip


@router.get(f"/{{video_id}}/{MASTER_NAME}", response_class=Response)
def master_playlist(
    video_id: str, videos: Videos, audio: AudioChoice = None, rendition: OnlyRendition = None
) -> Response:
    """The master playlist: the original rendition first, then each upscaled one. Each
    request gives a new player id to the URIs it names. ``audio``: the audio rendition players
    start with (a browser that offers no choice of its own plays that one); ``rendition``: that
    one alone (its media playlist has no audio renditions: an original that cannot carry the
    input's audio plays silent)."""
    video = _video_or_404(videos, video_id)
    with _busy_as_503():
        try:
            text = videos.master_playlist(video, new_viewer(), rendition)
        except LookupError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if audio is not None:
        try:
            text = with_default_audio(text, media_uri(audio))
        except LookupError:
            offered = [s.number for s in videos.audio.streams(video)] or "none"
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"the video has no audio rendition {audio} (its audio "
                                f"renditions: {offered})") from None  # fmt: skip
    return Response(text, media_type=PLAYLIST_TYPE, headers=PER_PLAYER)


@router.get(f"/{{video_id}}/{SUBTITLES}/{{name}}", response_class=Response)
async def subtitles(video_id: str, name: str, videos: Videos) -> Response:
    """A subtitle rendition: ``<n>.m3u8``, its playlist (one WebVTT file for the whole video),
    and ``<n>.vtt``, made from the input's text subtitle stream n when first asked for."""
    video = _planned_or_404(videos, video_id)
    found = await asyncio.to_thread(videos.subtitles.track, video, name)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no subtitle file {name!r}")
    track, kind = found
    if kind == "m3u8":
        return Response(videos.subtitles.playlist(video, track), media_type=PLAYLIST_TYPE)
    try:
        path = await videos.subtitles.file(video, track)
    except (PipelineError, av.FFmpegError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"the subtitles cannot be read: {exc}") from exc  # fmt: skip
    return FileResponse(path, media_type="text/vtt; charset=utf-8")


def _audio_or_404(
    videos: VideoManager, video_id: str, number: str
) -> tuple[Video, AudioStream]:
    video = _planned_or_404(videos, video_id)
    stream = videos.audio.stream(video, f"audio_{number}")
    if stream is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"video has no audio rendition audio_{number}")  # fmt: skip
    return video, stream


@router.get("/{video_id}/audio_{number}/{name}", response_class=Response)
async def audio_rendition(video_id: str, number: str, name: str, videos: Videos) -> Response:
    """An audio rendition of a video whose input has several audio streams: ``index.m3u8``
    and its MPEG-TS segments, the input's audio stream ``number`` alone, each made when first
    asked for (nothing upscaled)."""
    video, stream = await asyncio.to_thread(_audio_or_404, videos, video_id, number)
    if name == PLAYLIST_NAME:
        return Response(videos.audio.playlist(video), media_type=PLAYLIST_TYPE)
    index = videos.audio.index(video, name)
    if index is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment audio_{number}/{name}")
    turns = _turn(videos)
    try:
        opened = await videos.audio.segment(video, stream, index)
    except BaseException as exc:
        turns.give()
        if isinstance(exc, PipelineError | av.FFmpegError):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"the audio cannot be made: {exc}") from exc  # fmt: skip
        if isinstance(exc, OSError) and videos.get(video_id) is None:  # (its folder went)
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                f"video {video_id} was deleted") from exc  # fmt: skip
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE,
                                "the server is out of disk space") from exc  # fmt: skip
        raise
    return FileStream(opened, segment_media_type(False), on_close=turns.give)


@router.head("/{video_id}/audio_{number}/segment_{index}.ts", response_class=Response,
             include_in_schema=False)  # fmt: skip
def audio_segment_head(video_id: str, number: str, index: str, videos: Videos) -> Response:
    """What GET would answer, without making the segment: its length once it is made."""
    video, stream = _audio_or_404(videos, video_id, number)
    found = videos.audio.index(video, f"segment_{index}.ts")
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment audio_{number}/{index}")
    response = Response(media_type=segment_media_type(False))
    size = videos.audio.made_size(video, stream, found)
    if size is None:
        del response.headers["content-length"]  # not known before it is made (not 0)
    else:
        response.headers["content-length"] = str(size)
    return response


@router.get(f"/{{video_id}}/{{rendition}}/{PLAYLIST_NAME}", response_class=Response)
def media_playlist(
    video_id: str, rendition: str, videos: Videos, viewer: Viewer = None
) -> Response:
    """A rendition's complete VOD playlist (every segment, whether made yet or not), its
    segments' URIs carrying the player's id (a new one when the request has none)."""
    video = _planned_or_404(videos, video_id)
    described = video.rendition(rendition)
    if described is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"video has no rendition {rendition!r}")
    with _busy_as_503():
        text = videos.media_playlist(video, described, viewer or new_viewer())
    return Response(text, media_type=PLAYLIST_TYPE, headers=PER_PLAYER)


def _segment_or_404(
    videos: VideoManager, video_id: str, rendition: str, name: str
) -> tuple[Video, int, Rendition]:
    video = _planned_or_404(videos, video_id)
    described = video.rendition(rendition)
    index = None if described is None else segment_index(name, described.fragmented)
    if described is None or index is None or index >= len(video.plan.segments):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {rendition}/{name}")
    return video, index, described


@router.head("/{video_id}/{rendition}/segment_{number}.{kind}", response_class=Response,
             include_in_schema=False)  # fmt: skip
def segment_head(
    video_id: str, rendition: str, number: str, kind: str, videos: Videos
) -> Response:
    """What GET would answer, without making the segment: its length once it is cached (a
    HEAD from an uptime check or a crawler costs no upscaling). Segments only: a HEAD on a
    playlist or a report runs its GET route."""
    name = f"segment_{number}.{kind}"
    video, index, described = _segment_or_404(videos, video_id, rendition, name)
    with _busy_as_503():
        size = videos.cached_size(video, rendition, index)
    response = Response(media_type=segment_media_type(described.fragmented))
    if size is None:
        del response.headers["content-length"]  # not known before it is made (not 0)
    else:
        response.headers["content-length"] = str(size)
    return response


@router.get("/{video_id}/{rendition}/{name}", response_class=Response)
async def segment(
    video_id: str,
    rendition: str,
    name: str,
    request: Request,
    videos: Videos,
    viewer: Viewer = None,
) -> Response:
    """One segment (MPEG-TS, or fragmented MP4 after the rendition's ``init.mp4``): from the
    cache, or made now. Sent from its file on disk; the work for a client that hangs up is
    dropped (unless it is nearly done)."""
    if name == INIT_NAME:
        return await _init_segment(video_id, rendition, request, videos, viewer)
    video, index, described = _segment_or_404(videos, video_id, rendition, name)
    turns = _turn(videos)
    try:
        opened = await unless_disconnected(
            request.receive, videos.segment(video, rendition, index, viewer or ""),
            discard=lambda file: file.handle.close(),
        )
    except BaseException as exc:
        turns.give()
        return _not_made(exc)
    return FileStream(opened, segment_media_type(described.fragmented), on_close=turns.give)


def _turn(videos: VideoManager) -> Turns:
    """Take one of the segment turns (503 when every one is taken); the caller gives it back."""
    turns = videos.responses
    if not turns.take():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"{turns.held} segment requests are under way; try again in a moment",
                            RETRY)  # fmt: skip
    return turns


def _not_made(exc: BaseException) -> Response:
    """The answer when a segment (or an ``init.mp4``) was not made: nothing for a client that
    has gone, else the HTTP error that says why (other exceptions are raised again)."""
    if isinstance(exc, ClientGone):
        return Response(status_code=CLIENT_GONE)
    if isinstance(exc, VideoGone):
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if isinstance(exc, NotReady | Busy):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), RETRY) from exc
    if isinstance(exc, LowOnDisk):
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, str(exc)) from exc
    if isinstance(exc, SegmentRefused):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    if isinstance(exc, SegmentError):
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
    raise exc


async def _init_segment(
    video_id: str, rendition: str, request: Request, videos: VideoManager, viewer: str | None
) -> Response:
    """A fragmented-MP4 rendition's ``init.mp4`` (made with its segments: see
    ``VideoManager.init_segment``)."""
    video = _planned_or_404(videos, video_id)
    described = video.rendition(rendition)
    if described is None or not described.fragmented:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {rendition}/{INIT_NAME}")
    try:
        path = await unless_disconnected(
            request.receive, videos.init_segment(video, described, viewer or "")
        )
    except BaseException as exc:
        return _not_made(exc)
    return FileResponse(path, media_type="video/mp4")
