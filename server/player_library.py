"""hls.js, the HLS player for browsers that cannot play HLS in a ``<video>`` themselves
(Firefox, Chromium before 141): the pages load it from ``/player/hls.js`` only there. It is
fetched once from the npm registry (or a mirror), checked against its pinned checksum, and
kept in the cache folder beside the weights; nothing of it is in the package."""

from __future__ import annotations

import logging
import tarfile
import tempfile
import threading
import time
import urllib.error
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
#: would otherwise wait on the registry again.
RETRY_SECONDS = 60.0


class PlayerLibraryUnavailable(RuntimeError):
    """The library is not cached and cannot be fetched; the message says how to provide it."""


class PlayerLibraryFiles:
    """The cached files of ``library``, fetched on first need from ``url`` (default: the
    registry's) when downloading is allowed. Thread-safe: concurrent callers fetch once."""

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
        self.allow_download = allow_download
        self.timeout = timeout
        self._lock = threading.Lock()
        self._failed: tuple[float, str] | None = None  #: monotonic time, reason

    @property
    def script(self) -> Path:
        return self.folder / self.library.filename

    @property
    def license(self) -> Path:
        return self.folder / self.library.license_filename

    def files(self) -> tuple[Path, Path]:
        """The script and its license, fetched first where they are not cached (blocking);
        :class:`PlayerLibraryUnavailable` when they cannot be."""
        with self._lock:
            if self.script.is_file() and self.license.is_file():
                return self.script, self.license
            if not self.allow_download:
                raise self._unavailable("downloading is disabled (CARN_STREAM_ALLOW_DOWNLOAD)")
            if self._failed and time.monotonic() - self._failed[0] < RETRY_SECONDS:
                raise self._unavailable(self._failed[1])
            try:
                self._fetch()
            except (urllib.error.URLError, OSError, ValueError, WeightsError,
                    tarfile.TarError) as exc:  # fmt: skip
                reason = f"fetching {self.url} failed ({exc})"
                self._failed = (time.monotonic(), reason)
                log.warning("%s %s: %s", self.library.name, self.library.version, reason)
                raise self._unavailable(reason) from exc
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

    def _unavailable(self, reason: str) -> PlayerLibraryUnavailable:
        library = self.library
        return PlayerLibraryUnavailable(
            f"{library.name} {library.version}, the HLS player of browsers without HLS of their "
            f"own, is not cached in {self.folder} and {reason}. Put {library.url} (sha256 "
            f"{library.sha256}) where CARN_STREAM_HLS_JS_URL names it (https:// or file://), "
            f"or play the playlist in a browser or player that plays HLS (Safari, Chromium)"
        )
