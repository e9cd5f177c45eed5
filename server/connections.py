"""HTTP connections no client can hold for free, and logs no client can flood.

uvicorn times out idle keep-alive connections but not a request that is never finished: a
client that opens connections and sends half a header keeps them (and their file descriptors)
forever. :func:`http_options` gives uvicorn a protocol that

- closes a connection whose request (headers and body) is not all there
  ``read_timeout`` seconds after the connection opened or its previous response ended;
- closes a connection whose client stops taking its response: the socket's buffers stay full
  (asyncio pauses writing) for ``send_timeout`` seconds, so a client that never reads cannot
  hold a response, its open file or its turn at the segment responses forever;
- keeps at most ``max_connections`` open: one more pushes out the oldest connection that is
  still sending its request (a client that sends its request at once is never the oldest),
  and is refused with 503 only when every connection is busy with a request;
- reports what it closes in one log line per reason and minute, with a count; repeated lines
  of uvicorn and asyncio (a bad request, an ``accept()`` out of descriptors) are collapsed the
  same way.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: File descriptors kept for everything but connections (files, pipes, the database).
RESERVED_DESCRIPTORS = 512
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\nretry-after: 1\r\ncontent-length: 24\r\n\r\nthe server is too busy\r\n"
)
#: The states of a client that has not sent its whole request yet.
_SENDING = (h11.IDLE, h11.SEND_BODY)


class Tally:
    """Counts occurrences of one condition; logs the first, then at most one line per
    ``interval`` seconds with how many there were."""

    def __init__(self, message: str, interval: float = 60.0) -> None:
        self.message, self.interval = message, interval
        self.count = 0
        self._logged: float | None = None

    def add(self) -> None:
        self.count += 1
        now = time.monotonic()
        if self._logged is None or now - self._logged >= self.interval:
            log.warning("%s (%d since the last report)", self.message, self.count)
            self._logged, self.count = now, 0


class RepeatFilter(logging.Filter):
    """Lets a message through the first time, then once per ``interval`` seconds."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}"
        now = time.monotonic()
        last, skipped = self._seen.get(key, (None, 0))
        if last is not None and now - last < self.interval:
            self._seen[key] = (last, skipped + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if skipped:
            record.msg = f"{record.msg} (and {skipped} more like it in the last minute)"
        return True


def guarded_protocol(
    read_timeout: float, max_connections: int, send_timeout: float
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a whole-request deadline, a deadline for a stalled
    response, and a connection cap."""
    waiting: dict[H11Protocol, None] = {}  #: connections sending a request, oldest first
    timed_out = Tally(f"closed connections that did not send a whole request in {read_timeout:g} s")
    stalled = Tally(f"closed connections that took none of their response in {send_timeout:g} s")
    pushed_out = Tally(f"over {max_connections} connections: closed the oldest one still "
                       "sending its request")  # fmt: skip
    refused = Tally(f"over {max_connections} connections, all busy: refused one with 503")

    class GuardedProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _stall: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                oldest = next(iter(waiting), None)
                if oldest is None:
                    refused.add()
                    transport.write(_BUSY)
                    transport.close()
                    return
                pushed_out.add()
                oldest._close()
            self._follow()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_clock()
            self._stall_over()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall is None:
                self._stall = self.loop.call_later(send_timeout, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._stall_over()

        def _stall_over(self) -> None:
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        def _stalled(self) -> None:
            """The client has taken nothing for ``send_timeout`` s: drop the connection (a
            close would wait for the buffered bytes it will never read)."""
            self._stall = None
            stalled.add()
            self.transport.abort()

        def _follow(self) -> None:
            """Start the clock when the connection starts waiting for a request, stop it once
            the request is all there."""
            if self.transport.is_closing():
                self._stop_clock()
            elif self.conn.their_state in _SENDING:
                if self._deadline is None:
                    self._deadline = self.loop.call_later(read_timeout, self._expired)
                    waiting[self] = None
            else:
                self._stop_clock()

        def _stop_clock(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            waiting.pop(self, None)

        def _expired(self) -> None:
            self._deadline = None
            timed_out.add()
            self._close()

        def _close(self) -> None:
            self._stop_clock()
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol


def connection_cap(wanted: int) -> int:
    """``wanted``, or less when this process may not open that many descriptors (leaving
    :data:`RESERVED_DESCRIPTORS` for the rest)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted + RESERVED_DESCRIPTORS <= soft:
        return wanted
    allowed = max(16, soft - RESERVED_DESCRIPTORS)
    log.warning("open files are limited to %d: at most %d connections, not %d", soft, allowed,
                wanted)  # fmt: skip
    return allowed


def http_options(
    read_timeout: float, max_connections: int, send_timeout: float
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``: the guarded protocol, and repeated log lines of
    uvicorn and asyncio collapsed."""
    repeats = RepeatFilter()
    for name in ("uvicorn.error", "asyncio"):
        logging.getLogger(name).addFilter(repeats)
    protocol = guarded_protocol(read_timeout, connection_cap(max_connections), send_timeout)
    return {"http": protocol}
