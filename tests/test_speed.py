"""How fast this machine upscales per input size, and whether it keeps up: the speed book fed by
frame reports, its estimates for sizes not seen yet, and what videos say up front."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from carn_stream.pipeline.media.segments import plan_segments
from carn_stream.pipeline.run import FrameReport, StageTimings
from carn_stream.server.api.videos import VideoOut
from carn_stream.server.metrics import Metrics
from carn_stream.server.speed import SpeedBook
from carn_stream.server.vod.store import Rendition, Video
from tests.media import decode_rgb, downscale_frames, write_clip


def report(inference: float, size=(176, 144), scale=2, batch=1, rate=25.0) -> FrameReport:
    timings = StageTimings(wait=0.0, inference=inference, encode=0.0, total=inference)
    return FrameReport(0, 1, 0, timings, batch_frames=batch, scale=scale, size=size,
                       frame_rate=rate)  # fmt: skip


def test_a_size_is_known_after_its_first_frame_and_judged_against_its_source():
    book = SpeedBook()
    before = book.pace(2, 176, 144, 25.0)
    assert before.fps is None and before.keeps_up is None
    assert before.text() == (
        "x2 at 176x144: not measured yet on this machine (known after its first frame)"
    )
    # The AVX2 EPYC's figure for auto at 176x144 x2 (int8, 246.8 ms a frame; 2.3-4.1 fps).
    book.observe(report(0.2468), "segments")
    pace = book.pace(2, 176, 144, 25.0)
    assert pace.measured and pace.fps == pytest.approx(4.05, abs=0.01)
    assert pace.keeps_up is False
    assert pace.text() == (
        "x2 at 176x144: 4.1 fps (measured over 1 frame); this machine cannot keep up with 25 fps"
    )
    # A batch of 8 in 0.1 s is 80 fps: a GPU keeps up.
    book.observe(report(0.1, size=(320, 180), batch=8), "segments")
    assert book.pace(2, 320, 180, 25.0).keeps_up is True


def test_the_speed_is_the_median_of_recent_frames_per_size_and_path():
    book = SpeedBook()
    for seconds in (0.5, 0.1, 0.1, 0.1, 3.0):  # a slow first frame (auto decides), an outlier
        book.observe(report(seconds), "live")
    seen = book.seen()
    assert [(s["where"], s["scale"], s["input"], s["frames"]) for s in seen] == [
        ("live", 2, [176, 144], 5)
    ]
    assert seen[0]["fps"] == 10.0 and seen[0]["source_fps"] == 25.0
    assert seen[0]["keeps_up"] is False
    # The live path answers for live sessions first; segments for videos.
    book.observe(report(0.02), "segments")
    assert book.pace(2, 176, 144, 30, prefer=("live", "segments")).fps == pytest.approx(10)
    assert book.pace(2, 176, 144, 30, prefer=("segments", "live")).fps == pytest.approx(50)


def test_a_size_not_seen_is_estimated_from_the_nearest_one_at_its_scale():
    book = SpeedBook()
    book.observe(report(0.1, size=(160, 120)), "live")
    book.observe(report(2.0, size=(1280, 720)), "live")
    pace = book.pace(2, 320, 240, 30)  # 4x the pixels of 160x120, its nearest: 4x the time
    assert not pace.measured and pace.fps == pytest.approx(2.5)
    assert pace.basis == "estimated from x2 at 160x120 by pixel count"
    assert pace.keeps_up is False
    assert book.pace(4, 320, 240, 30).fps is None  # nothing at x4 yet


def test_frame_reports_reach_the_book_through_the_metrics():
    metrics = Metrics()
    metrics.observe_frame(report(0.05), "job")
    metrics.observe_frame(report(0.25, size=(160, 120)), "live")
    assert {(s["where"], tuple(s["input"]), s["fps"]) for s in metrics.speed.seen()} == {
        ("segments", (176, 144), 20.0),
        ("live", (160, 120), 4.0),
    }


@pytest.fixture(scope="module")
def clip(data_dir: Path, tmp_path_factory) -> Path:
    frames = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 25), (96, 54))
    return write_clip(tmp_path_factory.mktemp("speed") / "clip.mp4", frames, rate=Fraction(25))


def test_a_video_says_up_front_whether_each_upscaled_rendition_keeps_up(clip):
    plan = plan_segments(clip, 1.0)
    renditions = [
        Rendition(name="original", scale=1, width=96, height=54, codecs="avc1", bandwidth=1),
        Rendition(name="x2", scale=2, width=192, height=108, codecs="avc1", bandwidth=4),
        Rendition(name="x4", scale=4, width=384, height=216, codecs="avc1", bandwidth=16),
    ]
    video = Video(id="0" * 32, url="http://example.com/clip.mp4", source=clip, plan=plan,
                  renditions=renditions, created_at=0.0)  # fmt: skip
    book = SpeedBook()
    book.observe(report(0.02, size=(96, 54)), "segments")  # 50 fps at x2
    out = VideoOut.of(video, {}, str, speed=book)
    paces = {r.name: r.pace for r in out.renditions}
    assert paces["original"] is None  # copied, not upscaled
    assert paces["x2"].keeps_up is True and paces["x2"].fps == 50.0
    assert paces["x2"].source_fps == 25.0
    assert paces["x4"].keeps_up is None and "not measured yet" in paces["x4"].text
