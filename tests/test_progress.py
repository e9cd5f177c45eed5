"""The recent rate behind progress lines and job ETAs, on a fake clock."""

from __future__ import annotations

import io

import pytest

from carn_stream.progress import ProgressBar
from carn_stream.progress_rate import RateMeter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_rate_until_a_measurable_span_has_passed():
    clock = FakeClock()
    meter = RateMeter(min_interval=0.5, clock=clock)
    meter.add()  # the first frame right after start: its duration is unknown
    assert meter.rate() is None and meter.eta(119) is None
    clock.now += 1e-5
    meter.add()
    assert meter.rate() is None  # was 1 / 1e-5 = 100,000 frames/s before
    clock.now += 0.5
    meter.add()
    assert meter.rate() == pytest.approx(2 / 0.50001)


def test_rate_follows_a_change_of_pace_within_a_few_windows():
    clock = FakeClock()
    meter = RateMeter(window=5.0, min_interval=0.5, clock=clock)
    meter.add()
    for _ in range(20):  # 20 s at 1 frame/s (a slow start)
        clock.now += 1.0
        meter.add()
    assert meter.rate() == pytest.approx(1.0)
    for _ in range(150):  # then 15 s at 10 frames/s
        clock.now += 0.1
        meter.add()
    # After 3 windows the old pace weighs exp(-3) = 5%: 10 - 9 * 0.05 = 9.55.
    assert 9.4 < meter.rate() <= 10.0
    # The average since the start would still say (20 + 150) / 35 s = 4.9 frames/s.
    assert meter.average() == pytest.approx(170 / 35)
    assert meter.eta(100) == pytest.approx(100 / meter.rate())


def test_frames_finishing_together_count_as_one_sample():
    clock = FakeClock()
    meter = RateMeter(min_interval=0.5, clock=clock)
    meter.add(8)  # a batch of 8
    for _ in range(5):
        clock.now += 2.0
        meter.add(8)
    assert meter.rate() == pytest.approx(4.0)


def test_a_stall_pulls_the_rate_down():
    clock = FakeClock()
    meter = RateMeter(clock=clock)
    meter.add()
    for _ in range(10):
        clock.now += 0.25
        meter.add()
    assert meter.rate() == pytest.approx(4.0)
    clock.now += 10.0  # nothing finished for 10 s
    assert meter.rate() == pytest.approx(0.1)
    assert meter.eta(5) == pytest.approx(50.0)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        RateMeter(window=0)


def test_progress_lines_show_rate_and_eta_only_once_measured():
    clock = FakeClock()
    out = io.StringIO()
    bar = ProgressBar(120, "upscale x2", unit="frames", stream=out, interval=0.0, clock=clock)
    bar.update()
    for _ in range(5):
        clock.now += 0.5
        bar.update()
    lines = out.getvalue().splitlines()
    # Before: "1/120 40556.43 frames/s ETA 0s" (one frame over the microseconds since start).
    assert lines[0] == "upscale x2 [                        ] 1/120 measuring speed"
    assert lines[1].endswith("2/120 2.00 frames/s ETA 59s")
    assert lines[-1].endswith("6/120 2.00 frames/s ETA 57s")
    bar.total = 6
    bar.update(0)
    assert out.getvalue().splitlines()[-1].endswith("6/6 2.00 frames/s on average")
