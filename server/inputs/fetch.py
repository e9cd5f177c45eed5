"""Fetch job inputs safely: size cap, deadlines, bounded redirects, no requests to private hosts.

Every hop's host is resolved once, every resolved address is checked, and the connection goes
to the checked address (no second lookup a DNS answer could change in between). Loopback,
private, link-local, site-local, shared, multicast, reserved and unspecified addresses are
refused unless allow-listed, and so are IPv6 addresses that embed such an IPv4 address. The
body streams to a file, never whole into memory. A watchdog closes the connection when the
download passes its total deadline, falls below the minimum rate or is cancelled, so a
blocked read ends within a fraction of a second. An HLS playlist or a DASH manifest is replaced
by the stream it lists (:mod:`.listed_fetch`), every part fetched under the same rules and
limits, over connections kept open between them (HTTP keep-alive), as players fetch them.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.media.listing import has_audio_apart, joined_bytes, remove_apart
from carn_stream.server.disk import disk_space
from carn_stream.server.inputs.exposure import public_url
from carn_stream.server.inputs.listed_fetch import (
    HEAD_BYTES,
    LISTING_NAMES,
    fetch_listed,
    listing_kind,
)
from carn_stream.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: How an HTML page starts (after a BOM and white space): a video's page rather than its file.
_WEB_PAGE = re.compile(rb"(?:\xef\xbb\xbf)?\s*<(?:!doctype\s+html|html|head)\b", re.IGNORECASE)


class FetchError(Exception):
    """The input cannot be fetched; the message says why."""


class FetchCancelled(FetchError):
    pass


class DiskFull(FetchError):
    """The input does not fit on the server's disk above its free-space floor."""


@dataclass(frozen=True)
class FetchPolicy:
    allowed_hosts: frozenset[str] = frozenset()  #: non-public IPs that are allowed anyway
    allow_local_files: bool = False
    max_bytes: int = 2 * 1024**3
    timeout: float = 20.0  #: seconds to connect, and seconds without data
    max_redirects: int = 5
    max_seconds: float = 900.0  #: the whole download, redirects included
    min_rate: int = 10_000  #: bytes per second on average, from ``timeout`` seconds on
    min_free_bytes: int = 0  #: free space the download must leave on the disk


#: 6to4 relays (192.88.99.0/24) forward to whatever 6to4 address they are given.
_SIX_TO_FOUR_RELAY = ipaddress.ip_network("192.88.99.0/24")
#: Prefixes whose last 32 bits are an IPv4 address: NAT64 (64:ff9b::/96), IPv4-translated
#: (::ffff:0:0:0/96) and IPv4-compatible (::/96).
_LOW_32_EMBEDDING = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96")
)
#: Local-use NAT64 (RFC 8215): never global, whatever it embeds.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries and may be routed to (mapped, NAT64, 6to4,
    Teredo server and client, IPv4-compatible, IPv4-translated)."""
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found.extend(address.teredo)
    if any(address in net for net in _LOW_32_EMBEDDING) and int(address) > 1:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast, judged by every IPv4 address an IPv6 address embeds too."""
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not address.is_multicast and address not in _SIX_TO_FOUR_RELAY
    if address.is_site_local or address in _LOCAL_NAT64:
        return False
    embedded = embedded_ipv4(address)
    if embedded:
        return all(is_public(a) for a in embedded)
    return address.is_global and not address.is_multicast


def check_address(address: str, policy: FetchPolicy) -> IPAddress:
    """The parsed address if a fetch may connect to it; otherwise :class:`FetchError`."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if is_public(ip) or str(ip) in policy.allowed_hosts:
        return ip
    raise FetchError(
        f"address {ip} is not public; refused (the server admits it when "
        f"CARN_STREAM_ALLOWED_PRIVATE_HOSTS lists {ip})"
    )


def resolve(host: str, port: int, policy: FetchPolicy) -> list[IPAddress]:
    """Resolve ``host`` and check every address it has (one bad address refuses the host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    except UnicodeError as exc:  # a label over 63 characters, or one IDNA cannot encode
        raise FetchError(f"host {host!r} is not a valid host name") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    return [check_address(a, policy) for a in addresses]


#: Control characters: no URL carries them (http.client refuses them only when sending).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Spaces and non-ASCII characters: sent percent-encoded, as browsers send them.
_TO_ENCODE = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises for a bad port
        except ValueError as exc:  # "[::1", characters NFKC turns into separators, bad port
            raise FetchError(f"malformed URL: {exc}") from exc
        if not parts.scheme and url.startswith(("/", ".", "~")):
            raise FetchError(
                "local paths are not accepted as inputs; give an http(s) URL "
                "(the server accepts paths only with CARN_STREAM_ALLOW_LOCAL_FILES=1)"
            )
        if parts.scheme == "file":
            raise FetchError(
                "unsupported URL scheme 'file': use http or https "
                "(file:// needs CARN_STREAM_ALLOW_LOCAL_FILES=1 on the server)"
            )
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"unsupported URL scheme {parts.scheme!r}: use http or https")
        if not parts.hostname:
            raise FetchError(f"URL {url!r} has no host")
        if parts.username or parts.password:
            raise FetchError("URLs with credentials are not accepted")
        if parts.port == 0:
            raise FetchError("malformed URL: port 0 is not a port to fetch from")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if _CONTROL.search(path):
            raise FetchError("malformed URL: its path has a control character")
        path = _TO_ENCODE.sub(lambda m: urllib.parse.quote(m.group()), path)
        return cls(parts.scheme, parts.hostname, port, path)


def local_path(url: str) -> Path:
    """The file a local input names: an absolute path, or a ``file:`` URL of this machine
    (``file:///path`` or ``file://localhost/path``, percent-escapes decoded; with no query or
    fragment, which no file's name has)."""
    if not url.startswith("file://"):
        return Path(url)
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"a file: URL names this machine's files only, not {parts.netloc}'s")
    if parts.query or parts.fragment:
        raise FetchError("a file: URL has no query or fragment ('?' or '#' in a file's name "
                         "is written %3F or %23)")  # fmt: skip
    return Path(urllib.request.url2pathname(parts.path))


def validate_url(url: str, policy: FetchPolicy) -> str:
    """Checks that can be made at submission: scheme, host and its addresses (or local file)."""
    if policy.allow_local_files and (url.startswith("file://") or url.startswith("/")):
        path = local_path(url)
        if not path.is_file():
            raise FetchError(f"local file {path} does not exist")
        return url
    target = Target.parse(url)
    resolve(target.host, target.port, policy)
    return url


class _Watchdog:
    """Ends a download that is cancelled, past its deadline or too slow, by shutting down its
    socket: a read blocked in the kernel returns at once."""

    POLL = 0.1

    def __init__(self, policy: FetchPolicy, cancelled: threading.Event | None) -> None:
        self.policy, self.cancelled = policy, cancelled or threading.Event()
        self.started = time.monotonic()
        self.received = 0
        self.reason: FetchError | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="carn-fetch-watchdog", daemon=True)
        self._thread.start()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
        if self.reason is not None:
            self._abort()

    def check(self) -> None:
        """Raise the reason the download was stopped, if it was."""
        if self.reason is not None:
            raise self.reason

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=1)

    def _verdict(self) -> FetchError | None:
        if self.cancelled.is_set():
            return FetchCancelled("cancelled")
        elapsed = time.monotonic() - self.started
        if elapsed > self.policy.max_seconds:
            return FetchError(
                f"download took longer than {self.policy.max_seconds:g} s "
                f"({self.received} bytes received); timed out"
            )
        if elapsed > self.policy.timeout and self.received < self.policy.min_rate * elapsed:
            return FetchError(
                f"download too slow: {self.received / elapsed:.0f} bytes/s on average, below "
                f"the minimum of {self.policy.min_rate} bytes/s; timed out"
            )
        return None

    def _watch(self) -> None:
        while not self._done.wait(self.POLL):
            verdict = self._verdict()
            if verdict is not None:
                self.reason = verdict
                self._abort()
                return

    def _abort(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)


class _Connections:
    """The connections one input keeps open between its requests (a listing's playlists,
    parts and keys), one per scheme, host and port: each to the address it was checked at."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def take(self, target: Target, addresses: list[IPAddress]) -> http.client.HTTPConnection | None:
        """The open connection to ``target``, if any, and if it goes to one of ``addresses``
        (its host's answer now, checked); it is no longer kept."""
        conn = self._open.pop((target.scheme, target.host, target.port), None)
        if conn is not None and conn.address not in {str(a) for a in addresses}:
            conn.close()
            return None
        return conn

    def keep(self, target: Target, conn: http.client.HTTPConnection) -> None:
        old = self._open.pop((target.scheme, target.host, target.port), None)
        if old is not None:
            old.close()
        self._open[(target.scheme, target.host, target.port)] = conn

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, address: IPAddress, watchdog: _Watchdog, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.address, self._watchdog = str(address), watchdog

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self._watchdog.attach(self.sock)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, address: IPAddress, watchdog: _Watchdog, *args, **kwargs) -> None:
        super().__init__(*args, context=ssl.create_default_context(), **kwargs)
        self.address, self._watchdog = str(address), watchdog

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self._watchdog.attach(raw)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
        self._watchdog.attach(self.sock)


def fetch(
    url: str,
    dest: Path,
    policy: FetchPolicy,
    cancelled: threading.Event | None = None,
) -> Path:
    """Download ``url`` (or copy a permitted local file) to ``dest``. An HLS playlist or a
    DASH manifest is replaced by the stream it lists (:mod:`.listed_fetch`), fetched under the
    same rules and limits, counted over the whole input."""
    if policy.allow_local_files and (url.startswith("file://") or url.startswith("/")):
        local = local_path(validate_url(url, policy))
        with open(local, "rb") as file:
            kind = listing_kind(file.read(HEAD_BYTES))
        if kind is not None:
            raise FetchError(f"{LISTING_NAMES[kind]} is read from an http(s) URL, not a local "
                             "file")  # fmt: skip
        return local
    watchdog = _Watchdog(policy, cancelled)
    connections = _Connections()
    try:
        # (under another name until it is known to be the input: a playlist never is)
        first = dest.with_name(f".{dest.name}.first")
        remove_apart(dest)  # (an earlier attempt's audio apart is not this input's)
        try:
            final = _fetch(url, first, policy, watchdog, connections)
            with open(first, "rb") as file:
                head = file.read(HEAD_BYTES)
            if kind := listing_kind(head):
                _fetch_listed(url, kind, first, final, dest, policy, watchdog, connections)
            elif _WEB_PAGE.match(head):
                raise FetchError(f"{public_url(url)} answered with a web page (HTML), not a "
                                 "video; give the URL of the video file itself (or of its "
                                 "HLS playlist or DASH manifest)")  # fmt: skip
            else:
                first.replace(dest)
        finally:
            first.unlink(missing_ok=True)
        return dest
    except FetchError:
        watchdog.check()  # the watchdog's reason explains a closed connection best
        raise
    finally:
        connections.close()
        watchdog.close()


def _fetch_listed(
    url: str, kind: str, listing: Path, final: str, dest: Path, policy: FetchPolicy,
    watchdog: _Watchdog, connections: _Connections,
) -> None:  # fmt: skip
    """The stream the ``listing`` of ``kind`` fetched from ``url`` (``final`` after redirects)
    lists, in ``dest``; refusals name the input."""

    def download(part: str, into: Path, limit: int | None = None) -> str:
        return _fetch(part, into, policy, watchdog, connections, limit)

    try:
        fetch_listed(kind, listing, final, download, dest)
        if has_audio_apart(dest):  # to be joined into a second copy of it all: room for that
            try:
                _check_space(dest.parent, policy, joined_bytes(dest))
            except DiskFull:
                dest.unlink(missing_ok=True)
                remove_apart(dest)
                raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull("the server's disk is full; the input was not kept") from exc
        raise
    except (InputError, FetchError) as exc:
        watchdog.check()
        if isinstance(exc, FetchError) and type(exc) is not FetchError:
            raise  # cancelled, or the disk is full: as they are
        raise FetchError(f"{public_url(url)}: {exc}") from exc


def _fetch(
    url: str, dest: Path, policy: FetchPolicy, watchdog: _Watchdog, connections: _Connections,
    limit: int | None = None,
) -> str:  # fmt: skip
    """Download ``url`` to ``dest``; returns the URL it came from in the end (redirects
    followed). ``limit``: at most so many bytes of it (a playlist, manifest, key or subtitle
    segment). A connection whose answer was read whole is kept open in ``connections`` for the
    next."""
    current = url
    for _hop in range(policy.max_redirects + 1):
        watchdog.check()
        target = Target.parse(current)
        addresses = resolve(target.host, target.port, policy)
        response, conn = _request(target, addresses, policy, watchdog, connections)
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"redirect without a Location from {public_url(current)}")
                current = urllib.parse.urljoin(current, location)
                continue
            if response.status != 200:
                raise FetchError(
                    f"{public_url(current)} answered HTTP {response.status} {response.reason}"
                )
            length = response.getheader("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and limit is not None and total > limit:
                raise FetchError(f"{public_url(current)} is {total} bytes, over the limit of "
                                 f"{limit} for a playlist, manifest, key or subtitle "
                                 "segment")  # fmt: skip
            if total is not None and watchdog.received + total > policy.max_bytes:
                raise FetchError(f"input is {watchdog.received + total} bytes, over the limit "
                                 f"of {policy.max_bytes}")  # fmt: skip
            _check_space(dest.parent, policy, total or 0)
            _stream_body(response, dest, policy, total, watchdog, limit)
            return current
        finally:
            if _read_whole(response) and not response.will_close:
                connections.keep(target, conn)
            else:
                conn.close()
    raise FetchError(f"more than {policy.max_redirects} redirects")


def _read_whole(response: http.client.HTTPResponse) -> bool:
    """Whether the answer's body was read to its end (then its connection may carry another
    request: it is closed, as http.client wants it before the next)."""
    if not response.isclosed() and not response.chunked and response.length == 0:
        response.close()  # (the body's file only: the connection stays open)
    return response.isclosed()


def _request(
    target: Target, addresses: list[IPAddress], policy: FetchPolicy, watchdog: _Watchdog,
    connections: _Connections,
):  # fmt: skip
    kept = connections.take(target, addresses)
    if kept is not None:
        watchdog.attach(kept.sock)
        try:
            kept.request("GET", target.path, headers={"User-Agent": "carn-stream"})
            return kept.getresponse(), kept
        except (OSError, http.client.HTTPException):
            kept.close()  # (closed by the server while it was idle): a new one, as below
            watchdog.check()
    errors = []  # (address, what went wrong, whether it took the connection)
    for address in addresses:
        cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        conn = cls(address, watchdog, target.host, target.port, timeout=policy.timeout)
        connected = False
        try:
            conn.connect()
            connected = True
            conn.request("GET", target.path, headers={"User-Agent": "carn-stream"})
            return conn.getresponse(), conn
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            watchdog.check()
            errors.append((str(address), _describe(exc), connected))
    where = f"{target.host}:{target.port}"
    if len(errors) == 1 and errors[0][0] == target.host.strip("[]"):
        _, reason, connected = errors[0]
        if connected:
            raise FetchError(f"{where} took the connection but did not answer: {reason}")
        raise FetchError(f"cannot connect to {where}: {reason}")
    tried = "; ".join(f"{address}: {'no answer, ' if connected else ''}{reason}"
                      for address, reason, connected in errors)  # fmt: skip
    failed = "no answer from" if any(c for _, _, c in errors) else "cannot connect to"
    raise FetchError(f"{failed} {where} (tried {tried})")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


def _stream_body(response, dest: Path, policy: FetchPolicy, total, watchdog, limit=None) -> None:
    """The body into ``dest``; the watchdog counts the bytes of every body of the input, and
    the size cap applies to them all (``limit``: to this body alone, too)."""
    before = watchdog.received
    done = 0
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as out:
            while True:
                watchdog.check()
                try:
                    chunk = response.read1(1 << 16)
                except TimeoutError as exc:
                    raise FetchError(
                        f"input server sent nothing for {policy.timeout:g} s; timed out"
                    ) from exc
                except (OSError, http.client.HTTPException) as exc:
                    raise FetchError(f"download interrupted: {_describe(exc)}") from exc
                watchdog.check()
                if not chunk:
                    break
                done += len(chunk)
                watchdog.received = before + done
                if limit is not None and done > limit:
                    raise FetchError("a playlist, manifest, key or subtitle segment is over "
                                     f"the limit of {limit} bytes")  # fmt: skip
                if before + done > policy.max_bytes:
                    raise FetchError(f"input is over the limit of {policy.max_bytes} bytes")
                if done % SPACE_CHECK_BYTES < len(chunk):  # every few MB written
                    _check_space(dest.parent, policy, 0)
                try:
                    out.write(chunk)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise DiskFull("the server's disk is full; the input was not kept") \
                            from exc  # fmt: skip
                    raise
        if total is not None and done < total:
            raise FetchError(f"download ended early: {done} of {total} bytes")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


#: How often a download checks the disk's free space (bytes written between checks).
SPACE_CHECK_BYTES = 8 * 1024 * 1024


def _check_space(folder: Path, policy: FetchPolicy, needed: int) -> None:
    """:class:`DiskFull` unless ``needed`` more bytes leave the disk above its floor."""
    space = disk_space(folder, policy.min_free_bytes)
    if space.shortfall(needed):
        raise DiskFull(f"the server is low on disk space for this input ({space.describe(needed)})")


def fetch_policy(settings: Settings) -> FetchPolicy:
    """The fetching rules the settings ask for."""
    allowed = frozenset(str(ipaddress.ip_address(h)) for h in settings.allowed_private_hosts)
    return FetchPolicy(
        allowed_hosts=allowed,
        allow_local_files=settings.allow_local_files,
        max_bytes=settings.max_input_bytes,
        timeout=settings.fetch_timeout_seconds,
        max_redirects=settings.max_redirects,
        max_seconds=settings.fetch_max_seconds,
        min_rate=settings.fetch_min_bytes_per_second,
        min_free_bytes=settings.min_free_disk_bytes,
    )
