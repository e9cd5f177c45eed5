"""Work done for a request stops when its client hangs up.

A handler that waits (a download, a segment being made) is not told by the ASGI server that
its client has gone; :func:`unless_disconnected` listens for ``http.disconnect`` beside the
work and cancels the work when it comes, so that nothing keeps downloading, planning or
upscaling for nobody. Use it once the request's body has been read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(
    receive: Receive, work: Awaitable[T], discard: Callable[[T], object] | None = None
) -> T:
    """``work``'s result; :class:`ClientGone` (``work`` cancelled) if the client hangs up
    first. ``discard`` releases a result that ``work`` made but nobody will get: the client
    hung up, or the request was cancelled, just as ``work`` finished (an opened file, say)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    handed = False
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            handed = True
            return task.result()
        raise ClientGone("the client closed its connection")
    finally:
        for pending in (watcher, task):
            pending.cancel()
        await asyncio.gather(watcher, task, return_exceptions=True)
        made = task.done() and not task.cancelled() and task.exception() is None
        if discard is not None and made and not handed:
            discard(task.result())
