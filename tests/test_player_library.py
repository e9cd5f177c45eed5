"""hls.js for browsers without HLS of their own: fetched once from a mirror on loopback,
checked against its pinned checksum, cached whole or not at all."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from carn_stream.server import player_library
from carn_stream.server.player_library import HLS_JS, PlayerLibraryFiles, PlayerLibraryUnavailable
from carn_stream.settings import Settings, SettingsError
from tests.helpers import QuietHandler, hls_js_tarball, serve_directory, tarball_member


class CountingHandler(QuietHandler):
    """Counts the GET requests it answers."""

    asked: ClassVar[list[str]] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            type(self).asked.append(self.path)
        super().do_GET()


@pytest.fixture
def mirror(tmp_path):
    """A loopback file server over ``tmp_path/mirror`` holding hls.js's tarball: (its URL, the
    folder, the requests it answered)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    shutil.copy(hls_js_tarball(), folder / "hls.js.tgz")
    CountingHandler.asked = []
    with serve_directory(folder, CountingHandler) as base:
        yield f"{base}/hls.js.tgz", folder, CountingHandler.asked


def test_the_script_and_its_license_are_fetched_once_and_served_from_the_cache(mirror, tmp_path):
    url, folder, asked = mirror
    cache = tmp_path / "cache"
    library = PlayerLibraryFiles(cache, url=url)

    async def pages_asking_at_once() -> list[tuple[Path, Path]]:
        return await asyncio.gather(*(library.files_within(30) for _ in range(4)))

    results = asyncio.run(pages_asking_at_once())
    script, license_file = results[0]
    assert all(r == results[0] for r in results) and asked == ["/hls.js.tgz"]  # one fetch
    assert script.read_bytes() == tarball_member(hls_js_tarball(), HLS_JS.script)
    assert "Apache License" in license_file.read_text()
    assert sorted(p.name for p in cache.iterdir()) == sorted([HLS_JS.filename,
                                                              HLS_JS.license_filename])
    (folder / "hls.js.tgz").unlink()  # the mirror is gone: a restarted service has its copy
    assert PlayerLibraryFiles(cache, url=url).files() == (script, license_file)
    assert asked == ["/hls.js.tgz"]


def test_a_tarball_with_another_checksum_is_refused_and_nothing_is_kept(
    mirror, tmp_path, monkeypatch
):
    url, folder, asked = mirror
    good = (folder / "hls.js.tgz").read_bytes()
    (folder / "hls.js.tgz").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    cache = tmp_path / "cache"
    library = PlayerLibraryFiles(cache, url=url)
    with pytest.raises(PlayerLibraryUnavailable, match="not the release pinned") as refused:
        library.files()
    # Anyone may read the message (the route is public): where from and where to, only the log.
    public, detail = str(refused.value), refused.value.detail
    assert url not in public and "127.0.0.1" not in public and str(cache) not in public
    assert "checksum mismatch" in detail and url in detail and HLS_JS.sha256 in detail
    assert "CARN_STREAM_HLS_JS_URL" in detail and str(cache) in detail
    assert list(cache.iterdir()) == [] and not refused.value.lasting
    # A failure is remembered for a while: page loads do not wait on the source again ...
    (folder / "hls.js.tgz").write_bytes(good)
    with pytest.raises(PlayerLibraryUnavailable, match="not the release pinned"):
        library.files()
    assert len(asked) == 1
    # ... and then it is tried again.
    monkeypatch.setattr(player_library, "RETRY_SECONDS", 0.0)
    assert library.files()[0].is_file() and len(asked) == 2


def test_a_file_url_serves_a_machine_without_internet_access(tmp_path):
    """Read with downloads disabled too: it is no download."""
    tarball = tmp_path / "hls.js.tgz"
    shutil.copy(hls_js_tarball(), tarball)
    library = PlayerLibraryFiles(tmp_path / "cache", url=tarball.as_uri(), allow_download=False)
    script, _ = library.files()
    assert script.read_bytes() == tarball_member(tarball, HLS_JS.script)


def test_with_downloads_disabled_the_refusal_says_how_to_provide_it(tmp_path):
    library = PlayerLibraryFiles(tmp_path / "cache", allow_download=False)
    with pytest.raises(PlayerLibraryUnavailable, match="downloading is disabled") as refused:
        library.files()
    detail = refused.value.detail
    assert "CARN_STREAM_ALLOW_DOWNLOAD" in detail and HLS_JS.url in detail
    assert HLS_JS.filename in detail and refused.value.lasting  # asking again will not help
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hls.js.tgz", "hls.js.tgz"])
def test_a_mirror_url_that_cannot_be_fetched_is_refused_at_start(url):
    with pytest.raises(SettingsError, match="CARN_STREAM_HLS_JS_URL"):
        Settings.from_env({"CARN_STREAM_HLS_JS_URL": url})


def test_the_pinned_release_is_the_tarball_the_tests_serve():
    """The checksum pinned in the package is that of the tarball npm gives for the version."""
    from carn_stream.model.weights import sha256_of

    assert sha256_of(hls_js_tarball()) == HLS_JS.sha256
    assert Path(HLS_JS.url).name == hls_js_tarball().name
