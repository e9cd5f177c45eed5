"""A recent processing rate (items per second) and the time left at that rate.

The rate is exponentially weighted over the last few seconds, so a slow start (model
warm-up, the first batch) or a change of pace stops counting after a while. Nothing is
reported until a measurable stretch of time has passed since the first item: one frame done
a microsecond after the clock started says nothing about the rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateMeter:
    """Feed it ``add(n)`` as items finish; read ``rate()`` and ``eta(remaining)``.

    Items are gathered into samples at least ``min_interval`` seconds long (a batch's frames
    finish at the same instant); each sample's rate is blended in with the weight
    ``1 - exp(-duration / window)``, so the estimate follows roughly the last ``window``
    seconds. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        window: float = 5.0,
        min_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0 or min_interval <= 0:
            raise ValueError("window and min_interval must be positive")
        self.window, self.min_interval, self._clock = window, min_interval, clock
        self.total = 0
        self._first: float | None = None
        self._first_n = 0
        self._sample_start: float | None = None
        self._pending = 0
        self._rate: float | None = None

    def add(self, n: int = 1) -> None:
        """``n`` more items finished now."""
        now = self._clock()
        self.total += n
        if self._sample_start is None:
            # The first items only start the clock: how long they took is unknown.
            self._first = self._sample_start = now
            self._first_n = n
            return
        self._pending += n
        span = now - self._sample_start
        if span < self.min_interval:
            return
        sample = self._pending / span
        if self._rate is None:
            self._rate = sample
        else:
            weight = 1.0 - math.exp(-span / self.window)
            self._rate += weight * (sample - self._rate)
        self._sample_start, self._pending = now, 0

    def rate(self) -> float | None:
        """Items per second lately; None until there is enough to measure.

        A stall pulls it down: after a gap with nothing finished, the rate is at most what
        one more item right now would give.
        """
        if self._rate is None or self._sample_start is None:
            return None
        gap = self._clock() - self._sample_start
        if gap > self.min_interval:
            return min(self._rate, (self._pending + 1) / gap)
        return self._rate

    def eta(self, remaining: int) -> float | None:
        """Seconds to finish ``remaining`` items at the recent rate (None if unknown)."""
        rate = self.rate()
        if rate is None or rate <= 0:
            return None
        return max(0, remaining) / rate

    def average(self) -> float | None:
        """Items per second since the first item (None before a measurable span)."""
        if self._first is None:
            return None
        span = self._clock() - self._first
        counted = self.total - self._first_n
        return counted / span if span >= self.min_interval and counted > 0 else None
