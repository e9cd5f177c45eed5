"""Bounded thread pools for the service's blocking work (address checks, downloads, probes,
file removal), kept apart from asyncio's default executor that request handlers rely on, and
apart from each other: however long downloads block, ``POST /jobs`` checks its URL on threads
of its own, and ``/healthz`` keeps its threads.

A pool may also bound the work queued for it: with ``max_waiting``, a call finding every
thread busy and that many calls waiting is refused at once (:class:`PoolBusy`) instead of
queueing without end. A call counts until its thread has finished it, even when the caller
stopped waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class PoolBusy(Exception):
    """Every thread of the pool is busy and its queue is full."""


class BlockingPool:
    def __init__(
        self, threads: int, name: str = "carn-blocking", max_waiting: int | None = None
    ) -> None:
        self.threads, self.max_waiting = threads, max_waiting
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self.pending = 0  #: calls running or waiting for a thread

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self.max_waiting is not None and self.pending >= self.threads + self.max_waiting:
                raise PoolBusy(
                    f"the server is busy ({self.pending} checks or downloads under way); "
                    "try again in a moment"
                )
            self.pending += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._finished)
        return await asyncio.wrap_future(future)

    def _finished(self, _future: Future) -> None:
        with self._lock:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
