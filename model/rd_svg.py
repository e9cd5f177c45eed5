"""Rate-quality curves as an SVG picture: one panel per quality measure, bitrate on a log axis,
a line with markers per curve, and the bitrate ranges where a chosen curve wins shaded.

Plain text written by this module (no plotting library): any browser shows it, and the service
can serve it as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
WIDTH, HEIGHT, MARGIN = 460, 320, (48, 16, 44, 56)  # panel size; top, right, bottom, left


@dataclass
class Panel:
    """One measure: curves by name, each a list of (kbps, quality)."""

    label: str
    curves: Mapping[str, Sequence[tuple[float, float]]]
    shaded: Sequence[tuple[float, float]] = field(default_factory=list)  #: kbps ranges


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10(max((high - low) / count, 1e-9)))
    for mult in (1, 2, 5, 10):
        if (high - low) / (step * mult) <= count:
            step *= mult
            break
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ticks += [m * 10**e for m in (1, 2, 5) if low <= m * 10**e <= high]
    return ticks


def _panel(panel: Panel, x0: float, names: list[str]) -> list[str]:
    top, right, bottom, left = MARGIN
    pw, ph = WIDTH - left - right, HEIGHT - top - bottom
    points = [p for c in panel.curves.values() for p in c]
    rmin, rmax = min(r for r, _ in points) / 1.15, max(r for r, _ in points) * 1.15
    qs = [q for _, q in points]
    qmin, qmax = min(qs), max(qs)
    pad = max((qmax - qmin) * 0.08, 0.5)
    qmin, qmax = qmin - pad, qmax + pad

    def px(rate: float) -> float:
        return x0 + left + pw * (math.log10(rate) - math.log10(rmin)) / math.log10(rmax / rmin)

    def py(q: float) -> float:
        return top + ph * (1 - (q - qmin) / (qmax - qmin))

    out = [f'<rect x="{x0 + left}" y="{top}" width="{pw}" height="{ph}" fill="white" '
           'stroke="#444"/>']  # fmt: skip
    for lo, hi in panel.shaded:
        a, b = px(max(lo, rmin)), px(min(hi, rmax))
        if b > a:
            out.append(f'<rect x="{a:.1f}" y="{top}" width="{b - a:.1f}" height="{ph}" '
                       'fill="#2ca02c" fill-opacity="0.12"/>')  # fmt: skip
    for t in _log_ticks(rmin, rmax):
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 14}" text-anchor="middle">{t:g}</text>')
    for t in _nice_ticks(qmin, qmax):
        y = py(t)
        out.append(f'<line x1="{x0 + left}" y1="{y:.1f}" x2="{x0 + left + pw}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')  # fmt: skip
        out.append(f'<text x="{x0 + left - 4}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{x0 + left + pw / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
               'bitrate (kbps, log scale)</text>')  # fmt: skip
    out.append(f'<text transform="translate({x0 + 14},{top + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(panel.label)}</text>')  # fmt: skip
    for name, curve in panel.curves.items():
        colour = COLOURS[names.index(name) % len(COLOURS)]
        pts = sorted(curve)
        path = " ".join(f"{px(r):.1f},{py(q):.1f}" for r, q in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{px(r):.1f}" cy="{py(q):.1f}" r="3" fill="{colour}"/>'
                for r, q in pts]  # fmt: skip
    return out


def rate_quality_svg(title: str, panels: Sequence[Panel]) -> str:
    """The SVG document: panels side by side, one legend above them."""
    names = list(dict.fromkeys(n for p in panels for n in p.curves))
    width = WIDTH * len(panels)
    body = [f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" '
            f'font-weight="bold">{escape(title)}</text>']  # fmt: skip
    x = MARGIN[3]
    for i, name in enumerate(names):
        colour = COLOURS[i % len(COLOURS)]
        body.append(f'<line x1="{x}" y1="34" x2="{x + 18}" y2="34" stroke="{colour}" '
                    'stroke-width="3"/>')  # fmt: skip
        body.append(f'<text x="{x + 22}" y="38">{escape(name)}</text>')
        x += 30 + 7 * len(name)
    if any(p.shaded for p in panels):
        body.append(f'<rect x="{x}" y="28" width="14" height="12" fill="#2ca02c" '
                    'fill-opacity="0.25"/>')  # fmt: skip
        body.append(f'<text x="{x + 18}" y="38">upscaling wins</text>')
    for i, panel in enumerate(panels):
        body += _panel(panel, i * WIDTH, names)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" '
        f'viewBox="0 0 {width} {HEIGHT}" font-family="sans-serif" font-size="11">\n'
        f'<rect width="{width}" height="{HEIGHT}" fill="#fafafa"/>\n'
        + "\n".join(body)
        + "\n</svg>\n"
    )
