"""Waiting with a time limit without ever losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns the awaited result when a cancellation arrives
in the same moment the awaitable completes: the cancelled task carries on as if nothing had
happened. A pipeline stage that does so outlives the TaskGroup's abort and waits forever on
a queue whose other end has stopped. :func:`wait_at_most` awaits in the caller's own task
under ``asyncio.timeout``, where a cancellation always wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_at_most(seconds: float, awaitable: Awaitable[T]) -> T | None:
    """``awaitable``'s result, or None when ``seconds`` pass first (its work is then
    cancelled; so ``awaitable`` itself should never give None). A cancellation of the caller
    always propagates."""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            return await awaitable
    except TimeoutError:
        return None
