"""A dependency-free progress bar for long CLI work (count, recent rate, ETA) on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from carn_stream.progress_rate import RateMeter


class ProgressBar:
    """Redraws in place on a terminal; elsewhere prints a line at most every ``interval`` s.

    Rate and ETA come from a :class:`RateMeter` (the last few seconds), and are left out
    until there is enough to measure; the last line gives the average rate instead.
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        unit: str = "it",
        stream: TextIO | None = None,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = 0
        self._clock = clock
        self.meter = RateMeter(clock=clock)
        self._last_draw: float | None = None
        self._tty = self.stream.isatty()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.meter.add(n)
        now = self._clock()
        finished = self.total is not None and self.done >= self.total
        due = self._last_draw is None or now - self._last_draw >= self.interval
        if self._tty or finished or due:
            self._last_draw = now
            self.stream.write(self._line(now, finished, note))
            self.stream.flush()

    def _line(self, now: float, finished: bool, note: str) -> str:
        rate = self.meter.rate()
        if finished:
            average = self.meter.average()
            speed = "" if average is None else f"{average:.2f} {self.unit}/s on average"
        elif rate is None:
            speed = "measuring speed"
        else:
            speed = f"{rate:.2f} {self.unit}/s"
            eta = self.meter.eta(self.total - self.done) if self.total else None
            if eta is not None:
                speed += f" ETA {eta:.0f}s"
        if self.total:
            bar = "#" * int(min(self.done / self.total, 1.0) * 24)
            text = f"{self.label} [{bar:<24}] {self.done}/{self.total} {speed}".rstrip()
        else:
            text = f"{self.label} {self.done} {self.unit} {speed}".rstrip()
        if note:
            text += f"  {note}"
        return ("\r\x1b[2K" + text) if self._tty else text + "\n"

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
