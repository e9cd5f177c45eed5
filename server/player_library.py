"""hls.js, the HLS player for browsers that cannot play HLS in a ``<video>`` themselves
(Firefox, Chromium before 141): the pages load it from ``/player/hls.js`` only there. It is
fetched once from the npm registry (or a mirror), checked against its pinned checksum, and
kept in the cache folder beside the weights; nothing of it is in the package."""

from __future__ import annotations

import asyncio
import logging
import tarfile
import tempfile
import threading
import time
import urllib.error
import zlib
from dataclasses import dataclass
from pathlib import Path

from carn_stream.model.weights import WeightsError, download

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlayerLibrary:
    """One release of a browser library as its npm tarball holds it."""

    name: str
    version: str
    url: str  #: the release's npm tarball
    sha256: str  #: of the tarball
    script: str  #: the browser build inside the tarball
    license_file: str  #: its license inside the tarball
    license: str

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.min.js"

    @property
    def license_filename(self) -> str:
        return f"{self.name}-{self.version}.LICENSE.txt"


HLS_JS = PlayerLibrary(
    name="hls.js",
    version="1.7.4",
    url="https://registry.npmjs.org/hls.js/-/hls.js-1.7.4.tgz",
    sha256="e4ab3d5d13f7cca9ef241d098f39686e19fd451831ba07dc9943482fd5ff75c7",
    script="package/dist/hls.min.js",
    license_file="package/LICENSE",
    license="Apache-2.0",
)

#: A failed fetch is not tried again for this long: every page load of a browser without HLS
#: would otherwise wait on the source again.
RETRY_SECONDS = 60.0


class PlayerLibraryUnavailable(RuntimeError):
    """The library is not cached and cannot be fetched. Its message is for anyone (the route
    is public): no addresses or paths; ``detail`` (for the log) has them and what to do.
    ``lasting``: it stays so until the settings change (no use asking again soon)."""

    def __init__(self, message: str, detail: str = "", lasting: bool = False) -> None:
        super().__init__(message)
        self.detail = detail or message
        self.lasting = lasting


class PlayerLibraryFiles:
    """The cached files of ``library``, fetched on first need from ``url`` (default: the
    registry's) when downloading is allowed (a ``file://`` copy is read either way). One fetch
    at a time: concurrent callers share it."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        library: PlayerLibrary = HLS_JS,
        url: str | None = None,
        allow_download: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.library = library
        self.folder = cache_dir
        self.url = url or library.url
        self.allow_download = allow_download or self.url.startswith("file:")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._failed: tuple[float, PlayerLibraryUnavailable] | None = None  #: monotonic time
        self._fetching: asyncio.Future | None = None

    @property
    def script(self) -> Path:
        return self.folder / self.library.filename

    @property
    def license(self) -> Path:
        return self.folder / self.library.license_filename

    def _cached(self) -> tuple[Path, Path] | None:
        return (self.script, self.license) if self.script.is_file() and self.license.is_file() \
            else None  # fmt: skip

    async def files_within(self, seconds: float) -> tuple[Path, Path]:
        """:meth:`files` from the event loop: a fetch runs on one thread, and every caller
        meanwhile awaits that same fetch, for at most ``seconds`` (then unavailable for now;
        the fetch goes on)."""
        if cached := self._cached():
            return cached
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.get_running_loop().run_in_executor(None, self.files)
            self._fetching.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.wait_for(asyncio.shield(self._fetching), seconds)
        except TimeoutError:
            raise self._unavailable("it is still being fetched") from None

    def files(self) -> tuple[Path, Path]:
        """The script and its license, fetched first where they are not cached (blocking);
        :class:`PlayerLibraryUnavailable` when they cannot be."""
        with self._lock:
            if cached := self._cached():
                return cached
            if not self.allow_download:
                raise self._unavailable("downloading is disabled on this service",
                                        "downloading is disabled (CARN_STREAM_ALLOW_DOWNLOAD)",
                                        lasting=True)  # fmt: skip
            if self._failed and time.monotonic() - self._failed[0] < RETRY_SECONDS:
                raise self._failed[1]
            try:
                self._fetch()
            except (urllib.error.URLError, OSError, ValueError, KeyError, EOFError, zlib.error,
                    WeightsError, tarfile.TarError) as exc:  # fmt: skip
                why = "it was not the release pinned" if isinstance(exc, WeightsError) \
                    else "fetching it failed"  # fmt: skip
                failure = self._unavailable(why, f"fetching {self.url} failed ({exc})")
                log.warning("%s", failure.detail)
                self._failed = (time.monotonic(), failure)
                raise failure from exc
            self._failed = None
            return self.script, self.license

    def _fetch(self) -> None:
        """The tarball, checksum verified, then its script and license, each written whole
        under a temporary name and renamed; the tarball is not kept."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".player-") as scratch:
            tarball = download(self.url, self.library.sha256,
                               Path(scratch) / f"{self.library.name}.tgz", timeout=self.timeout)
            with tarfile.open(tarball, "r:gz") as archive:
                for member, dest in ((self.library.license_file, self.license),
                                     (self.library.script, self.script)):  # fmt: skip
                    source = archive.extractfile(member)
                    if source is None:
                        raise ValueError(f"{member} in the tarball is not a file")
                    part = Path(scratch) / dest.name
                    part.write_bytes(source.read())
                    part.replace(dest)
        log.info("%s %s (%s) cached in %s", self.library.name, self.library.version,
                 self.library.license, self.folder)  # fmt: skip

    def _unavailable(self, why: str, detail: str = "", lasting: bool = False
                     ) -> PlayerLibraryUnavailable:  # fmt: skip
        """Public: what and why, in short. The detail adds where and what to do."""
        library = self.library
        what = (f"{library.name} {library.version}, the HLS player of browsers without HLS of "
                f"their own, is not available on this service")  # fmt: skip
        return PlayerLibraryUnavailable(
            f"{what}: {why}",
            f"{what}: {detail or why}. It is kept in {self.folder} once fetched: put "
            f"{library.url} (sha256 {library.sha256}) where CARN_STREAM_HLS_JS_URL names it "
            f"(https:// or file://), or place {library.filename} and {library.license_filename} "
            f"from it ({library.script}, {library.license_file}) in that folder",
            lasting,
        )
