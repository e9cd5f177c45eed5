"""How fast this machine upscales, per input size, and whether that keeps up with a source.

Every upscaled frame's report carries the model's time on its batch, its input size and scale
(:class:`~carn_stream.pipeline.run.FrameReport`). The book keeps the recent per-frame times of
each (scale, input size), separately for live sessions (this process's inference worker) and
for segments (the executor: a worker process, or a cluster's actors). A size not seen yet is
estimated from the nearest size seen at the same scale, by pixel count (CARN-M's work grows
with the input's pixels); before any frame at that scale, nothing is known. The engine's speed
is so known after its first frame at a size, as ``auto`` decides then.
"""

from __future__ import annotations

import statistics
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

from carn_stream.pipeline.run import FrameReport

Where = Literal["live", "segments"]
WINDOW = 30  #: recent frames per size whose median is the size's speed
MAX_SIZES = 64  #: sizes kept (the least recently measured go first)


@dataclass(frozen=True)
class Pace:
    """The model's speed at one size against a source's frame rate."""

    scale: int
    width: int
    height: int
    fps: float | None  #: frames per second the model makes (None: nothing measured yet)
    source_fps: float | None
    measured: bool  #: at this size (else estimated from ``basis``)
    basis: str  #: where the figure comes from, as a user reads it

    @property
    def keeps_up(self) -> bool | None:
        """The model makes frames at least as fast as the source shows them (None: unknown)."""
        if self.fps is None or not self.source_fps:
            return None
        return self.fps >= self.source_fps

    def text(self) -> str:
        size = f"x{self.scale} at {self.width}x{self.height}"
        if self.fps is None:
            return f"{size}: not measured yet on this machine (known after its first frame)"
        said = f"{size}: {self.fps:.1f} fps ({self.basis})"
        if self.keeps_up is None:
            return said
        verdict = "keeps up with" if self.keeps_up else "cannot keep up with"
        return f"{said}; this machine {verdict} {self.source_fps:g} fps"

    def as_dict(self) -> dict:
        return {
            "scale": self.scale, "input": [self.width, self.height],
            "fps": None if self.fps is None else round(self.fps, 2),
            "source_fps": self.source_fps, "keeps_up": self.keeps_up,
            "measured": self.measured, "basis": self.basis, "text": self.text(),
        }  # fmt: skip


@dataclass
class _Size:
    seconds: deque[float]
    source_fps: float | None = None


class SpeedBook:
    """Written by the event loop (frame reports), read by request threads: one lock."""

    def __init__(self) -> None:
        self._sizes: OrderedDict[tuple[str, int, int, int], _Size] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, report: FrameReport, where: Where) -> None:
        """Record a frame's model time (its batch's, shared by the batch's frames)."""
        if report.scale and report.size[0] and report.timings.inference > 0:
            seconds = report.timings.inference / max(1, report.batch_frames)
            self.record(where, report.scale, *report.size, seconds, report.frame_rate)

    def record(
        self, where: Where, scale: int, width: int, height: int, seconds: float,
        source_fps: float | None = None,
    ) -> None:  # fmt: skip
        key = (where, scale, width, height)
        with self._lock:
            size = self._sizes.get(key)
            if size is None:
                size = self._sizes[key] = _Size(deque(maxlen=WINDOW))
                while len(self._sizes) > MAX_SIZES:
                    self._sizes.popitem(last=False)
            self._sizes.move_to_end(key)
            size.seconds.append(seconds)
            if source_fps:
                size.source_fps = source_fps

    def seen(self) -> list[dict]:
        """Every size measured so far, per path (what ``/readyz`` reports)."""
        out = []
        with self._lock:
            for (where, scale, width, height), size in self._sizes.items():
                pace = Pace(scale, width, height, _fps(size), size.source_fps, True, _over(size))
                out.append({"where": where, "frames": len(size.seconds), **pace.as_dict()})
        return out

    def pace(
        self, scale: int, width: int, height: int, source_fps: float | None,
        prefer: tuple[Where, ...] = ("segments", "live"),
    ) -> Pace:  # fmt: skip
        """The speed at this size: measured there (on the first path of ``prefer`` that did),
        else estimated from the nearest size measured at this scale."""
        with self._lock:
            return self._pace(scale, width, height, source_fps, prefer)

    def _pace(
        self, scale: int, width: int, height: int, source_fps: float | None,
        prefer: tuple[Where, ...],
    ) -> Pace:  # fmt: skip
        for where in prefer:
            size = self._sizes.get((where, scale, width, height))
            if size is not None:
                return Pace(scale, width, height, _fps(size), source_fps, True, _over(size))
        pixels = width * height
        nearest = None
        for where in prefer:
            for (w, s, sw, sh), size in self._sizes.items():
                if w == where and s == scale:
                    distance = abs(sw * sh - pixels)
                    if nearest is None or distance < nearest[0]:
                        nearest = (distance, sw, sh, size)
            if nearest is not None:
                break
        if nearest is None:
            return Pace(scale, width, height, None, source_fps, False, "not measured yet")
        _, sw, sh, size = nearest
        fps = _fps(size) * sw * sh / max(1, pixels)
        basis = f"estimated from x{scale} at {sw}x{sh} by pixel count"
        return Pace(scale, width, height, fps, source_fps, False, basis)


def _over(size: _Size) -> str:
    count = len(size.seconds)
    return f"measured over {count} frame{'s' * (count != 1)}"


def _fps(size: _Size) -> float:
    return 1.0 / max(statistics.median(size.seconds), 1e-9)
