"""The per-title report: what storing a title at 1/``scale`` size and upscaling it gives,
measured on the title's own frames against the original.

Two parts, both on one window of consecutive frames (VMAF's motion feature and the temporal
measure need neighbours):

- variants: the low-resolution copy at the stored CRF upscaled by each given upscaler
  (bicubic, the generic model, the title's model), in PSNR and SSIM (BT.601 luma, the
  evaluation protocol), VMAF (BT.709 luma) and temporal error;
- rate-quality curves: the original size encoded at each CRF, against the low-resolution copy
  at the same CRFs upscaled by each curve upscaler. Bitrates are of the whole title's encode
  (a window alone would be mostly its first, intra-coded frame); BD-rate by VMAF and by PSNR,
  over all points and over the points whose copy stays within a bitrate cap, and the bitrate
  ranges where upscaling wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carn_stream.model.bdrate import bd_rate, winning_ranges
from carn_stream.model.evaluation import Upscaler, luma_scores
from carn_stream.model.metrics import mean_psnr
from carn_stream.model.temporal import motions, warping_error
from carn_stream.model.vmaf import Vmaf, luma
from carn_stream.pipeline.media.delivery import EncodedCopy, encode_copy
from carn_stream.pipeline.title_frames import frame_count, read_frames

#: The original size is the anchor curve; upscaled curves are named after their upscaler.
DIRECT = "original size"


@dataclass(frozen=True)
class VariantScore:
    name: str
    psnr: float
    ssim: float
    vmaf: float
    temporal: float  #: warping error, luma codes (lower is steadier)


@dataclass(frozen=True)
class CurvePoint:
    crf: int
    kbps: float
    psnr: float
    vmaf: float


@dataclass
class TitleReport:
    source: str
    scale: int
    codec: str
    store_crf: int
    window: tuple[int, int]  #: first frame, frame count
    size: tuple[int, int]  #: measured output (width, height)
    variants: list[VariantScore] = field(default_factory=list)
    curves: dict[str, list[CurvePoint]] = field(default_factory=dict)
    bd_rate: dict[str, dict[str, float | None]] = field(default_factory=dict)  #: curve -> measure
    wins_kbps: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    copy_cap_kbps: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: float) -> float | None:
    """JSON has no NaN: a BD-rate of curves without a common range is None."""
    return round(value, 2) if math.isfinite(value) else None


def _points(points: Sequence[CurvePoint], measure: str) -> list[tuple[float, float]]:
    return [(p.kbps, getattr(p, measure)) for p in points]


def compare_curves(report: TitleReport) -> None:
    """Fill ``bd_rate`` and ``wins_kbps`` of every upscaled curve against the direct one."""
    anchor = report.curves[DIRECT]
    for name, points in report.curves.items():
        if name == DIRECT:
            continue
        cap = report.copy_cap_kbps
        capped = [p for p in points if cap is None or p.kbps <= cap]
        rates: dict[str, float | None] = {}
        wins: dict[str, list[tuple[float, float]]] = {}
        for measure in ("vmaf", "psnr"):
            a = _points(anchor, measure)
            rates[measure] = _finite(bd_rate(a, _points(points, measure)))
            if len(capped) >= 2:
                rates[f"{measure}_capped"] = _finite(bd_rate(a, _points(capped, measure)))
            wins[measure] = [(round(lo), round(hi)) for lo, hi in
                             winning_ranges(a, _points(points, measure))]  # fmt: skip
        report.bd_rate[name] = rates
        report.wins_kbps[name] = wins


class _Clock:
    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    def add(self, part: str, began: float) -> None:
        self.seconds[part] = round(self.seconds.get(part, 0.0) + time.monotonic() - began, 1)


def assess_title(
    source: str | Path,
    scale: int,
    upscalers: Mapping[str, Upscaler],
    work_dir: Path,
    *,
    curve_upscalers: Sequence[str] = (),
    codec: str = "h264",
    crfs: Sequence[int] = (22, 26, 30, 34, 38),
    store_crf: int = 30,
    frames: int = 12,
    start: int | None = None,
    preset: str | None = None,
    copies: Mapping[int, EncodedCopy] | None = None,
    copy_cap_kbps: float | None = 1500.0,
    vmaf_device: str = "cpu",
    on_step: Callable[[str], None] | None = None,
) -> TitleReport:
    """Measure ``upscalers`` (name -> upscaler; the variants) on the title's copy at
    ``store_crf``, and the rate-quality curves of the original size and of the copy upscaled
    by each of ``curve_upscalers``. ``copies``: low-resolution copies already made, by CRF."""
    say = on_step or (lambda _: None)
    clock_seconds: dict[str, float] = {}
    clock = _Clock(clock_seconds)
    total = frame_count(source)
    frames = min(frames, total)
    first = max(0, min(total - frames, total // 2 - frames // 2 if start is None else start))
    window = range(first, first + frames)
    began = time.monotonic()
    originals = read_frames(source, window)
    clock.add("decode", began)
    vmaf = Vmaf(vmaf_device)
    ref_rgb: np.ndarray | None = None
    ref_y: list[np.ndarray] = []
    motion = None
    report = TitleReport(str(source), scale, codec, store_crf, (first, frames), (0, 0),
                         copy_cap_kbps=copy_cap_kbps, seconds=clock_seconds)  # fmt: skip

    def measure(outputs: list[np.ndarray], temporal: bool) -> tuple[float, float, float, float]:
        nonlocal motion
        t = time.monotonic()
        scores = [luma_scores(o, h, scale) for o, h in zip(outputs, ref_rgb, strict=True)]
        ys = [luma(o) for o in outputs]
        clock.add("psnr/ssim", t)
        t = time.monotonic()
        v = float(vmaf.scores(ref_y, ys).mean())
        clock.add("vmaf", t)
        tempo = float("nan")
        if temporal:
            t = time.monotonic()
            motion = motion if motion is not None else motions(ref_y)
            tempo = warping_error(ys, ref_y, motion)
            clock.add("temporal", t)
        return (mean_psnr([s[0] for s in scores]), float(np.mean([s[1] for s in scores])),
                v, tempo)  # fmt: skip

    report.curves[DIRECT] = []
    for name in curve_upscalers:
        report.curves[name] = []
    for crf in sorted(set(crfs) | {store_crf}):
        t = time.monotonic()
        say(f"CRF {crf}: encoding")
        low = (copies or {}).get(crf) or encode_copy(
            source, work_dir / f"x{scale}-{codec}-crf{crf}.mp4", scale=scale, codec=codec,
            crf=crf, preset=preset, video_only=True)  # fmt: skip
        clock.add("encode", t)
        t = time.monotonic()
        lr = read_frames(low.path, window)
        clock.add("decode", t)
        if ref_rgb is None:
            h, w = lr[first].shape[:2]
            ref_rgb = [np.ascontiguousarray(originals[i][: h * scale, : w * scale]) for i in window]
            ref_y = [luma(f) for f in ref_rgb]
            report.size = (w * scale, h * scale)
        names = list(upscalers) if crf == store_crf else []
        names += [n for n in curve_upscalers if crf in crfs and n not in names]
        for name in names:
            say(f"CRF {crf}: {name}")
            t = time.monotonic()
            outputs = [upscalers[name](lr[i], scale) for i in window]
            clock.add(f"upscale {name}", t)
            p, s, v, tempo = measure(outputs, temporal=crf == store_crf)
            if crf == store_crf and name in upscalers:
                report.variants.append(VariantScore(name, round(p, 3), round(s, 4), round(v, 2),
                                                    round(tempo, 3)))  # fmt: skip
            if name in curve_upscalers and crf in crfs:
                report.curves[name].append(CurvePoint(crf, round(low.bitrate / 1000, 1),
                                                      round(p, 3), round(v, 2)))  # fmt: skip
        if crf not in crfs:
            continue
        say(f"CRF {crf}: original size")
        t = time.monotonic()
        direct = encode_copy(source, work_dir / f"x1-{codec}-crf{crf}.mp4", scale=1, codec=codec,
                             crf=crf, preset=preset, video_only=True)  # fmt: skip
        clock.add("encode", t)
        t = time.monotonic()
        decoded = read_frames(direct.path, window)
        clock.add("decode", t)
        h, w = report.size[1], report.size[0]
        outputs = [np.ascontiguousarray(decoded[i][:h, :w]) for i in window]
        p, _, v, _ = measure(outputs, temporal=False)
        report.curves[DIRECT].append(CurvePoint(crf, round(direct.bitrate / 1000, 1),
                                                round(p, 3), round(v, 2)))  # fmt: skip
    compare_curves(report)
    return report


def report_svg(report: TitleReport) -> str:
    """The report's rate-quality curves as an SVG picture (VMAF and PSNR panels), the bitrate
    ranges where the first upscaled curve wins by VMAF shaded."""
    from carn_stream.model.rd_svg import Panel, rate_quality_svg

    upscaled = [n for n in report.curves if n != DIRECT]
    wins = report.wins_kbps.get(upscaled[0], {}) if upscaled else {}
    w, h = report.size
    title = (f"{Path(report.source).name}: {w}x{h} direct vs {w // report.scale}x"
             f"{h // report.scale} + x{report.scale} upscaling ({report.codec}, CRF "
             f"{', '.join(str(p.crf) for p in report.curves[DIRECT])})")  # fmt: skip
    panels = [
        Panel(label, {n: _points(c, measure) for n, c in report.curves.items()},
              wins.get(measure, []))
        for measure, label in (("vmaf", "VMAF"), ("psnr", "PSNR (dB, BT.601 luma)"))
    ]  # fmt: skip
    return rate_quality_svg(title, panels)
