"""``/webrtc``: the SDP offer/answer exchange of live sessions, and their stats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.media.decode import describe, open_input
from carn_stream.pipeline.media.input_formats import VIDEO_SUFFIXES
from carn_stream.server.deps import get_settings, get_speed, get_worker_holder, require_token
from carn_stream.server.jobs.params import Scale
from carn_stream.server.live import LiveSessions
from carn_stream.server.offers import SdpError
from carn_stream.server.speed import SpeedBook
from carn_stream.server.workers import WorkerHolder
from carn_stream.settings import Settings

router = APIRouter(prefix="/webrtc", tags=["live"])


def get_live(request: Request) -> LiveSessions:
    return request.app.state.live


Live = Annotated[LiveSessions, Depends(get_live)]
Config = Annotated[Settings, Depends(get_settings)]


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sdp: str = Field(min_length=1, max_length=60_000)  # the body is capped at 64 KiB
    type: Literal["offer"]
    scale: Scale = 2
    #: ``camera``: upscale the peer's own video track; ``sample``: play a server-side file.
    source: Literal["camera", "sample"] = "camera"
    sample: str | None = Field(None, max_length=255)


class Answer(BaseModel):
    sdp: str
    type: str
    session_id: str


@router.post("/offer", response_model=Answer, dependencies=[Depends(require_token)])
async def offer(
    body: Offer,
    live: Live,
    settings: Config,
    holder: Annotated[WorkerHolder, Depends(get_worker_holder)],
) -> Answer:
    """Send the browser's offer (with a video track); the answer's track returns it upscaled."""
    worker = holder.worker
    if worker is None:
        said = f"the model failed to load: {holder.error}" if holder.error else (
            "the model is still loading")  # fmt: skip
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, said)
    if live.full():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"all {live.limit} live sessions are in use"
        )
    sample = _sample_path(settings, body.sample) if body.source == "sample" else None
    try:
        session, answer = await live.open(body.sdp, body.type, body.scale, worker, sample)
    except SdpError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    except (ValueError, PipelineError) as exc:
        said = str(exc)
        if sample is not None:  # (named as the client named it: never the server's path)
            said = said.replace(f"{sample}: ", f"sample {body.sample!r}: ").replace(
                str(sample), repr(body.sample))  # fmt: skip
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, said) from exc
    return Answer(sdp=answer.sdp, type=answer.type, session_id=session.id)


def _samples(settings: Settings) -> dict[str, Path]:
    folder = settings.live_samples_dir
    if folder is None or not folder.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
    }


def _sample_path(settings: Settings, name: str | None) -> Path:
    samples = _samples(settings)
    if name not in samples:  # names only: never a path the client chose
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"no sample {name!r}; available: {', '.join(samples) or 'none'}",
        )
    return samples[name]


@router.get("/samples")
def list_samples(settings: Config) -> list[str]:
    """Server-side clips the live page can play as a live source."""
    return list(_samples(settings))


@router.get("/pace")
def pace(
    settings: Config,
    speed: Annotated[SpeedBook, Depends(get_speed)],
    scale: Scale = 2,
    width: Annotated[int, Query(ge=2, le=8192)] = 320,
    height: Annotated[int, Query(ge=2, le=8192)] = 240,
    fps: Annotated[float, Query(gt=0, le=240)] = 30,
    sample: Annotated[str | None, Query(max_length=255)] = None,
) -> dict:
    """Whether this machine keeps up with a live source of this size and frame rate (a
    sample: its own): the model's frames per second there, measured on live sessions (else
    on segments, else estimated from the nearest size measured at this scale)."""
    if sample is not None:
        try:
            with open_input(_sample_path(settings, sample)) as container:
                info = describe(container)
        except PipelineError as exc:  # (its message may name the server's path: not sent)
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"sample {sample!r} cannot be read") from exc  # fmt: skip
        width, height = info.width, info.height
        fps = float(info.frame_rate) if info.frame_rate else fps
    return speed.pace(scale, width, height, fps, prefer=("live", "segments")).as_dict()


@router.get("/sessions")
async def list_sessions(live: Live) -> list[dict]:
    """Open sessions with their live stats (read on the event loop that owns them: a worker
    thread's reading raced their opening and closing)."""
    return [s.describe() for s in list(live.sessions.values())]


@router.get("/sessions/{session_id}")
async def session_stats(session_id: str, live: Live) -> dict:
    session = live.sessions.get(session_id)
    if session is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no live session {session_id!r}")
    return session.describe()


@router.delete(
    "/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_token)],
)  # fmt: skip
async def close_session(session_id: str, live: Live) -> None:
    if session_id not in live.sessions:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no live session {session_id!r}")
    await live.close(session_id)
