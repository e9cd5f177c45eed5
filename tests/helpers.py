"""Test helpers: where the repository and the ground-truth data are; a loopback file server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


#: hls.js's npm tarball (scripts/test.sh fetches it), which tests serve on loopback as the
#: service's mirror of it: ``CARN_STREAM_HLS_JS_URL``.
HLS_JS_TARBALL = REPO_ROOT / ".cache" / "test-tools" / "hls.js-1.7.4.tgz"

#: Run before a page's own scripts: the browser says it cannot play HLS in a ``<video>``, as
#: Firefox says, so the page plays through hls.js over Media Source Extensions.
WITHOUT_NATIVE_HLS = """
const canPlayType = HTMLMediaElement.prototype.canPlayType;
HTMLMediaElement.prototype.canPlayType = function (type) {
  return /mpegurl/i.test(type) ? "" : canPlayType.call(this, type);
};
"""


#: Where a test's media server serves hls.js's tarball (:func:`mirror_hls_js`).
HLS_JS_MIRRORED = "hls.js.tgz"


def mirror_hls_js(folder: Path) -> None:
    """Put hls.js's tarball in a media server's ``folder``, as :data:`HLS_JS_MIRRORED`."""
    if not (folder / HLS_JS_MIRRORED).exists():
        (folder / HLS_JS_MIRRORED).symlink_to(hls_js_tarball())


def hls_js_tarball() -> Path:
    """:data:`HLS_JS_TARBALL`, which must be there."""
    import pytest

    if not HLS_JS_TARBALL.is_file():
        pytest.fail(f"hls.js's tarball missing at {HLS_JS_TARBALL}: run scripts/test.sh")
    return HLS_JS_TARBALL


def tarball_member(tarball: Path, name: str) -> bytes:
    """The bytes of the file ``name`` in a gzipped tarball."""
    import tarfile

    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile(name)
        assert member is not None, name
        return member.read()


@contextlib.contextmanager
def chromium_page(url: str, native_hls: bool = True, **context_options: Any) -> Iterator[Any]:
    """Chromium with a page at ``url`` open (closed after). Without ``native_hls``, the browser
    says it cannot play HLS itself, in this page and any other opened in its context."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            context = browser.new_context(**context_options)
            if not native_hls:
                context.add_init_script(WITHOUT_NATIVE_HLS)
            page = context.new_page()
            page.goto(url)
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def pressed_play(url: str, item_id: str, button: str, native_hls: bool = True) -> Iterator[Any]:
    """Chromium with our page at ``url`` open and ``button`` pressed in the row of ``item_id``
    (a job on the jobs page, a video on the videos page): the page (closed after). Without
    ``native_hls``, the browser says it cannot play HLS itself."""
    with chromium_page(url, native_hls) as page:
        row = page.locator(f"tr[data-id='{item_id}']")
        row.get_by_role("button", name=button, exact=True).click()
        yield page


def play_switched_to_second_audio(url: str) -> tuple[list, list]:
    """Play the HLS master playlist at ``url`` in Chromium's own player (its audio tracks
    shown: a flag), switch to the second audio rendition once it plays, and play to the end.
    Returns the tracks it listed ([label, language]) and [time played, error, which tracks
    are enabled] at the end."""
    from playwright.sync_api import sync_playwright

    player = "document.getElementById('v')"
    tracks = f"Array.from({player}.audioTracks)"
    with sync_playwright() as p:
        browser = launch_chromium(p, "--enable-blink-features=AudioVideoTracks")
        try:
            page = browser.new_page()
            page.set_content(f'<video id="v" src="{url}" muted autoplay></video>')
            page.wait_for_function(f"{player}.currentTime > 0", timeout=60_000)
            listed = page.evaluate(f"{tracks}.map(t => [t.label, t.language])")
            page.evaluate(f"{tracks}[1].enabled = true")
            page.wait_for_function(f"{player}.ended", timeout=120_000)
            state = page.evaluate(f"[{player}.currentTime, {player}.error, "
                                  f"{tracks}.map(t => t.enabled)]")  # fmt: skip
        finally:
            browser.close()
    return listed, state


def player_subtitles(page, cues: int, timeout_ms: int = 60_000) -> tuple[list, list]:
    """Once the page's ``#player`` holds one text track with ``cues`` cues loaded: its cues
    as [start, text] and its [label, language, mode]."""
    tracks = "document.getElementById('player').textTracks"
    loaded = f"{tracks}.length === 1 && {tracks}[0].cues && {tracks}[0].cues.length === {cues}"
    page.wait_for_function(loaded, timeout=timeout_ms)
    found = page.evaluate(f"Array.from({tracks}[0].cues).map(c => [c.startTime, c.text])")
    return found, page.evaluate(f"[{tracks}[0].label, {tracks}[0].language, {tracks}[0].mode]")


def link_expiry(link: str) -> int:
    """When a signed media link (``/media/<expiry>/<signature>/...``) stops opening."""
    return int(re.search(r"/media/(\d+)/", link)[1])


def play_past_a_signed_link(
    url: str, token: str, start: Callable[[Any], None], native_hls: bool = True
) -> str:
    """Open the page at ``url`` in Chromium with the API ``token`` entered, ``start(page)``
    playing a signed link in its ``#player``; pause it, wait until the page has swapped in a
    fresh link (where the player was, still paused) and the first one has expired, then play to
    the end without an error. Returns the first link. Without ``native_hls``, the browser says
    it cannot play HLS itself (the page plays through hls.js)."""
    player = "document.getElementById('player')"
    source = f"{player}.dataset.source"  # the playlist's link (the page's record of it)
    with chromium_page(url, native_hls) as page:
        page.fill("#token", token)
        start(page)
        page.wait_for_function(f"{player}.currentTime > 0.5", timeout=60_000)
        page.evaluate(f"{player}.pause()")
        at, first = page.evaluate(f"[{player}.currentTime, {source}]")
        page.wait_for_function(f"{source} !== {first!r}", timeout=15_000)
        # where it was (set once the new source's metadata is in), and still paused
        near = f"Math.abs({player}.currentTime - {at}) < 0.1"
        page.wait_for_function(f"{player}.readyState >= 1 && {near}", timeout=15_000)
        renewed, paused = page.evaluate(f"[{source}, {player}.paused]")
        assert paused and link_expiry(renewed) > link_expiry(first), (first, renewed)
        while time.time() <= link_expiry(first) + 1:
            time.sleep(0.5)
        page.evaluate(f"{player}.play()")
        page.wait_for_function(f"{player}.ended", timeout=60_000)
        failed = page.evaluate(f"[{player}.error, {player}.hlsFailure, typeof Hls]")
        assert failed == [None, None, "undefined" if native_hls else "function"]
    return first


def client_peer():
    """A test's WebRTC peer that asks no STUN server (aiortc's default asks a public one)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    return RTCPeerConnection(RTCConfiguration(iceServers=[]))
