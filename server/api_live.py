"""``/webrtc``: the SDP offer/answer exchange of live sessions, and their stats."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from carn_stream.pipeline.errors import PipelineError

router = APIRouter(prefix="/webrtc", tags=["live"])
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm", ".ts", ".avi"}


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sdp: str = Field(min_length=1, max_length=100_000)
    type: Literal["offer"]
    scale: Literal[2, 3, 4] = 2
    #: ``camera``: upscale the peer's own video track; ``sample``: play a server-side file.
    source: Literal["camera", "sample"] = "camera"
    sample: str | None = Field(None, max_length=255)


class Answer(BaseModel):
    sdp: str
    type: str
    session_id: str


def _sessions(request: Request):
    return request.app.state.live


@router.post("/offer", response_model=Answer)
async def offer(body: Offer, request: Request) -> Answer:
    """Send the browser's offer (with a video track); the answer's track returns it upscaled."""
    live = _sessions(request)
    worker = request.app.state.worker_holder.worker
    if worker is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the model is still loading")
    if live.full():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"all {live.limit} live sessions are in use"
        )
    sample = _sample_path(request, body.sample) if body.source == "sample" else None
    try:
        session, answer = await live.open(body.sdp, body.type, body.scale, worker, sample)
    except (ValueError, PipelineError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return Answer(sdp=answer.sdp, type=answer.type, session_id=session.id)


def _samples(request: Request) -> dict[str, Path]:
    folder = request.app.state.settings.live_samples_dir
    if folder is None or not folder.is_dir():
        return {}
    return {
        p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in VIDEO_SUFFIXES
    }


def _sample_path(request: Request, name: str | None) -> Path:
    samples = _samples(request)
    if name not in samples:  # names only: never a path the client chose
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"no sample {name!r}; available: {', '.join(samples) or 'none'}",
        )
    return samples[name]


@router.get("/samples")
def list_samples(request: Request) -> list[str]:
    """Server-side clips the live page can play as a live source."""
    return list(_samples(request))


@router.get("/sessions")
def list_sessions(request: Request) -> list[dict]:
    """Open sessions with their live stats."""
    return [s.describe() for s in _sessions(request).sessions.values()]


@router.get("/sessions/{session_id}")
def session_stats(session_id: str, request: Request) -> dict:
    session = _sessions(request).sessions.get(session_id)
    if session is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no live session {session_id!r}")
    return session.describe()


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def close_session(session_id: str, request: Request) -> None:
    live = _sessions(request)
    if session_id not in live.sessions:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no live session {session_id!r}")
    await live.close(session_id)
