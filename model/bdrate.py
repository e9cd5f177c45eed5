"""Rate-quality curves: Bjontegaard delta rate, and where one curve is above another.

A curve is a list of (bitrate, quality) points, one per encoder setting. BD-rate (VCEG-M33) fits
log10(bitrate) as a polynomial of quality (cubic with four or more points) for each curve,
integrates both over the qualities both reach, and turns the mean log difference into a
percentage: negative means the tested curve needs fewer bits for the same quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Curve = Sequence[tuple[float, float]]


def _sorted(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    points = sorted((float(r), float(q)) for r, q in curve)
    if len(points) < 2 or any(r <= 0 for r, _ in points):
        raise ValueError(f"a curve needs two or more points with positive rates, got {points}")
    rates, quality = np.array(points).T
    return rates, quality


def bd_rate(anchor: Curve, test: Curve) -> float:
    """Average bitrate difference of ``test`` against ``anchor`` at equal quality, in percent
    (NaN when the curves share no quality range)."""
    (ra, qa), (rt, qt) = _sorted(anchor), _sorted(test)
    low, high = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    if not high > low:
        return math.nan
    integrals = []
    for rates, quality in ((ra, qa), (rt, qt)):
        fit = np.polyfit(quality, np.log10(rates), min(3, len(rates) - 1))
        area = np.polyint(fit)
        integrals.append((np.polyval(area, high) - np.polyval(area, low)) / (high - low))
    return float((10 ** (integrals[1] - integrals[0]) - 1) * 100)


def quality_at(curve: Curve, rate: float) -> float:
    """The curve's quality at ``rate``, linear in log-rate between its points (NaN outside)."""
    rates, quality = _sorted(curve)
    if not rates[0] <= rate <= rates[-1]:
        return math.nan
    return float(np.interp(math.log10(rate), np.log10(rates), quality))


def winning_ranges(anchor: Curve, test: Curve, samples: int = 400) -> list[tuple[float, float]]:
    """The bitrate ranges, within the rates both curves span, where ``test`` gives a higher
    quality than ``anchor`` (each curve linear in log-rate between its points)."""
    (ra, _), (rt, _) = _sorted(anchor), _sorted(test)
    low, high = max(ra[0], rt[0]), min(ra[-1], rt[-1])
    if not high > low:
        return []
    grid = np.geomspace(low, high, samples)
    wins = [quality_at(test, r) > quality_at(anchor, r) for r in grid]
    ranges, start = [], None
    for rate, win in zip(grid, wins, strict=True):
        if win and start is None:
            start = rate
        elif not win and start is not None:
            ranges.append((float(start), float(rate)))
            start = None
    if start is not None:
        ranges.append((float(start), float(grid[-1])))
    return ranges
