"""The executor's slots, handed out by priority: a player waiting for a segment goes first.

Lower priority values go first (the inference worker's scale: waited-for segments, then
prefetched ones, then batch jobs); equal priorities go in arrival order. Work more urgent
than prefetch work (a segment a player waits for) may use ``urgent_extra`` slots beyond the
capacity, so a player never waits for a job's or a prefetch's segment to finish before its
own can start. A waiter's priority can be raised while it waits (a player now waits for a
segment that was being fetched ahead).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from carn_stream.pipeline.infer import InferenceWorker


@dataclass(eq=False)
class Ticket:
    priority: int
    seq: int
    granted: asyncio.Future | None = field(default=None, repr=False)


class PrioritySlots:
    def __init__(
        self,
        capacity: int,
        urgent_extra: int = 1,
        urgent_below: int = InferenceWorker.PREFETCH_PRIORITY,
    ) -> None:
        self.capacity, self.urgent_extra, self.urgent_below = capacity, urgent_extra, urgent_below
        self.busy = 0
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()

    def ticket(self, priority: int) -> Ticket:
        return Ticket(priority, next(self._seq))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _limit(self, priority: int) -> int:
        return self.capacity + (self.urgent_extra if priority < self.urgent_below else 0)

    async def acquire(self, ticket: Ticket) -> None:
        """Wait for a slot; release it with :meth:`release`."""
        ticket.granted = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        self._grant()
        try:
            await ticket.granted
        except asyncio.CancelledError:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            elif ticket.granted.done() and not ticket.granted.cancelled():
                self.release()  # granted just as it was cancelled
            raise

    def release(self) -> None:
        self.busy -= 1
        self._grant()

    def raise_priority(self, ticket: Ticket, priority: int) -> None:
        if priority < ticket.priority:
            ticket.priority = priority
            self._grant()

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
    async def __aenter__(self) -> PrioritySlots:
        await self.acquire(self.ticket(InferenceWorker.JOB_PRIORITY))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
