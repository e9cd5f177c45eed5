"""FastAPI dependencies: the app's shared objects and the optional API token."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status

from carn_stream.server import media_links
from carn_stream.server.jobs.runner import JobRunner
from carn_stream.server.jobs.store import JobStore
from carn_stream.server.speed import SpeedBook
from carn_stream.server.workers import ExecutorHolder, WorkerHolder
from carn_stream.settings import Settings

#: Paging of listings: an offset past the end gives an empty page (SQLite takes 64-bit offsets).
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=200)]
#: The audio rendition a player of a master playlist starts with (``audio_<n>``'s n).
AudioChoice = Annotated[
    int | None,
    Query(ge=0, le=999, description="the audio stream players start with (its number among "
          "the input's audio streams, from 0): that audio rendition is the group's default, "
          "which a player offering no choice of its own plays"),
]  # fmt: skip


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


def get_worker_holder(request: Request) -> WorkerHolder:
    """The service's own inference worker (live sessions), loaded in the background."""
    return request.app.state.worker_holder


def get_executors(request: Request) -> ExecutorHolder:
    """The job runner's segment executor, once it is ready."""
    return request.app.state.executors


def get_speed(request: Request) -> SpeedBook:
    """The model's measured speed per input size (fed by every upscaled frame's report)."""
    return request.app.state.metrics.speed


def link_signer(request: Request) -> Callable[[str], str]:
    """Turns a media path into the link a job hands out: signed when a token is set."""
    settings = get_settings(request)
    if not settings.api_token:
        return lambda path: path
    token, lifetime = settings.api_token, settings.media_link_seconds
    scopes = request.app.state.media_scopes
    return lambda path: media_links.sign(path, token, lifetime, scopes)


#: A route's link signer (see :func:`link_signer`).
Signer = Annotated[Callable[[str], str], Depends(link_signer)]


def require_token(request: Request) -> None:
    """When a token is configured, ``Authorization: Bearer <token>`` (the gate in
    ``middleware`` checks every request first; this guards the routes themselves too)."""
    expected = get_settings(request).api_token
    if not expected:
        return
    header = request.headers.get("Authorization", "").encode("latin-1")  # (its bytes)
    if not bearer_matches(header, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this server needs an API token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def bearer_matches(authorization: bytes, token: str) -> bool:
    """Whether an ``Authorization`` header's bytes carry ``Bearer <token>`` (one reading for
    the gate and the routes' own check: they disagreed on tokens ending in bytes Python's
    ``str.strip`` takes for space)."""
    scheme, _, given = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(
        given.strip(b" \t"), token.encode("utf-8")
    )
