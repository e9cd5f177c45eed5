"""A dependency-free progress bar for long CLI work (count, rate, ETA) on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Redraws in place on a terminal; elsewhere prints a line at most every ``interval`` s."""

    def __init__(
        self,
        total: int | None,
        label: str,
        unit: str = "it",
        stream: TextIO | None = None,
        interval: float = 2.0,
    ) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._tty = self.stream.isatty()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if self._tty or finished or now - self._last_draw >= self.interval:
            self._last_draw = now
            self._draw(now, note)

    def _draw(self, now: float, note: str) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 24)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_text = f"ETA {eta:5.0f}s" if eta != float("inf") else "ETA    ?"
            text = (
                f"{self.label} [{bar:<24}] {self.done}/{self.total} "
                f"{rate:6.2f} {self.unit}/s {eta_text}"
            )
        else:
            text = f"{self.label} {self.done} {self.unit} {rate:6.2f} {self.unit}/s"
        if note:
            text += f"  {note}"
        end = "" if self._tty else "\n"
        self.stream.write(("\r\x1b[2K" if self._tty else "") + text + end)
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
