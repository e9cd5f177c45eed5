"""An executor's slots, shared by everything that sends it segments, handed out by priority.

Lower priority values go first (the inference worker's scale: a segment a player waits for,
then prefetched ones, then batch jobs); equal priorities go in arrival order, so runs that
share the slots take turns (a long job does not starve a short one submitted after it). The
capacity may follow the executor (a cluster grows and shrinks): waiters look again every
``recheck`` seconds. Work more urgent than ``urgent_below`` may use ``urgent_extra`` slots
beyond the capacity, so a waiting player never waits for other work to finish first; a
waiter's priority can be raised while it waits.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from carn_stream.pipeline.priorities import Priority


@dataclass(eq=False)
class Ticket:
    priority: int
    seq: int
    granted: asyncio.Future | None = field(default=None, repr=False)


class Slots:
    def __init__(
        self,
        capacity: int | Callable[[], int],
        recheck: float = 1.0,
        urgent_extra: int = 0,
        urgent_below: int = Priority.PREFETCH,
    ) -> None:
        self._capacity = capacity if callable(capacity) else (lambda: capacity)
        self.recheck, self.urgent_extra, self.urgent_below = recheck, urgent_extra, urgent_below
        self.busy = 0
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()

    @property
    def capacity(self) -> int:
        return max(1, self._capacity())

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def ticket(self, priority: int = Priority.JOB) -> Ticket:
        return Ticket(priority, next(self._seq))

    async def acquire(self, ticket: Ticket | None = None) -> None:
        """Wait for a slot (at a job's priority unless ``ticket`` says otherwise); give it
        back with :meth:`release`."""
        ticket = ticket or self.ticket()
        ticket.granted = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        self._grant()
        try:
            while not ticket.granted.done():
                # (asyncio.wait, not wait_for: a cancellation arriving as the slot is granted
                # must not be lost)
                await asyncio.wait({ticket.granted}, timeout=self.recheck)
                self._grant()  # the capacity may have grown meanwhile
        except BaseException:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            elif ticket.granted.done() and not ticket.granted.cancelled():
                self.release()  # granted just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        self.busy -= 1
        self._grant()

    def raise_priority(self, ticket: Ticket, priority: int) -> None:
        if priority < ticket.priority:
            ticket.priority = priority
            self._grant()

    def _limit(self, priority: int) -> int:
        return self.capacity + (self.urgent_extra if priority < self.urgent_below else 0)

    def _grant(self) -> None:
        while self._waiting:
            best = min(self._waiting, key=lambda t: (t.priority, t.seq))
            if self.busy >= self._limit(best.priority):
                return
            self._waiting.remove(best)
            self.busy += 1
            assert best.granted is not None
            best.granted.set_result(None)

    # A batch job's segments hold a slot with ``async with slots:``.
    async def __aenter__(self) -> Slots:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
