"""Web pages: the jobs page at ``/``, the live page, the videos page, the API docs served
without a CDN, and hls.js for the pages in browsers that cannot play HLS themselves."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from carn_stream.server.player_library import (
    RETRY_SECONDS,
    PlayerLibraryFiles,
    PlayerLibraryUnavailable,
)

router = APIRouter(tags=["pages"], include_in_schema=False)
STATIC_DIR = Path(__file__).parent / "static"
#: How long a request for hls.js waits on its first fetch (which goes on after).
PLAYER_WAIT_SECONDS = 45.0

#: Swagger UI and ReDoc as shipped by the ``fastapi-offline`` package (a dependency), so the
#: docs work on a machine without internet access.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def docs_assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


@router.get("/")
def jobs_page() -> FileResponse:
    """Submit a URL, follow jobs, play an HLS output."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/live")
def live_page() -> FileResponse:
    """Live upscaling of the camera, original and upscaled side by side."""
    return FileResponse(STATIC_DIR / "live.html", media_type="text/html")


@router.get("/watch")
def videos_page() -> FileResponse:
    """Videos served on request: add one, see whether this machine keeps up, play it."""
    return FileResponse(STATIC_DIR / "videos.html", media_type="text/html")


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}/docs-assets/{name}"


@router.get("/docs")
def swagger_docs(request: Request) -> HTMLResponse:
    """The interactive API reference (Swagger UI)."""
    return get_swagger_ui_html(
        openapi_url=request.scope.get("root_path", "") + request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
    )


@router.get("/redoc")
def redoc_docs(request: Request) -> HTMLResponse:
    """The API reference as one page (ReDoc)."""
    return get_redoc_html(
        openapi_url=request.scope.get("root_path", "") + request.app.openapi_url,
        title=f"{request.app.title} API",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"),
        with_google_fonts=False,
    )


@router.get("/docs-assets/{name}")
def docs_asset(name: str) -> FileResponse:
    """A file of Swagger UI or ReDoc."""
    if name not in DOCS_ASSETS:
        raise HTTPException(404, f"no docs asset {name!r}")
    return FileResponse(docs_assets_dir() / name, media_type=DOCS_ASSETS[name])


async def _player_files(request: Request) -> tuple[Path, Path]:
    """hls.js's script and license (fetched on first need; 503 saying why where it cannot be)."""
    library: PlayerLibraryFiles = request.app.state.player_library
    try:
        return await library.files_within(PLAYER_WAIT_SECONDS)
    except PlayerLibraryUnavailable as exc:
        retry = {} if exc.lasting else {"Retry-After": str(int(RETRY_SECONDS))}
        raise HTTPException(503, str(exc), headers=retry) from None


@router.get("/player/hls.js")
async def hls_js(request: Request) -> FileResponse:
    """hls.js, which the pages load where the browser cannot play HLS itself."""
    script, _ = await _player_files(request)
    # Checked against its ETag at each use: a service upgraded to another release serves it.
    no_cache = {"Cache-Control": "no-cache"}
    return FileResponse(script, media_type="text/javascript", headers=no_cache)


@router.get("/player/hls.js.LICENSE.txt")
async def hls_js_license(request: Request) -> FileResponse:
    """hls.js's license (Apache-2.0)."""
    _, license_file = await _player_files(request)
    return FileResponse(license_file, media_type="text/plain")
