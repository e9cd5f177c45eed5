"""Fetch job inputs safely: size cap, timeouts, bounded redirects, no requests to private hosts.

Every hop's host is resolved once, every resolved address is checked, and the connection goes
to the checked address (no second lookup a DNS answer could change in between). Loopback,
private, link-local, shared, multicast, reserved and unspecified addresses are refused unless
allow-listed. The body streams to a file, never whole into memory.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from carn_stream.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """The input cannot be fetched; the message says why."""


class FetchCancelled(FetchError):
    pass


@dataclass(frozen=True)
class FetchPolicy:
    allowed_hosts: frozenset[str] = frozenset()  #: non-public IPs that are allowed anyway
    allow_local_files: bool = False
    max_bytes: int = 2 * 1024**3
    timeout: float = 20.0  #: seconds to connect, and seconds without data
    max_redirects: int = 5


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return is_public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


def check_address(address: str, policy: FetchPolicy) -> IPAddress:
    """The parsed address if a fetch may connect to it; otherwise :class:`FetchError`."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if is_public(ip) or str(ip) in policy.allowed_hosts:
        return ip
    raise FetchError(f"address {ip} is not public and not allow-listed; refused")


def resolve(host: str, port: int, policy: FetchPolicy) -> list[IPAddress]:
    """Resolve ``host`` and check every address it has (one bad address refuses the host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    return [check_address(a, policy) for a in addresses]


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"unsupported URL scheme {parts.scheme!r}: use http or https")
        if not parts.hostname:
            raise FetchError(f"URL {url!r} has no host")
        if parts.username or parts.password:
            raise FetchError("URLs with credentials are not accepted")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise FetchError(f"bad port in {url!r}") from exc
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)


def validate_url(url: str, policy: FetchPolicy) -> str:
    """Checks that can be made at submission: scheme, host and its addresses (or local file)."""
    if policy.allow_local_files and (url.startswith("file://") or url.startswith("/")):
        path = Path(urllib.parse.urlsplit(url).path if url.startswith("file://") else url)
        if not path.is_file():
            raise FetchError(f"local file {path} does not exist")
        return url
    target = Target.parse(url)
    resolve(target.host, target.port, policy)
    return url


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, address: IPAddress, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._address = str(address)

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, address: IPAddress, *args, **kwargs) -> None:
        super().__init__(*args, context=ssl.create_default_context(), **kwargs)
        self._address = str(address)

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def fetch(
    url: str,
    dest: Path,
    policy: FetchPolicy,
    cancelled: threading.Event | None = None,
    on_bytes: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download ``url`` (or copy a permitted local file) to ``dest``."""
    if policy.allow_local_files and (url.startswith("file://") or url.startswith("/")):
        return Path(validate_url(url, policy).removeprefix("file://"))
    current = url
    for _hop in range(policy.max_redirects + 1):
        target = Target.parse(current)
        addresses = resolve(target.host, target.port, policy)
        response, conn = _request(target, addresses, policy)
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"redirect without a Location from {current}")
                current = urllib.parse.urljoin(current, location)
                continue
            if response.status != 200:
                raise FetchError(f"{current} answered HTTP {response.status} {response.reason}")
            length = response.getheader("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > policy.max_bytes:
                raise FetchError(f"input is {total} bytes, over the limit of {policy.max_bytes}")
            _stream_body(response, dest, policy, total, cancelled, on_bytes)
            return dest
        finally:
            conn.close()
    raise FetchError(f"more than {policy.max_redirects} redirects")


def _request(target: Target, addresses: Iterable[IPAddress], policy: FetchPolicy):
    errors = []
    for address in addresses:
        cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        conn = cls(address, target.host, target.port, timeout=policy.timeout)
        try:
            conn.request("GET", target.path, headers={"User-Agent": "carn-stream"})
            return conn.getresponse(), conn
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            errors.append(f"{address}: {_describe(exc)}")
    raise FetchError(f"cannot fetch from {target.host}: {'; '.join(errors)}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


def _stream_body(response, dest: Path, policy: FetchPolicy, total, cancelled, on_bytes) -> None:
    done = 0
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as out:
            while True:
                if cancelled is not None and cancelled.is_set():
                    raise FetchCancelled("cancelled")
                try:
                    chunk = response.read(1 << 16)
                except TimeoutError as exc:
                    raise FetchError(
                        f"input server sent nothing for {policy.timeout:g} s; timed out"
                    ) from exc
                except (OSError, http.client.HTTPException) as exc:
                    raise FetchError(f"download interrupted: {_describe(exc)}") from exc
                if not chunk:
                    break
                done += len(chunk)
                if done > policy.max_bytes:
                    raise FetchError(f"input is over the limit of {policy.max_bytes} bytes")
                out.write(chunk)
                if on_bytes:
                    on_bytes(done, total)
        if total is not None and done < total:
            raise FetchError(f"download ended early: {done} of {total} bytes")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_policy(settings: Settings) -> FetchPolicy:
    """The fetching rules the settings ask for."""
    allowed = frozenset(str(ipaddress.ip_address(h)) for h in settings.allowed_private_hosts)
    return FetchPolicy(
        allowed_hosts=allowed,
        allow_local_files=settings.allow_local_files,
        max_bytes=settings.max_input_bytes,
        timeout=settings.fetch_timeout_seconds,
        max_redirects=settings.max_redirects,
    )
