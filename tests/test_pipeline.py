"""The video pipeline on real clips: frames, timestamps, audio, HLS, formats, tiling, failures."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from carn_stream.model import carn_m, load_weights
from carn_stream.model.baselines import Bicubic
from carn_stream.pipeline.colour import ColourSpec
from carn_stream.pipeline.engine.infer import (
    Engine,
    EngineConfig,
    InferenceWorker,
    unavailable_reason,
)
from carn_stream.pipeline.errors import InputError, OutputError
from carn_stream.pipeline.execution.executors import InProcessExecutor
from carn_stream.pipeline.execution.segmented import run_whole
from carn_stream.pipeline.frames import SourceFrame
from carn_stream.pipeline.media.encode import EncoderOptions
from carn_stream.pipeline.media.hls import is_complete
from carn_stream.pipeline.media.segments import WHOLE, plan_segments
from carn_stream.pipeline.run import PipelineOptions, SegmentSource, _PipelineRun, run_pipeline
from tests.media import (
    decode_rgb,
    decode_y,
    downscale_frames,
    facts,
    with_pcm_audio,
    write_audio_only,
    write_clip,
)

# --------------------------------------------------------------------------- fixtures


def cpu_modes(*modes: str) -> list:
    """Precision modes as test parameters, each skipped with its reason where this CPU lacks
    it: engine tests run under every mode the machine has, so no CPU-dependent default can
    hide a failure."""
    params = []
    for mode in modes:
        reason = unavailable_reason(mode, torch.device("cpu"))
        params.append(
            pytest.param(mode, marks=pytest.mark.skipif(bool(reason), reason=str(reason)))
        )
    return params


TORCH_MODES = cpu_modes("fp32", "bf16")
FLOAT_MODES = cpu_modes("fp32", "bf16", "ov-fp32", "ov-bf16", "ov-fp16")


@pytest.fixture(scope="module")
def clips(data_dir, tmp_path_factory) -> dict[str, Path]:
    """Small clips cut from the real videos."""
    video = data_dir / "video"
    d = tmp_path_factory.mktemp("clips")
    carphone = decode_rgb(video / "carphone_pristine.mp4", 10)
    bunny = downscale_frames(decode_rgb(video / "bigbuckbunny.mp4", 50), (160, 90))
    return {
        "carphone": write_clip(d / "carphone10.mp4", carphone, rate=Fraction(30000, 1001)),
        "bunny_audio": write_clip(
            d / "bunny.mp4", bunny, audio_from=video / "bigbuckbunny.mp4", audio_seconds=2.0
        ),
        "vfr": write_clip(
            d / "vfr.mp4", bunny[:8], pts=[0, 1, 3, 4, 9, 10, 11, 20], time_base=Fraction(1, 25)
        ),
        "odd": write_clip(
            d / "odd.mkv", [f[:27, :35] for f in carphone[:4]], codec="ffv1", pix_fmt="yuv444p"
        ),
        "rotated": write_clip(d / "rotated.mp4", bunny[:4], rotation=90),
        "ten_bit": write_clip(d / "ten.mkv", bunny[:4], codec="ffv1", pix_fmt="yuv420p10le"),
        "eight_bit": write_clip(d / "eight.mkv", bunny[:4], codec="ffv1", pix_fmt="yuv420p"),
    }


@pytest.fixture(scope="module")
def carn_worker(weights_path):
    model = carn_m()
    load_weights(model, weights_path)
    worker = InferenceWorker(Engine(model, EngineConfig(device="cpu", precision="fp32")))
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def bicubic_worker():
    worker = InferenceWorker(Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32")))
    yield worker
    worker.close()


def upscale(source, target, worker, scale=2, on_frame=None, **kwargs) -> int:
    """The whole input as one segment into ``target`` (its suffix names the format)."""
    options = PipelineOptions(scale=scale, **kwargs)
    executor = InProcessExecutor(worker, slots=1)
    return asyncio.run(run_whole(Path(source), Path(target), options, executor, on_frame))


def one_segment(source: Path) -> SegmentSource:
    plan = plan_segments(source, WHOLE)
    return SegmentSource(plan.segments[0], plan.time_base, last=True)


# --------------------------------------------------------------------------- correctness


def test_mp4_has_scaled_frames_with_the_same_timestamps(clips, carn_worker, tmp_path):
    src = facts(clips["carphone"])
    reports = []
    out = tmp_path / "out.mp4"
    frames = upscale(clips["carphone"], out, carn_worker, batch_size=3, on_frame=reports.append)
    got = facts(out)
    assert (got.width, got.height) == (2 * src.width, 2 * src.height) == (352, 288)
    assert got.pts == src.pts and len(got.pts) == 10 == frames
    assert got.time_base == src.time_base
    assert abs(got.duration - src.duration) <= 1001 / 30000
    assert [r.index for r in reports] == list(range(10))  # in order, none dropped
    assert set(reports[0].timings.stages()) == {"decode", "wait", "inference", "encode"}
    assert all(r.timings.inference > 0 for r in reports)
    assert all(r.segment == 0 for r in reports)  # one segment: the whole input
    assert list(tmp_path.iterdir()) == [out]  # the segment and the work folder are gone


def test_audio_packets_are_copied_bit_identical(clips, bicubic_worker, tmp_path):
    out = tmp_path / "out.mp4"
    upscale(clips["bunny_audio"], out, bicubic_worker)
    src, got = facts(clips["bunny_audio"]), facts(out)
    assert got.audio_codec == src.audio_codec == "aac"
    assert len(src.audio_packets) > 80
    assert got.audio_packets == src.audio_packets
    assert len(got.pts) == 50 and (got.width, got.height) == (320, 180)


def test_audio_the_container_cannot_hold_is_transcoded_to_aac(clips, bicubic_worker, tmp_path):
    src = with_pcm_audio(clips["bunny_audio"], tmp_path / "pcm.mkv")
    dst = tmp_path / "out.mp4"
    upscale(src, dst, bicubic_worker)
    with av.open(str(dst)) as c:
        audio = c.streams.audio[0]
        assert audio.codec_context.name == "aac"
        samples = sum(f.samples for f in c.decode(audio))
    assert samples == pytest.approx(2 * 48000, rel=0.05)  # about the two seconds of the source


def test_hls_playlist_is_valid_and_every_segment_decodes(clips, carn_worker, tmp_path):
    out = tmp_path / "hls"
    upscale(clips["bunny_audio"], out, carn_worker)
    playlist = (out / "index.m3u8").read_text()
    assert playlist.startswith("#EXTM3U") and playlist.rstrip().endswith("#EXT-X-ENDLIST")
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+)", playlist)]
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    assert len(segments) == len(durations) == 1  # one segment: the whole input
    assert sum(durations) == pytest.approx(2.0, abs=0.05)
    frames = 0
    for name in segments:
        with av.open(str(out / name)) as c:
            assert c.streams.audio, "audio travels in every segment"
            decoded = list(c.decode(video=0))
            assert decoded[0].key_frame  # each segment starts on a keyframe
            assert (decoded[0].width, decoded[0].height) == (320, 180)
            frames += len(decoded)
    assert frames == 50
    assert is_complete(out)
    assert not list(out.glob(".*"))  # no temporary file left


def test_variable_frame_rate_stays_variable(clips, bicubic_worker, tmp_path):
    out = tmp_path / "vfr.mp4"
    upscale(clips["vfr"], out, bicubic_worker)
    src, got = facts(clips["vfr"]), facts(out)
    assert got.pts == src.pts
    gaps = {b - a for a, b in zip(got.pts, got.pts[1:], strict=False)}
    assert len(gaps) > 2  # irregular spacing survived


@pytest.mark.parametrize("scale,expected", [(2, (70, 54)), (3, (104, 80)), (4, (140, 108))])
def test_odd_input_sizes(clips, bicubic_worker, tmp_path, scale, expected):
    # 35x27 input: x3 would be 105x81; 4:2:0 needs even sides, so one row/column is cropped.
    out = tmp_path / "odd.mp4"
    upscale(clips["odd"], out, bicubic_worker, scale=scale)
    got = facts(out)
    assert (got.width, got.height) == expected and len(got.pts) == 4


def test_rotation_metadata_is_kept(clips, bicubic_worker, tmp_path):
    out = tmp_path / "rot.mp4"
    upscale(clips["rotated"], out, bicubic_worker)
    assert facts(clips["rotated"]).rotation == facts(out).rotation == 90


def test_segments_served_as_they_are_hold_their_frames_upright(clips, bicubic_worker, tmp_path):
    """MPEG-TS carries no display rotation: an HLS output of a phone's portrait video played
    turned on its side. Such segments now hold the frames turned as players show them."""
    from carn_stream.model.metrics import psnr
    from carn_stream.pipeline.media.formats import FORMATS

    assert FORMATS["hls"].segments_served and not FORMATS["mp4"].segments_served
    tagged, turned = tmp_path / "tagged.mp4", tmp_path / "upright.mp4"
    upscale(clips["rotated"], tagged, bicubic_worker, encoder=EncoderOptions(crf=0))
    upscale(clips["rotated"], turned, bicubic_worker, encoder=EncoderOptions(crf=0), upright=True)
    a, b = facts(tagged), facts(turned)
    assert (a.width, a.height, a.rotation) == (320, 180, 90)
    assert (b.width, b.height, b.rotation) == (180, 320, 0)
    assert b.pts == a.pts
    # What a player shows of the tagged file: its frames turned 90 degrees counterclockwise.
    for shown, held in zip(decode_rgb(tagged), decode_rgb(turned), strict=True):
        assert psnr(np.rot90(shown), held) > 40


def test_a_segment_keeps_its_first_frames_rotation(tmp_path):
    """Turned by each batch's own rotation, a frame whose side data said otherwise changed the
    frame size in the middle of an encoder."""
    from carn_stream.pipeline.colour import ColourSpec
    from carn_stream.pipeline.frames import UpscaledFrame
    from carn_stream.pipeline.media.encode import VideoSink

    sink = VideoSink(tmp_path / "s.ts", EncoderOptions(), Fraction(25), [], upright=True)
    out = ColourSpec("yuv", bits=8, matrix=1)
    y = np.tile(np.linspace(16, 235, 64).astype(np.uint8), (36, 1))  # dark left, light right
    u = v = np.full((18, 32), 128, np.uint8)
    for index, rotation in enumerate((90, 0, 90)):
        sink.write_frame(UpscaledFrame(index, index, Fraction(1, 25), y, u, v), out, rotation)
    with av.open(str(sink.close()), format="mpegts") as c:  # too short to be probed
        shown = [f.to_ndarray()[:64].astype(int) for f in c.decode(video=0)]  # luma
    assert [s.shape for s in shown] == [(64, 36)] * 3
    turned = np.rot90(y).astype(int)  # light at the top
    assert all(np.abs(s - turned).mean() < 8 for s in shown)  # the middle one was not turned


def test_a_rotated_jobs_compared_frames_are_upright(clips, bicubic_worker, tmp_path):
    """The jobs page's wipe showed a rotated video's frames on their side (and, once HLS
    segments held upright frames, would have set them against sideways source frames)."""
    from carn_stream.model.metrics import psnr
    from carn_stream.pipeline.media.images import read_rgb
    from carn_stream.server.jobs.compare import comparison_png, save_comparison

    for name, upright in (("tagged.mp4", False), ("upright.mp4", True)):
        output, job = tmp_path / name, tmp_path / f"job-{name}"
        upscale(clips["rotated"], output, bicubic_worker, upright=upright)
        job.mkdir()
        indices = save_comparison(clips["rotated"], output, job, 4)
        assert indices
        for index in indices:
            carn, bicubic = (read_rgb(comparison_png(job, index, kind))
                             for kind in ("carn", "bicubic"))  # fmt: skip
            assert carn.shape == bicubic.shape == (320, 180, 3), name
            assert psnr(carn, bicubic) > 30, name  # the same picture, the same way up


def test_ten_bit_input_matches_eight_bit_input(clips, bicubic_worker, tmp_path):
    a, b = tmp_path / "ten.mp4", tmp_path / "eight.mp4"
    upscale(clips["ten_bit"], a, bicubic_worker, encoder=EncoderOptions(crf=0))
    upscale(clips["eight_bit"], b, bicubic_worker, encoder=EncoderOptions(crf=0))
    ya, yb = np.stack(decode_y(a, bits=10)) / 4, np.stack(decode_y(b)).astype(int)
    # Same pictures; the 10-bit output (10-bit in, 10-bit out) only adds precision (and x264's
    # CRF 0 is not lossless at 10 bits: 3.75 of 255 at most was measured).
    assert np.abs(ya - yb).mean() < 0.6 and np.abs(ya - yb).max() <= 4.5


@pytest.mark.parametrize("colorspace", [1, 5])  # BT.709, BT.601
def test_colour_matrix_is_respected_and_tagged(tmp_path, bicubic_worker, colorspace):
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 40, 60)  # saturated colours tell the matrices apart
    rgb[:, 32:] = (30, 160, 220)
    src = write_clip(
        tmp_path / "in.mkv", [rgb] * 2, codec="ffv1", pix_fmt="yuv444p", colorspace=colorspace
    )
    out = tmp_path / "out.mp4"
    upscale(src, out, bicubic_worker, encoder=EncoderOptions(crf=0))
    got = facts(out)
    assert got.colorspace == colorspace and got.color_range == 1
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        back = frame.reformat(format="rgb24", src_colorspace=colorspace).to_ndarray()
    assert np.abs(back[8:-8, 8:56].astype(int) - (200, 40, 60)).max() <= 4
    assert np.abs(back[8:-8, 72:120].astype(int) - (30, 160, 220)).max() <= 4


# --------------------------------------------------------------------------- tiling, memory


@pytest.mark.parametrize("mode", FLOAT_MODES)
def test_tiled_output_equals_untiled_output(data_dir, weights_path, mode, tmp_path):
    model = carn_m()
    load_weights(model, weights_path)
    frame = decode_rgb(data_dir / "video" / "carphone_pristine.mp4", 1)[0][:72, :88]
    planes = [frame[None]]
    from carn_stream.pipeline.colour import ColourSpec

    spec = ColourSpec("rgb")
    out_spec = ColourSpec("yuv")
    config = EngineConfig(device="cpu", precision=mode, cache_dir=tmp_path)
    whole = Engine(model, config).upscale(planes, spec, 2, out_spec)
    tiled_engine = Engine(model, replace(config, tile=24, tile_overlap=24))
    tiled = tiled_engine.upscale(planes, spec, 2, out_spec)
    # Equal up to rounding in every mode (measured on an AMX Xeon: ov-bf16 differs by one
    # level on 0.07% of the luma, every other mode on none).
    for a, b in zip(whole, tiled, strict=True):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.002
    if mode != "fp32":
        return
    # In float, the stitched result matches to within float32 noise.
    from carn_stream.pipeline.engine.tiling import tiled_forward

    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ref = model(x, 3)
        assert (tiled_forward(model, x, 3, 20, 24) - ref).abs().max() < 1e-4


def test_every_tile_of_a_frame_has_one_shape_and_the_stitch_is_exact():
    """Edge tiles of their own sizes made up to 16 shapes a frame, and a backend compiled per
    shape (OpenVINO keeps 8) compiled again for every tile of every frame."""
    from carn_stream.pipeline.engine.tiling import tiled_forward

    shapes: set[tuple[int, ...]] = set()

    def nearest(x, scale):  # (each output pixel depends on its own input pixel alone)
        shapes.add(tuple(x.shape))
        return x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)

    x = torch.rand(2, 3, 71, 93)
    whole = nearest(x, 3)
    for tile, overlap in ((20, 6), (32, 24), (100, 8), (1, 0)):
        shapes.clear()
        assert torch.equal(tiled_forward(nearest, x, 3, tile, overlap), whole)
        assert shapes == {(2, 3, min(tile + 2 * overlap, 71), min(tile + 2 * overlap, 93))}


class _SmallMemory(torch.nn.Module):
    """A network that runs out of memory above a pixel budget, like a small GPU would."""

    def __init__(self, inner: torch.nn.Module, budget: int) -> None:
        super().__init__()
        self.inner, self.budget, self.scales = inner, budget, inner.scales
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x, scale):
        self.calls.append(tuple(x.shape))
        if x.shape[0] * x.shape[-2] * x.shape[-1] > self.budget:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x, scale)


@pytest.mark.parametrize("mode", TORCH_MODES)
def test_out_of_memory_splits_then_tiles_and_never_drops_a_frame(clips, tmp_path, mode):
    """Under each PyTorch mode (the OpenVINO ones cannot be made to run out of memory here)."""
    reference, retried = tmp_path / "ref.mp4", tmp_path / "oom.mp4"
    plain = InferenceWorker(Engine(Bicubic(), EngineConfig(device="cpu", precision=mode)))
    budget = 60 * 60  # less than one 160x90 frame
    config = EngineConfig(device="cpu", precision=mode, tile_overlap=8)
    tight = InferenceWorker(Engine(_SmallMemory(Bicubic(), budget), config))
    try:
        upscale(clips["bunny_audio"], reference, plain, batch_size=4, encoder=EncoderOptions(crf=0))
        upscale(clips["bunny_audio"], retried, tight, batch_size=4, encoder=EncoderOptions(crf=0))
    finally:
        plain.close()
        tight.close()
    assert tight.engine.oom_retries > 0
    calls = tight.engine.backend.model.calls  # the network the engine runs (maybe a copy)
    assert any(shape[0] == 1 for shape in calls)  # the batch was split
    assert any(shape[-1] < 90 for shape in calls)  # then frames were tiled
    a, b = np.stack(decode_y(reference)), np.stack(decode_y(retried))
    assert a.shape == b.shape and a.shape[0] == 50
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # bicubic's support is 2 px


def test_a_batch_split_for_memory_keeps_each_frame_with_a_graphs_reused_output():
    """A CUDA graph's backend hands back one output tensor per shape, which its next call
    overwrites: a batch split in equal halves came out as the second half twice."""
    from carn_stream.pipeline.colour import ColourSpec

    engine = Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32"))
    eager = engine.backend
    outputs: dict[tuple, torch.Tensor] = {}

    def graph_like(x, scale):  # (2 frames at most fit)
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        made = eager(x, scale)
        return outputs.setdefault((tuple(x.shape), scale), torch.empty_like(made)).copy_(made)

    engine.backend = graph_like
    frames = np.random.default_rng(0).integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    spec, out_spec = ColourSpec("rgb"), ColourSpec("yuv")
    (batch, *_), = [engine.upscale([frames], spec, 2, out_spec)]
    alone = Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32"))
    for n, frame in enumerate(frames):
        assert np.array_equal(batch[n], alone.upscale([frame[None]], spec, 2, out_spec)[0][0]), n
    assert engine.oom_retries == 1


def test_memory_stays_bounded_when_a_stage_is_slow(clips, tmp_path, monkeypatch):
    """Decode runs ahead of encode by at most the queues' capacity."""
    import carn_stream.pipeline.run as run_module

    decoded = 0
    original = run_module._next_frame

    def counting(items):
        nonlocal decoded
        audio, frame, seconds = original(items)
        decoded += frame is not None
        return audio, frame, seconds

    monkeypatch.setattr(run_module, "_next_frame", counting)

    class Slow(Bicubic):
        def forward(self, x, scale=None):
            import time

            time.sleep(0.05)
            return super().forward(x, scale)

    ahead = []
    worker = InferenceWorker(Engine(Slow(), EngineConfig(device="cpu", precision="fp32")))
    options = PipelineOptions(scale=2, batch_size=2, queue_frames=3, in_flight_batches=1)
    source = clips["bunny_audio"]
    try:
        asyncio.run(
            run_pipeline(
                source,
                one_segment(source),
                tmp_path / "o.ts",
                options,
                worker,
                lambda r: ahead.append(decoded - r.done),
            )
        )
    finally:
        worker.close()
    # Frames decoded but not yet muxed: frame queue 3, batcher's group 2 + 1 held back, batch
    # queue 1 x 2, results queue 1 x 2, the batch being encoded 2, one waiting in the decoder.
    # The bound depends on the options only, never on the length of the video.
    assert max(ahead) <= 3 + 3 + 2 + 2 + 2 + 1
    assert len(ahead) == 50


# --------------------------------------------------------------------------- failures


def test_cancelling_a_run_leaves_no_output(clips, tmp_path):
    class Slow(Bicubic):
        def forward(self, x, scale=None):
            import time

            time.sleep(0.2)
            return super().forward(x, scale)

    worker = InferenceWorker(Engine(Slow(), EngineConfig(device="cpu", precision="fp32")))
    out = tmp_path / "cancelled.ts"
    source = clips["bunny_audio"]
    options = PipelineOptions(scale=2, batch_size=1)

    async def main():
        task = asyncio.create_task(run_pipeline(source, one_segment(source), out, options, worker))
        await asyncio.sleep(0.8)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        worker.close()
    assert list(tmp_path.iterdir()) == []


def test_a_failing_model_fails_the_run_and_removes_partial_hls(clips, tmp_path):
    class Broken(Bicubic):
        calls = 0

        def forward(self, x, scale=None):
            Broken.calls += 1
            if Broken.calls > 3:
                raise ValueError("model exploded")
            return super().forward(x, scale)

    worker = InferenceWorker(Engine(Broken(), EngineConfig(device="cpu", precision="fp32")))
    out = tmp_path / "hls"
    try:
        with pytest.raises(ValueError, match="model exploded"):
            upscale(clips["bunny_audio"], out, worker, batch_size=1)
    finally:
        worker.close()
    assert not out.exists()


def test_inputs_that_are_not_videos_fail_clearly(tmp_path, bicubic_worker, data_dir):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(InputError, match="not a video file"):
        upscale(text, tmp_path / "a.mp4", bicubic_worker)
    with pytest.raises(InputError, match="no such file"):
        upscale(tmp_path / "missing.mp4", tmp_path / "b.mp4", bicubic_worker)
    audio_only = write_audio_only(data_dir / "video" / "bigbuckbunny.mp4", tmp_path / "audio.m4a")
    with pytest.raises(InputError, match="no video stream"):
        upscale(audio_only, tmp_path / "c.mp4", bicubic_worker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio.m4a", "notes.mp4"]


def test_a_non_empty_hls_folder_is_never_overwritten(clips, bicubic_worker, tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(OutputError, match="not an empty folder"):
        upscale(clips["carphone"], tmp_path, bicubic_worker)  # no suffix: an HLS folder
    assert (tmp_path / "keep.txt").read_text() == "user data"
    upscale(clips["carphone"], tmp_path / "no" / "o.mp4", bicubic_worker)  # parents created
    assert (tmp_path / "no" / "o.mp4").is_file()


# --------------------------------------------------------------------------- quality


@pytest.mark.slow
def test_carn_m_beats_bicubic_on_real_video(data_dir, carn_worker, bicubic_worker, tmp_path):
    """carphone (176x144, 120 frames) downscaled x2 with bicubic, upscaled back, Y-PSNR against
    the original's stored luma. Both outputs lossless (crf 0, yuv420p) through the same
    conversion, so only the upscaler differs. Measured: CARN-M 36.59 dB, bicubic 30.42 dB."""
    from carn_stream.model.imresize import bicubic_uint8
    from carn_stream.model.metrics import psnr

    source = data_dir / "video" / "carphone_pristine.mp4"
    truth = decode_y(source)
    low = [bicubic_uint8(frame, scale=0.5) for frame in decode_rgb(source)]
    lr = write_clip(
        tmp_path / "lr.mkv", low, rate=Fraction(30000, 1001), codec="ffv1", pix_fmt="bgr0"
    )
    scores = {}
    for name, worker in (("carn", carn_worker), ("bicubic", bicubic_worker)):
        out = tmp_path / f"{name}.mp4"
        upscale(lr, out, worker, encoder=EncoderOptions(crf=0))
        frames = decode_y(out)
        assert len(frames) == len(truth) == 120
        scores[name] = np.mean([psnr(a, b) for a, b in zip(frames, truth, strict=True)])
    assert scores["carn"] >= 36.4
    assert scores["bicubic"] <= 30.6
    assert scores["carn"] - scores["bicubic"] >= 6.0


# --------------------------------------------------------------------------- stopping


def _gray_frame(index: int) -> SourceFrame:
    plane = np.zeros((8, 8), np.uint8)
    return SourceFrame(index, index, Fraction(1, 25), (plane,), ColourSpec("gray"))


@pytest.mark.parametrize("turns", range(6))
def test_the_batch_stage_stops_when_cancelled_as_a_frame_arrives(turns):
    """A stage cancelled by its TaskGroup in the very moment a frame reaches it must stop (on
    Python 3.11, asyncio.wait_for swallowed such a cancellation: the stage carried on, waited
    for frames from a decode stage that had failed, and the run never ended)."""

    async def go() -> bool:
        run = object.__new__(_PipelineRun)  # the batch stage needs only its queues
        run.options = PipelineOptions(scale=2, batch_size=2, max_wait=30.0)
        run.frames_q, run.batches_q = asyncio.Queue(4), asyncio.Queue(4)
        stage = asyncio.create_task(run.batch())
        await run.frames_q.put(_gray_frame(0))
        for _ in range(3):  # the stage now waits (30 s at most) for a second frame
            await asyncio.sleep(0)
        await run.frames_q.put(_gray_frame(1))
        for _ in range(turns):  # the frame on its way at one step or another
            await asyncio.sleep(0)
        stage.cancel()
        await asyncio.wait({stage}, timeout=2.0)
        stopped = stage.done()
        stage.cancel()
        return stopped

    assert asyncio.run(go()), "the batch stage ignored its cancellation"
