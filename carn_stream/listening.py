"""Whether ``serve`` can listen where it is asked to: checked before the model loads, so a busy
port is one line at once instead of uvicorn's error after the start-up."""

from __future__ import annotations

import errno
import socket


class ListenError(Exception):
    """The service cannot listen on the host and port it was given; the message says why."""


def check_listen(host: str, port: int) -> None:
    """Bind and listen on every address ``host`` resolves to, the way uvicorn will (asyncio's
    ``create_server``: ``SO_REUSEADDR``, IPv6 sockets IPv6-only, an empty host for all
    interfaces), then let go. Port 0 (any free port) always works and is not tried."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host!r}: {exc.strerror}; pass --host") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this system lacks: asyncio skips it too
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
                sock.listen()
            except OSError as exc:
                raise ListenError(_reason(exc, host, port)) from None
    finally:
        for sock in sockets:
            sock.close()


def _reason(exc: OSError, host: str, port: int) -> str:
    where = host or "every interface"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use on {where}; pass --port (or set CARN_STREAM_PORT)"
    if exc.errno == errno.EACCES:
        return f"port {port} needs privileges on {where}; pass --port 1024 or above"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: not an address of this machine; pass --host"
    return f"cannot listen on {where} port {port}: {exc.strerror or exc}"


def check_ice_hosts(addresses: tuple[str, ...]) -> None:
    """Each address live sessions gather ICE candidates on must be this machine's (a typo
    gave answers without a candidate, and every session was reaped unconnected)."""
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((address, 0))
        except OSError as exc:
            raise ListenError(f"CARN_STREAM_LIVE_ICE_HOSTS: {address} is not an address of this "
                              f"machine ({exc.strerror or exc})") from None  # fmt: skip

