"""Where each player of a rendition is: the segment it asked for last, and when.

A player is told apart by the ``viewer`` id its playlists carry (requests without one share
one anonymous playhead per rendition). Prefetch work is kept while it lies ahead of a live
player (one waiting for a segment, or seen within the idle time), so two players at different
places in one rendition do not drop each other's prefetch, while a player's own seek, or its
switch to another rendition, still drops what it left behind.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: (video id, rendition, viewer id); the viewer is "" for requests without one.
Head = tuple[str, str, str]


@dataclass
class _Position:
    index: int
    seen: float  #: when its last request came or ended
    waiting: int = 0  #: its requests waiting for a segment now


class Playheads:
    """The last segment each player asked for; at most ``limit`` players are remembered (the
    longest unseen is forgotten first)."""

    def __init__(
        self,
        idle_seconds: float,
        limit: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_seconds, self.limit, self.clock = idle_seconds, limit, clock
        self._heads: OrderedDict[Head, _Position] = OrderedDict()

    def move(self, head: Head, index: int) -> bool:
        """Record that ``head`` asked for segment ``index``; True when that starts a playback
        or is a seek (not the segment it asked for last, nor the next one). A named player
        that asks for another rendition (a switch) leaves the one it played."""
        video_id, rendition, viewer = head
        if viewer:
            self.forget(video_id, viewer=viewer, keep=rendition)
        before = self._heads.pop(head, None)
        self._heads[head] = _Position(index, self.clock(), before.waiting if before else 0)
        while len(self._heads) > self.limit:
            idle = next((h for h, p in self._heads.items() if not p.waiting), None)
            if idle is None:
                self._heads.popitem(last=False)
            else:
                del self._heads[idle]
        return before is None or index not in (before.index, before.index + 1)

    @contextlib.contextmanager
    def waiting(self, head: Head) -> Iterator[None]:
        """While a request of ``head`` waits for its segment, the player is live however
        long that takes; when it ends, the player was last seen then."""
        position = self._heads.get(head)
        if position is not None:
            position.waiting += 1
        try:
            yield
        finally:
            now = self._heads.get(head)
            if now is not None:
                now.waiting = max(0, now.waiting - 1)
                now.seen = self.clock()

    def at(self, head: Head) -> int | None:
        """The segment ``head`` asked for last, if it is remembered."""
        position = self._heads.get(head)
        return None if position is None else position.index

    def positions(self, video_id: str, rendition: str, exclude: Head | None = None) -> list[int]:
        """Where the rendition's live players are (other than ``exclude``)."""
        oldest = self.clock() - self.idle_seconds
        return [
            p.index
            for head, p in self._heads.items()
            if head[:2] == (video_id, rendition)
            and head != exclude
            and (p.waiting or p.seen >= oldest)
        ]

    def forget(
        self,
        video_id: str,
        rendition: str | None = None,
        viewer: str | None = None,
        keep: str | None = None,
    ) -> None:
        """Forget the video's players (of one rendition, or one player; not on ``keep``)."""
        for head in [
            h
            for h in self._heads
            if h[0] == video_id
            and rendition in (None, h[1])
            and viewer in (None, h[2])
            and h[1] != keep
        ]:
            del self._heads[head]
