"""Test helpers: where the repository and the ground-truth data are; a loopback file server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("CARN_STREAM_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


def official_weights_path() -> Path:
    """The official CARN-M checkpoint (``CARN_WEIGHTS`` overrides)."""
    return Path(os.environ.get("CARN_WEIGHTS", DATA_DIR / "weights" / "carn_m.pth"))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serve_directory(root: Path, handler_class: type = QuietHandler) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 on a free port; yields the base URL."""
    handler = functools.partial(handler_class, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


#: Headless Chromium as these machines run it: no sandbox (root), no GPU, nothing reaching out.
CHROMIUM_FLAGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
)  # fmt: skip
#: What a live page needs on top: a fake camera, and WebRTC allowed on loopback.
LIVE_FLAGS = (
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
)  # fmt: skip


def launch_chromium(playwright, *extra: str):
    """Debian's Chromium through Playwright (its own browser download is never used)."""
    import shutil

    return playwright.chromium.launch(
        executable_path=shutil.which("chromium") or "/usr/bin/chromium",
        headless=True,
        args=[*CHROMIUM_FLAGS, *extra],
    )


def client_peer():
    """A test's WebRTC peer that asks no STUN server (aiortc's default asks a public one)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    return RTCPeerConnection(RTCConfiguration(iceServers=[]))
