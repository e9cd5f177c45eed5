"""FastAPI dependencies: the app's shared objects and the optional API token."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status

from carn_stream.server.jobs import JobRunner
from carn_stream.server.store import JobStore
from carn_stream.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


def require_token(request: Request) -> None:
    """When a token is configured, mutating endpoints need ``Authorization: Bearer <token>``."""
    expected = request.app.state.settings.api_token
    if not expected:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this server needs an API token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
