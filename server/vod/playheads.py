"""Where each player of a rendition is: the segment it asked for last, and when.

A player is told apart by the ``viewer`` id its playlists carry (requests without one share
one anonymous playhead per rendition). Prefetch work is kept while it lies ahead of any player
seen within the idle time, so two players at different places in one rendition do not drop
each other's prefetch, while a player's own seek still drops what it left behind.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: (video id, rendition, viewer id); the viewer is "" for requests without one.
Head = tuple[str, str, str]


@dataclass
class _Position:
    index: int
    seen: float


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
        or is a seek (not the segment it asked for last, nor the next one)."""
        before = self._heads.pop(head, None)
        self._heads[head] = _Position(index, self.clock())
        while len(self._heads) > self.limit:
            self._heads.popitem(last=False)
        return before is None or index not in (before.index, before.index + 1)

    def positions(self, video_id: str, rendition: str) -> list[int]:
        """The segments the rendition's players seen within the idle time asked for last."""
        oldest = self.clock() - self.idle_seconds
        return [
            p.index
            for (video, name, _), p in self._heads.items()
            if (video, name) == (video_id, rendition) and p.seen >= oldest
        ]

    def forget(
        self, video_id: str, rendition: str | None = None, viewer: str | None = None
    ) -> None:
        """Forget the video's players (of one rendition, or one player)."""
        for head in [
            h
            for h in self._heads
            if h[0] == video_id and rendition in (None, h[1]) and viewer in (None, h[2])
        ]:
            del self._heads[head]
