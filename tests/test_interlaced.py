"""Interlaced inputs (480i/576i/1080i: two fields a field period apart in each frame) are made
progressive before they are upscaled, stored small or learnt from."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from carn_stream.model.baselines import Bicubic
from carn_stream.model.metrics import psnr
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker
from carn_stream.pipeline.execution.executors import InProcessExecutor, PlanRequest
from carn_stream.pipeline.execution.segmented import SegmentedRun
from carn_stream.pipeline.media.formats import FORMATS
from carn_stream.pipeline.media.segments import plan_segments, segment_frames
from carn_stream.pipeline.run import PipelineOptions
from carn_stream.settings import Settings
from tests.media import decode_rgb, downscale_frames

WIDTH, HEIGHT, FRAMES = 192, 144, 30
#: Each field of the pan is this many pixels on from the one before.
STEP = 5


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range Y of an RGB picture."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return 16 + 0.257 * r + 0.504 * g + 0.098 * b


def comb(y: np.ndarray) -> float:
    """How combed a picture is: the mean size of each line's step from the mean of the lines
    either side of it (the two fields of a moving picture disagree line by line)."""
    y = y.astype(np.float64)
    return float(np.mean(np.abs(2 * y[1:-1] - y[:-2] - y[2:])))


def panned(data_dir: Path, width: int = WIDTH, height: int = HEIGHT) -> list[np.ndarray]:
    """A horizontal pan across a Big Buck Bunny frame, one picture per field instant."""
    still = decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 1)[0]
    return [np.ascontiguousarray(still[200 : 200 + height, 300 + STEP * i : 300 + STEP * i + width])
            for i in range(2 * FRAMES)]  # fmt: skip


@pytest.fixture(scope="module")
def pan(data_dir) -> list[np.ndarray]:
    return panned(data_dir)


def woven(pan: list[np.ndarray]) -> list[np.ndarray]:
    """Frames of two fields each, bottom field first (as the encoders below flag them): the odd
    lines from one instant, the even lines from the next."""
    frames = []
    for first, second in zip(pan[0::2], pan[1::2], strict=True):
        frame = second.copy()
        frame[1::2] = first[1::2]
        frames.append(frame)
    return frames


def write_interlaced(path: Path, frames: list[np.ndarray], codec: str) -> Path:
    """Interlaced H.264 (x264's MBAFF) or MPEG-2 (interlaced DCT and motion) in MPEG-TS."""
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream(codec, rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.codec_context.options = {"crf": "14", "preset": "veryfast",
                                            "x264-params": "interlaced=1:keyint=10"}  # fmt: skip
        else:
            stream.codec_context.options = {"qscale": "2", "g": "10"}
            flags = av.codec.context.Flags
            stream.codec_context.flags |= flags.interlaced_dct | flags.interlaced_me
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module", params=["libx264", "mpeg2video"])
def interlaced(request, pan, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("interlaced")
    return write_interlaced(folder / f"{request.param}.ts", woven(pan), request.param)


@pytest.fixture(scope="module")
def interlaced_h264(pan, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("interlaced-h264")
    return write_interlaced(folder / "h264.ts", woven(pan), "libx264")


def plain_decode(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def test_interlaced_frames_are_decoded_progressive_at_their_first_fields_instant(
    interlaced, pan
):
    """Every frame of a segment decode is made progressive: it matches the picture at its
    first field's instant far better than the frame as coded (combed where anything moves),
    keeps its time, and there are as many frames as planned. Off, the frames are as coded."""
    coded = plain_decode(interlaced)
    assert all(f.interlaced_frame for f in coded)
    plan = plan_segments(interlaced, 1.0)
    assert plan.frames == FRAMES
    made, off = [], []
    for segment in plan.segments:
        with av.open(str(interlaced)) as c:
            made += list(segment_frames(c, segment))
        with av.open(str(interlaced)) as c:
            off += list(segment_frames(c, segment, deinterlace=False))
    assert [f.pts for f in made] == [f.pts for f in coded]
    assert [f.index for f in made] == list(range(FRAMES))
    for frame, coded_frame in zip(off, coded, strict=True):
        assert np.array_equal(frame.planes[0], coded_frame.to_ndarray()[:HEIGHT])
    gains = []
    for frame, coded_frame in zip(made, coded, strict=True):
        instant = luma(pan[2 * frame.index])
        as_coded = psnr(coded_frame.to_ndarray()[:HEIGHT], instant)
        gains.append(psnr(frame.planes[0], instant) - as_coded)
        assert comb(frame.planes[0]) < 0.5 * comb(coded_frame.to_ndarray()[:HEIGHT])
    assert min(gains) > 3 and np.mean(gains) > 5, gains


def test_progressive_frames_pass_as_they_are(data_dir):
    """Nothing is filtered until a frame is flagged interlaced."""
    clip = data_dir / "video" / "carphone_pristine.mp4"
    coded = plain_decode(clip)
    plan = plan_segments(clip, 1.0)
    made = []
    for segment in plan.segments:
        with av.open(str(clip)) as c:
            made += list(segment_frames(c, segment))
    assert len(made) == len(coded)
    for frame, coded_frame in zip(made, coded, strict=True):
        assert np.array_equal(frame.planes[0], coded_frame.to_ndarray()[: frame.size[0]])


def test_an_upscaled_interlaced_input_has_no_comb(interlaced, pan, tmp_path):
    """Upscaled as coded, every moving edge came out combed, twice the size; the output now
    matches the first field's instant, and the setting turns it off."""

    async def make(deinterlace: bool) -> Path:
        worker = InferenceWorker(Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32")))
        executor = InProcessExecutor(worker)
        try:
            plan = await executor.plan(PlanRequest(interlaced, 1.0))
            output = tmp_path / f"{deinterlace}.mp4"
            options = PipelineOptions(scale=2, deinterlace=deinterlace)
            run = SegmentedRun(source=interlaced, plan=plan, fmt=FORMATS["mp4"], output=output,
                               work_dir=tmp_path / f".{deinterlace}.work", options=options,
                               executor=executor)  # fmt: skip
            await run.execute()
        finally:
            await executor.close()
            worker.close()
        return output

    import asyncio

    on, off = asyncio.run(make(True)), asyncio.run(make(False))
    made, as_coded = decode_rgb(on), decode_rgb(off)
    assert len(made) == len(as_coded) == FRAMES
    size = (WIDTH, HEIGHT)
    pairs = zip(downscale_frames(made, size), downscale_frames(as_coded, size), strict=True)
    gains = [psnr(luma(a), luma(pan[2 * i])) - psnr(luma(b), luma(pan[2 * i]))
             for i, (a, b) in enumerate(pairs)]  # fmt: skip
    assert min(gains) > 1.5 and np.mean(gains) > 4, gains
    assert np.mean([comb(luma(f)) for f in made]) < 0.5 * np.mean([comb(luma(f)) for f in as_coded])
    assert Settings.from_env({"CARN_STREAM_DEINTERLACE": "0"}).deinterlace is False
    assert Settings.from_env({}).deinterlace is True


def test_a_copy_stored_small_is_made_from_progressive_frames(interlaced, pan, tmp_path):
    """The copy a video is stored as (and a title's training pairs) is scaled from
    progressive frames: scaled as coded, the two fields' instants showed as a double image."""
    from carn_stream.pipeline.media.delivery import encode_copy

    copy = encode_copy(interlaced, tmp_path / "small.mp4", scale=2, crf=12)
    stored = decode_rgb(copy.path)
    assert len(stored) == FRAMES
    size = (WIDTH // 2, HEIGHT // 2)
    coded = downscale_frames([f.to_ndarray(format="rgb24") for f in plain_decode(interlaced)], size)
    wanted = downscale_frames(pan[0::2], size)
    gains = [psnr(luma(s), luma(w)) - psnr(luma(c), luma(w))
             for s, c, w in zip(stored, coded, wanted, strict=True)]  # fmt: skip
    assert np.mean(gains) > 2, gains


def test_the_time_a_filtered_frame_keeps_is_its_own(interlaced):
    """The filter counts time in fields; each frame keeps its own time and time base."""
    coded = plain_decode(interlaced)
    plan = plan_segments(interlaced, 1.0)
    with av.open(str(interlaced)) as c:
        frames = list(segment_frames(c, plan.segments[-1]))
    last = coded[-len(frames) :]
    assert [(f.pts, f.time_base) for f in frames] == [(f.pts, f.time_base) for f in last]
    assert frames[0].time_base == Fraction(1, 90000)


def test_frames_sampled_to_learn_from_are_progressive(interlaced, pan):
    """``tune`` and ``train`` learn from sampled frames: combed ones would teach the model the
    comb."""
    from carn_stream.pipeline.sampling import sample_frames

    sampled = sample_frames(interlaced, 5)
    picked = np.linspace(0, FRAMES - 1, 5).round().astype(int)
    frames = woven(pan)
    for frame, index in zip(sampled, picked, strict=True):
        instant, coded = luma(pan[2 * index]), luma(frames[index])
        assert comb(luma(frame)) < 0.5 * comb(coded)
        assert psnr(luma(frame), instant) > psnr(coded, instant) + 1.5


@pytest.mark.slow
def test_the_command_deinterlaces_unless_told_not_to(interlaced_h264, weights_path, tmp_path):
    """``carn-stream upscale`` makes interlaced frames progressive; ``--no-deinterlace`` (or
    ``CARN_STREAM_DEINTERLACE=0``) upscales them as coded."""
    from tests.test_cli import run_cli

    common = ("--scale", "2", "--weights", str(weights_path), "--precision", "fp32",
              "--preset", "ultrafast", "--crf", "12")  # fmt: skip
    outputs = {}
    for name, extra, env in (("on", (), {}), ("flag", ("--no-deinterlace",), {}),
                             ("setting", (), {"CARN_STREAM_DEINTERLACE": "0"})):  # fmt: skip
        outputs[name] = tmp_path / f"{name}.mp4"
        result = run_cli("upscale", str(interlaced_h264), str(outputs[name]), *common, *extra,
                         env=env)
        assert result.returncode == 0, result.stderr
    combs = {name: np.mean([comb(luma(f)) for f in decode_rgb(path)])
             for name, path in outputs.items()}  # fmt: skip
    assert combs["on"] < 0.6 * combs["flag"], combs
    assert abs(combs["flag"] - combs["setting"]) < 0.02 * combs["flag"], combs


def test_a_folder_of_camcorder_and_dvd_files_is_taken(tmp_path):
    """Interlaced video mostly comes as camcorder AVCHD (.MTS, .m2ts) and DVD (.VOB) files: a
    folder of them gave "no video files"."""
    from argparse import Namespace

    from carn_stream.upscale_command import _folder_items

    for name in ("a.MTS", "b.m2ts", "c.VOB", "d.mpeg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    items = _folder_items(tmp_path, tmp_path / "out", Namespace(format=None, work_dir=None))
    assert [i.source.name for i in items] == ["a.MTS", "b.m2ts", "c.VOB", "d.mpeg"]
    assert [i.output.name for i in items] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]


@pytest.mark.parametrize("pix_fmt", ["uyvy422", "nv12", "rgb24", "yuv420p10le"])
def test_the_filter_gives_back_the_format_it_was_given(pix_fmt, pan):
    """``bwdif`` takes planar formats only; FFmpeg converts packed ones (UYVY from capture
    cards, NV12 from hardware decoders) on the way in, and the frames came out in another
    format than the decoder's. They are converted back, without loss."""
    from carn_stream.pipeline.media.deinterlace import _graph

    frame = av.VideoFrame.from_ndarray(pan[0], format="rgb24").reformat(format=pix_fmt)
    frame.pts, frame.time_base = 0, Fraction(1, 25)
    graph = _graph(frame)
    graph.push(frame)
    graph.push(None)
    out = graph.vpull()
    assert out.format.name == pix_fmt
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(out.planes, frame.planes, strict=True))  # fmt: skip


def test_a_jobs_comparison_shows_the_source_as_the_job_upscaled_it(interlaced_h264):
    """The frames kept to compare CARN-M with bicubic were the source as coded (combed) beside
    an output made from progressive frames: more than the upscaling differed."""
    from carn_stream.server.jobs.compare import _frames_at

    wanted = {3, 17}
    made = dict(_frames_at([interlaced_h264], wanted, deinterlace=True))
    coded = dict(_frames_at([interlaced_h264], wanted, deinterlace=False))
    assert sorted(made) == sorted(coded) == sorted(wanted)
    for index in wanted:
        assert comb(luma(made[index])) < 0.5 * comb(luma(coded[index]))


def test_a_live_sample_file_is_played_progressive(interlaced_h264, pan):
    """A file on the live page's list of samples is a live source like a camera: its frames
    reached the model combed."""
    from carn_stream.server.live import FileTrack

    track = FileTrack(interlaced_h264)
    try:
        frames = [track._decode_next() for _ in range(5)]
    finally:
        track._close()
    coded = woven(pan)
    for i, frame in enumerate(frames):
        y = frame.to_ndarray()[:HEIGHT]
        assert comb(y) < 0.5 * comb(luma(coded[i])), i
