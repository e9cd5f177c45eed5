"""Web pages: the jobs page at ``/``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["pages"], include_in_schema=False)
STATIC_DIR = Path(__file__).parent / "static"


@router.get("/")
def jobs_page() -> FileResponse:
    """Submit a URL, follow jobs, play an HLS output."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/live")
def live_page() -> FileResponse:
    """Live upscaling of the camera, original and upscaled side by side."""
    return FileResponse(STATIC_DIR / "live.html", media_type="text/html")
