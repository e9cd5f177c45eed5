"""``auto`` precision on a CPU: time each available mode on a real frame, drop the ones that
lose quality, keep the fastest, and remember the decision per CPU, weights and input size.

The probe treats (the centre of) the frame as the high-resolution truth: its bicubic
downscale (the benchmarks' degradation) is upscaled by every mode; a mode is dropped when its
luma PSNR against the frame falls more than ``bound_db`` below the reference mode's (fp32).
The modes that keep the quality are then timed on the frame itself (its centre, up to
:data:`TIMING_PIXELS`): which backend is fastest depends on the size, so a small probe would
mislead.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from carn_stream.model.evaluation import crop_to_multiple, degrade
from carn_stream.model.metrics import psnr, rgb_to_y, shave

log = logging.getLogger(__name__)

Backend = Callable[[Tensor, int], Tensor]
QUALITY_BOUND_DB = 0.05  #: largest PSNR loss against fp32 that auto accepts
TIME_BUDGET_S = 1.0  #: timed runs, all modes together (first runs and compiles come on top)
MAX_RUNS = 10
#: A mode whose first timed run is this much slower than the best median so far is not
#: timed further.
SLOWER_BY = 1.5
#: The probe's input has at most this many pixels (a centre crop of large frames): the ranking
#: of convolution backends holds across sizes, and a large frame would make first use slow.
PROBE_PIXELS = 25_000
MIN_PROBE_SIDE = 8  #: smaller inputs (in LR pixels) run the reference mode unmeasured
#: A probe whose luma varies less than this (standard deviation, 8-bit levels) cannot tell the
#: modes' quality apart (a black or flat frame: every mode reproduces it): the reference mode
#: runs, and the choice waits for a frame with detail.
MIN_PROBE_DETAIL = 2.0
#: Modes are timed on (the centre of) the real input, at most this many pixels.
TIMING_PIXELS = 120_000


@dataclass
class Trial:
    mode: str
    ms: float | None = None  #: median milliseconds per call on the probe
    loss_db: float | None = None  #: PSNR lost against the reference mode on the probe
    note: str = ""  #: why a mode was left out


@dataclass
class Decision:
    mode: str
    trials: list[Trial] = field(default_factory=list)
    cached: bool = False
    #: for this frame only (it could not judge quality): not kept, decided again on the next
    provisional: bool = False
    #: taken from the nearest size measured at the same scale (a frame that must not wait for
    #: a measurement: live), not measured at this size
    borrowed: bool = False

    def table(self) -> str:
        lines = [f"{'mode':<10}{'ms':>10}{'loss dB':>10}  note"]
        for t in self.trials:
            ms = f"{t.ms:.1f}" if t.ms is not None else "-"
            loss = f"{t.loss_db:.3f}" if t.loss_db is not None else "-"
            note = "chosen" if t.mode == self.mode else t.note
            lines.append(f"{t.mode:<10}{ms:>10}{loss:>10}  {note}")
        return "\n".join(lines)


def _to_uint8(x: Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] -> HxWx3 uint8 on the host."""
    return (x[0].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _probe_psnr(backend: Backend, lr: Tensor, hr: np.ndarray, scale: int) -> float:
    """PSNR of the mode's upscale of ``lr``; its first call, so also its warm-up."""
    sr = _to_uint8(backend(lr, scale))
    return psnr(shave(rgb_to_y(sr), scale), shave(rgb_to_y(hr), scale))


def centre_crop(frame: Tensor, pixels: int) -> Tensor:
    """The centre of ``frame`` (N, C, H, W), same aspect, at most ``pixels`` per image."""
    h, w = frame.shape[-2:]
    if h * w <= pixels:
        return frame
    f = (pixels / (h * w)) ** 0.5
    ch, cw = max(int(h * f), 1), max(int(w * f), 1)
    y, x = (h - ch) // 2, (w - cw) // 2
    return frame[..., y : y + ch, x : x + cw]


def _seconds(backend: Backend, x: Tensor, scale: int) -> float:
    start = time.perf_counter()
    backend(x, scale)
    return time.perf_counter() - start


def _median_ms(backend: Backend, x: Tensor, scale: int, seconds: float) -> float:
    times = [_seconds(backend, x, scale)]
    while sum(times) < seconds and len(times) < MAX_RUNS:
        times.append(_seconds(backend, x, scale))
    return statistics.median(times) * 1000


def measure(
    candidates: Mapping[str, Callable[[], Backend]],
    frame: Tensor,
    scale: int,
    reference: str = "fp32",
    bound_db: float = QUALITY_BOUND_DB,
    budget_s: float = TIME_BUDGET_S,
) -> Decision:
    """Pick the fastest of ``candidates`` (name -> backend factory, the likely fastest first) on
    ``frame`` (1, 3, H, W), float in [0, 1], on the backends' device. ``reference`` must be
    among the candidates; a factory that raises is reported as unavailable.

    Every mode within the quality bound then runs once on the real input's size (its warm-up
    there), is timed once more and, unless that run is :data:`SLOWER_BY` times slower than the
    best so far, for its share of ``budget_s``.
    """
    hr = crop_to_multiple(_to_uint8(centre_crop(frame, PROBE_PIXELS * scale * scale)), scale)
    if min(hr.shape[:2]) < MIN_PROBE_SIDE * scale:
        return Decision(reference, [Trial(reference, note="input too small to measure")])
    if float(rgb_to_y(hr).std()) < MIN_PROBE_DETAIL:
        flat = Trial(reference, note="frame too flat to judge quality: decided on a later one")
        return Decision(reference, [flat], provisional=True)
    lr_array = degrade(hr, scale)
    lr = frame.new_tensor(lr_array).permute(2, 0, 1)[None].float() / 255
    trials: dict[str, Trial] = {}
    backends: dict[str, Backend] = {}
    for name, make in candidates.items():
        try:
            backends[name] = make()
        except (ImportError, RuntimeError, ValueError) as exc:
            trials[name] = Trial(name, note=f"unavailable: {exc}")
    if reference not in backends:
        raise RuntimeError(f"auto precision needs the {reference} mode as its reference")
    base = _probe_psnr(backends[reference], lr, hr, scale)
    fit = [reference]
    trials[reference] = Trial(reference, loss_db=0.0)
    for name, backend in backends.items():
        if name == reference:
            continue
        try:  # (its first call: it may compile and write to its cache)
            loss = base - _probe_psnr(backend, lr, hr, scale)
        except (ImportError, OSError, RuntimeError, ValueError) as exc:
            trials[name] = Trial(name, note=f"unavailable: {exc}")
            continue
        trials[name] = Trial(name, loss_db=loss)
        if not loss <= bound_db:  # (also a loss that cannot be told: NaN)
            trials[name].note = f"loses more than {bound_db} dB"
        else:
            fit.append(name)
    timed = centre_crop(frame, TIMING_PIXELS)
    best, chosen = float("inf"), fit[0]
    for name in fit:
        try:  # first use of this size (compiles, warms up)
            _seconds(backends[name], timed, scale)
        except (ImportError, OSError, RuntimeError, ValueError) as exc:
            if name == reference:
                raise
            trials[name].note = f"unavailable: {exc}"
            continue
        first = _seconds(backends[name], timed, scale) * 1000
        if first > SLOWER_BY * best:
            trials[name].ms, trials[name].note = first, "slower (one run)"
            continue
        ms = trials[name].ms = _median_ms(backends[name], timed, scale, budget_s / len(fit))
        if ms < best:
            best, chosen = ms, name
    ordered = [trials[name] for name in candidates]
    return Decision(chosen, ordered)


class DecisionCache:
    """Decisions kept in a small JSON file, keyed by whatever identifies the measurement."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict:
        """The file's entries ({} where it is missing, unreadable or not an object)."""
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> Decision | None:
        """The decision kept for ``key`` (None where there is none, or it does not read)."""
        entry = self._load().get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("mode"), str):
            return None
        try:
            trials = [Trial(**t) for t in entry.get("trials", []) if isinstance(t, dict)]
        except TypeError:  # (a trial of another shape: measured again)
            return None
        return Decision(entry["mode"], trials, cached=True)

    def nearest(self, near: Callable[[str], float | None]) -> tuple[float, Decision] | None:
        """The kept decision whose key ``near`` scores lowest, with its score (None where it
        scores none)."""
        scored = sorted((score, k) for k in self._load() if (score := near(k)) is not None)
        for score, key in scored:
            if (decision := self.get(key)) is not None:
                return score, decision
        return None

    def put(self, key: str, decision: Decision) -> None:
        entries = self._load()
        entries[key] = {"mode": decision.mode, "trials": [asdict(t) for t in decision.trials]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".precision-")
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only cache only costs a new measurement next time
            log.warning("could not save the precision choice to %s: %s", self.path, exc)
