"""Per-title compression-aware models and their report: the encoded copy, its training pairs,
VMAF, BD-rate, the temporal measure, the plot and the ``assess`` command."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from carn_stream.model.bdrate import bd_rate, quality_at, winning_ranges
from carn_stream.model.evaluation import degrade
from carn_stream.model.metrics import psnr


@pytest.fixture(scope="module")
def small_clip(data_dir: Path, tmp_path_factory) -> Path:
    """12 frames of Big Buck Bunny at 320x180, encoded almost losslessly (CRF 12)."""
    from tests.media import decode_rgb, downscale_frames, write_clip

    frames = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 12), (320, 180))
    return write_clip(tmp_path_factory.mktemp("title") / "bbb.mp4", frames, rate=Fraction(25))


def test_training_pairs_come_from_the_encoded_copy(small_clip, tmp_path):
    from carn_stream.model.training_data import given_pairs
    from carn_stream.pipeline.media.delivery import encode_copy
    from carn_stream.pipeline.title_frames import read_pairs

    copy = encode_copy(small_clip, tmp_path / "copy.mp4", scale=2, crf=34)
    assert (copy.width, copy.height, copy.frames) == (160, 90, 12)
    assert copy.bitrate > 0 and copy.path.is_file()
    pairs = read_pairs(small_clip, copy.path, [1, 6, 11], 2)
    assert [p.index for p in pairs] == [1, 6, 11]
    gaps = []
    for p in pairs:
        assert p.lr.shape == (90, 160, 3) and p.hr.shape == (180, 320, 3)
        bicubic = degrade(p.hr, 2)
        # The same picture (measured 28.9-30.0 dB against the bicubic downscale) ...
        gaps.append(psnr(p.lr, bicubic))
        assert 25 < gaps[-1] < 36, gaps
    # ... with the encoder's losses in it: a CRF 12 copy of the same frames is much closer
    # (measured 30.6-31.7 dB; the scalers differ: FFmpeg's bicubic against MATLAB's).
    close = encode_copy(small_clip, tmp_path / "close.mp4", scale=2, crf=12)
    near = [psnr(q.lr, degrade(q.hr, 2)) for q in read_pairs(small_clip, close.path, [1, 6, 11], 2)]
    assert min(n - g for n, g in zip(near, gaps, strict=True)) > 1.0, (near, gaps)
    built = given_pairs([(p.lr, p.hr) for p in pairs], 2, 32)
    assert len(built[2]) == 3 and built[2][0].lr is not None


@pytest.mark.parametrize("scale", [2, 3])
def test_a_copy_of_an_odd_sized_title_is_an_exact_fraction_of_what_it_is_compared_with(
    data_dir, tmp_path, scale
):
    """Before, a 175x143 title stored at x2 was resized whole to 86x70 (1/2.03) and then
    compared with its top-left 172x140: the report and the training pairs were misaligned
    (the report's original-size curve read 26.4 dB at CRF 22 and 30 alike, where the same
    frames at an even size gave 39.6)."""
    from carn_stream.pipeline.media.delivery import encode_copy
    from carn_stream.pipeline.title_frames import read_pairs
    from tests.media import decode_rgb, downscale_frames, write_clip

    frames = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 6), (320, 180))
    odd = write_clip(tmp_path / "odd.mp4", [f[:143, :317] for f in frames], pix_fmt="yuv444p",
                     options={"crf": "0"})  # fmt: skip
    copy = encode_copy(odd, tmp_path / "copy.mp4", scale=scale, crf=12)
    w, h = (317 // scale) // 2 * 2, (143 // scale) // 2 * 2
    assert (copy.width, copy.height) == (w, h)
    for pair in read_pairs(odd, copy.path, [0, 3, 5], scale):
        assert pair.hr.shape == (h * scale, w * scale, 3)
        # The same picture: measured 34.6-35.0 dB at x2, 33.3-33.5 at x3 (before: 24.8 at
        # x2, the copy shifted against the original by up to 3 pixels).
        assert psnr(pair.lr, degrade(pair.hr, scale)) > 29


def test_a_rotated_titles_copy_keeps_its_rotation_tag(data_dir, tmp_path):
    """The tag was set at the first video frame, after the audio had started the file: the
    muxer had written its header without it, and a portrait title's copy played on its side."""
    from carn_stream.pipeline.media.decode import display_rotation
    from carn_stream.pipeline.media.delivery import encode_copy
    from tests.media import decode_rgb, downscale_frames, write_clip

    video = data_dir / "video" / "bigbuckbunny.mp4"
    frames = downscale_frames(decode_rgb(video, 12), (128, 72))
    portrait = write_clip(tmp_path / "portrait.mp4", frames, rotation=-90, audio_from=video,
                          audio_seconds=0.5)  # fmt: skip
    copy = encode_copy(portrait, tmp_path / "copy.mp4", scale=2, crf=30)
    assert display_rotation(portrait) == display_rotation(copy.path) == -90



def first_channel(path: Path) -> tuple[float, int, np.ndarray]:
    """The first audio stream's start (seconds), rate and first channel, decoded, in [-1, 1]."""
    import av

    with av.open(str(path)) as container:
        frames = list(container.decode(container.streams.audio[0]))
    chunks = [f.to_ndarray()[0][:: 1 if f.format.is_planar else len(f.layout.channels)]
              for f in frames]  # fmt: skip
    samples = np.concatenate(chunks).astype(np.float64)
    if np.issubdtype(chunks[0].dtype, np.integer):
        samples /= 32768
    return float(frames[0].pts * frames[0].time_base), frames[0].sample_rate, samples


@pytest.mark.parametrize(
    "audio,layout,stored",
    [("aac", "5.1", "aac"), ("mp2", "stereo", "aac"), ("pcm_s16le", "stereo", "aac"),
     ("pcm_s16le", "5.1", "aac")],
)  # fmt: skip
def test_a_whole_titles_copy_keeps_its_audio_subtitles_and_tags(data_dir, tmp_path, audio,
                                                                layout, stored):  # fmt: skip
    """A video stored small is served from its copy, which kept the video and its audio only:
    its subtitles, languages and chapters were lost, and a title whose audio MP4 cannot hold
    (PCM from Matroska) could not be stored at all ("Invalid argument"). The copy now keeps
    what an MP4 output keeps, copies audio MP4 holds, and makes other audio AAC, sample for
    sample in place, its channels kept (the Matroska PCM names no layout: 6 channels are 5.1).
    The rate-quality curves' copies (video only) have no other stream. (The AAC case copies
    the source's 5.1 AAC.)"""
    import av

    from carn_stream.pipeline.media.delivery import encode_copy
    from tests.media import decode_rgb, downscale_frames, write_rich_mkv

    video = data_dir / "video" / "bigbuckbunny.mp4"
    frames = downscale_frames(decode_rgb(video, 25), (96, 54))
    encoder = None if audio == "aac" else audio
    rich = write_rich_mkv(tmp_path / "rich.mkv", frames, audio_from=video, audio_seconds=1.0,
                          audio_encoder=encoder, audio_layout=layout)  # fmt: skip
    bare = encode_copy(rich, tmp_path / "bare.mp4", scale=2, crf=30, video_only=True)
    with av.open(str(bare.path)) as c:
        assert [s.type for s in c.streams] == ["video"]
    copy = encode_copy(rich, tmp_path / "copy.mp4", scale=2, crf=30)
    assert (copy.width, copy.height, copy.frames) == (48, 26, 25)
    with av.open(str(copy.path)) as c:
        assert c.metadata["title"] == "A rich test clip"
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["Opening", "Ending"]
        assert c.streams.video[0].sample_aspect_ratio == Fraction(4, 3)
        assert c.streams.video[0].metadata["language"] == "jpn"
        (sound,) = c.streams.audio
        assert sound.codec_context.name == stored and sound.metadata["language"] == "fra"
        assert sound.codec_context.layout.name == layout
        (subtitles,) = c.streams.subtitles
        assert subtitles.codec_context.name == "mov_text"
        assert subtitles.metadata["language"] == "eng"
        assert subtitles.disposition == av.stream.Disposition.default | av.stream.Disposition.forced
        cues = [(p.pts * p.time_base, bytes(p)) for p in c.demux(subtitles) if p.size > 2]
    assert cues == [(Fraction(1, 10), b"\x00\x0bHello there"),
                    (Fraction(1, 2), b"\x00\x0aSecond cue")]  # fmt: skip
    start, rate, got = first_channel(copy.path)
    want_start, want_rate, want = first_channel(rich)
    assert (start, rate) == (want_start, want_rate)
    if stored == audio:  # copied: the same packets
        assert np.array_equal(got, want)
        return
    # Made AAC in place: as many samples, at the same times (measured 23.5 dB; a shift of one
    # AAC frame, 1024 samples, gives below 0 dB).
    assert abs(len(got) - len(want)) < 1024
    n = min(len(got), len(want))
    error = np.sum((got[:n] - want[:n]) ** 2)
    assert 10 * math.log10(np.sum(want[:n] ** 2) / error) > 15


def test_bd_rate_of_curves_with_a_known_answer():
    rates = [100.0, 200.0, 400.0, 800.0, 1600.0]
    anchor = [(r, 30 + 5 * math.log2(r / 100)) for r in rates]
    # The same qualities at 80% of the bits: -20% exactly, whatever the fit.
    assert bd_rate(anchor, [(0.8 * r, q) for r, q in anchor]) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(anchor, [(1.5 * r, q) for r, q in anchor]) == pytest.approx(50.0, abs=1e-6)
    # Over the common quality range only: a test curve reaching half the qualities.
    assert bd_rate(anchor, [(0.5 * r, q) for r, q in anchor[:3]]) == pytest.approx(-50, abs=1e-6)
    assert math.isnan(bd_rate(anchor, [(r, q + 100) for r, q in anchor]))


def test_winning_range_ends_where_the_curves_cross():
    rates = np.geomspace(2, 50, 6)
    anchor = [(r, 20 * math.log10(r)) for r in rates]  # steeper: wins at high rates
    test = [(r, 10 * math.log10(r) + 10) for r in rates]  # equal at r = 10
    ranges = winning_ranges(anchor, test)
    assert len(ranges) == 1
    low, high = ranges[0]
    assert low == pytest.approx(2) and high == pytest.approx(10, rel=0.02)
    assert quality_at(test, 5) > quality_at(anchor, 5)
    assert math.isnan(quality_at(test, 100))


def test_vmaf_of_identical_frames_is_the_maximum_and_blur_ranks_below(small_clip):
    from carn_stream.model.imresize import bicubic_uint8
    from carn_stream.model.vmaf import Vmaf, luma
    from carn_stream.pipeline.title_frames import read_frames

    frames = list(read_frames(small_clip, range(6)).values())
    blurred = [bicubic_uint8(bicubic_uint8(f, scale=0.5), scale=2.0) for f in frames]
    ref = [luma(f) for f in frames]
    vmaf = Vmaf(chunk=4)  # two chunks: the motion feature spans them
    same = vmaf.scores(ref, ref)
    # vmaf_v0.6.1 gives identical frames 97.43 without motion (the first frame) and up to 100
    # with it (measured 97.43, 98.20, 98.89, 98.89, 98.94, 99.31), as libvmaf does.
    assert same.shape == (6,) and same[0] == pytest.approx(97.43, abs=0.01), same
    assert np.all(same >= 97.4) and np.all(same <= 100)
    noise = np.random.default_rng(1).integers(-2, 3, ref[0].shape)
    grain = vmaf.scores(ref, [np.clip(r + noise, 0, 255).astype(np.uint8) for r in ref])
    soft = vmaf.scores(ref, [luma(f) for f in blurred])
    # Measured: +-2 codes of grain 96.3-98.2; a x2 bicubic down-and-up copy 81.0-83.0 (and
    # 29.5-29.6 dB PSNR).
    assert np.all(same > grain) and np.all(grain > soft), (same, grain, soft)
    assert np.all(soft < 86), soft
    assert max(psnr(b, f) for b, f in zip(blurred, frames, strict=True)) < 31


def test_temporal_error_sees_flicker_not_motion(small_clip):
    from carn_stream.model.temporal import block_motion, motions, warping_error
    from carn_stream.model.vmaf import luma
    from carn_stream.pipeline.title_frames import read_frames

    still = luma(read_frames(small_clip, [0])[0]).astype(np.float32)
    # A pan of 3 px to the left per frame over a real picture.
    ref = [np.ascontiguousarray(still[:, 3 * t : 3 * t + 256]) for t in range(5)]
    motion = motions(ref)
    inner = motion[0][1:-1, 1:-1].reshape(-1, 2)
    assert (inner == torch.tensor([0, 3])).all(1).float().mean() > 0.8  # measured 1.0
    rng = np.random.default_rng(0)
    pattern = rng.normal(0, 4, still.shape).astype(np.float32)
    moving = [r + pattern[:, 3 * t : 3 * t + 256] for t, r in enumerate(ref)]
    flicker = [r + rng.normal(0, 4, r.shape).astype(np.float32) for r in ref]
    steady, unsteady = warping_error(moving, ref, motion), warping_error(flicker, ref, motion)
    # Measured: 0.02 (errors that follow the picture) against 4.5 (new errors every frame).
    assert steady < 0.5 and unsteady > 3.5, (steady, unsteady)
    assert warping_error(ref, ref) == 0.0
    assert block_motion(torch.from_numpy(ref[0]), torch.from_numpy(ref[0])).abs().sum() == 0


def test_report_plot_is_an_svg_with_one_line_per_curve_and_panel():
    from carn_stream.model.rd_svg import Panel, rate_quality_svg

    curves = {"original size": [(300, 80), (900, 92)], "title": [(150, 82), (400, 88)]}
    svg = rate_quality_svg("clip", [Panel("VMAF", curves, [(150, 500)]),
                                    Panel("PSNR", curves)])  # fmt: skip
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 4
    assert len(root.findall(f"{ns}circle")) == 8
    assert "upscaling wins" in svg and "title" in svg


@pytest.mark.slow
def test_assess_prints_the_report_and_writes_plot_and_weights(small_clip, weights_path, tmp_path,
                                                               capsys):  # fmt: skip
    from carn_stream.cli import main

    out = tmp_path / "assess"
    code = main(["assess", str(small_clip), "--scale", "2", "--frames", "4", "--crfs", "26,34",
                 "--train-frames", "8", "--steps", "2", "--batch-size", "2", "--patch-size",
                 "24", "--weights", str(weights_path), "--out", str(out), "--precision",
                 "fp32", "--json"])  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [v["name"] for v in doc["variants"]] == ["bicubic", "generic CARN-M", "title CARN-M"]
    assert doc["window"] == [4, 4] and doc["size"] == [320, 180]
    assert [p["crf"] for p in doc["curves"]["original size"]] == [26, 34]
    assert set(doc["bd_rate"]["title CARN-M"]) >= {"vmaf", "psnr"}
    assert set(doc["timings"]) == {"copy", "training", "report", "total"}
    assert doc["training"]["train_frames"] + doc["training"]["heldout_frames"] == 8
    assert doc["training"]["train_precision"] == "fp32"  # CARN_STREAM_TRAIN_AMP=off (conftest)
    bicubic, generic, _ = doc["variants"]
    # Measured on this 160x90 copy at CRF 30: bicubic 28.08 dB / VMAF 48.3, the generic model
    # 27.90 dB / VMAF 52.9 (sharper, but its sharpening of the encoder's blocks costs PSNR).
    assert generic["vmaf"] > bicubic["vmaf"] + 3 and abs(generic["psnr"] - bicubic["psnr"]) < 1
    assert all(v["temporal"] > 0 for v in doc["variants"])
    assert (out / "title-x2.pth").is_file() and (out / "report.json").is_file()
    ET.fromstring((out / "report.svg").read_text())
    # The text form names every part.
    assert main(["assess", str(small_clip), "--frames", "3", "--crfs", "26,34", "--title-weights",
                 str(out / "title-x2.pth"), "--weights", str(weights_path), "--out",
                 str(tmp_path / "again"), "--precision", "fp32"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "BD-rate of title CARN-M vs original size" in text and "time: copy" in text
    # A raw stream of an MP4's packets at 30 fps: timed at its header's rate first (FFmpeg's
    # own reading gave it 25 fps whatever the header said), so its bit rates are the MP4's.
    from tests.media import decode_rgb, raw_stream, write_clip

    clip = write_clip(tmp_path / "bbb30.mp4", decode_rgb(small_clip), rate=Fraction(30))
    raw = raw_stream(clip, tmp_path / "bbb30.h264")
    args = ["assess", str(raw), "--frames", "3", "--crfs", "26,34", "--title-weights",
            str(out / "title-x2.pth"), "--weights", str(weights_path), "--precision", "fp32"]
    assert main([*args, "--out", str(tmp_path / "raw"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "bbb30.h264: a raw stream without timestamps, timed at 30 fps" in captured.err
    raw_doc = json.loads(captured.out.strip().splitlines()[-1])
    assert main([*args[:1], str(clip), *args[2:], "--out", str(tmp_path / "mp4"),
                 "--json"]) == 0  # fmt: skip
    mp4_doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert raw_doc["curves"] == mp4_doc["curves"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--frames", "1"], "--frames must be 2 or more"),
        (["--copy-cap-kbps", "nan"], "--copy-cap-kbps must be a positive number, got nan"),
        (["--copy-cap-kbps", "0"], "--copy-cap-kbps must be a positive number, got 0"),
        # these were found out after the copy was encoded, its folder made
        (["--store-crf", "99"], "the stored copy: crf must be between 0 and 51, got 99"),
        (["--train-frames", "0"], "--train-frames must be 2 or more"),
        (["--title-weights", "nope.pth"], "--title-weights nope.pth: no such file"),
        (["--lr", "nan"], "invalid training setting: lr=nan"),
    ],
)
def test_assess_refuses_bad_options_before_any_work(small_clip, tmp_path, capsys, extra, message):
    from carn_stream.cli import main

    out = tmp_path / "assess"
    assert main(["assess", str(small_clip), "--out", str(out), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_assess_and_encoded_tune_refuse_what_is_no_video_before_making_folders(tmp_path, capsys):
    from carn_stream.cli import main

    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    out, run = tmp_path / "assess", tmp_path / "run"
    assert main(["assess", str(text), "--out", str(out)]) == 1  # left an empty folder
    assert main(["tune", str(text), str(tmp_path / "t.pth"), "--scale", "2", "--degradation",
                 "encoded", "--crf", "99", "--run-dir", str(run)]) == 1  # fmt: skip
    assert "the stored copy: crf must be between 0 and 51" in capsys.readouterr().err
    assert not out.exists() and not run.exists()


@pytest.mark.slow
def test_tune_encoded_trains_on_the_copy_and_writes_tunes_report(small_clip, weights_path,
                                                                  tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    # (The held-out frames are upscaled in the settings' precision: fp32, as conftest sets it;
    # the training runs in bf16, the setting's, emulated where the CPU lacks it.)
    monkeypatch.setenv("CARN_STREAM_TRAIN_AMP", "bf16")
    from carn_stream.cli import main
    from carn_stream.model import carn_m, load_weights

    out = tmp_path / "bbb.pth"
    code = main(["tune", str(small_clip), str(out), "--scale", "2", "--degradation", "encoded",
                 "--crf", "32", "--frames", "8", "--holdout-every", "4", "--steps", "2",
                 "--batch-size", "2", "--patch-size", "24", "--weights", str(weights_path),
                 "--run-dir", str(tmp_path / "run")])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["degradation"] == "encoded" and report["crf"] == 32
    assert report["train_precision"] == "bf16"  # as the setting asks, on any CPU
    assert (report["train_frames"], report["heldout_frames"]) == (6, 2)
    # The keys the service reads from a tune report.
    assert {"generic_psnr", "tuned_psnr", "gain_db"} <= set(report)
    load_weights(carn_m(), out)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()  # resumable


def test_a_cancelled_copy_stops_its_process_at_once_and_never_blocks_the_loop(data_dir,
                                                                            tmp_path):  # fmt: skip
    """A "store small" ingest whose client hangs up (or whose video is deleted, or whose
    service stops) is cancelled while its copy is encoded. The copy's process was in a pool
    whose shutdown waited, on the event loop, for the whole encode (every request of the
    service stalled meanwhile), and the copy was finished anyway."""
    import asyncio
    import itertools
    import multiprocessing
    import time

    from carn_stream.server.vod.title import make_copy

    dest = tmp_path / "stored.mp4"

    async def cancel_once_it_encodes() -> tuple[float, float]:
        task = asyncio.create_task(make_copy(data_dir / "video" / "bigbuckbunny.mp4", dest, 2,
                                             "h264", 30))  # fmt: skip
        for _ in range(600):  # (at most 60 s for the child to start writing)
            if dest.with_name(f".{dest.name}.part").exists():
                break
            await asyncio.sleep(0.1)
        beats = []

        async def heartbeat() -> None:
            while True:
                beats.append(time.monotonic())
                await asyncio.sleep(0.01)

        beating = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took = time.monotonic() - started
        await asyncio.sleep(0.05)
        beating.cancel()
        return took, max(b - a for a, b in itertools.pairwise(beats))

    took, longest_gap = asyncio.run(cancel_once_it_encodes())
    assert took < 1.0 and longest_gap < 0.5  # the loop kept serving throughout
    assert not dest.exists()  # stopped, not finished
    assert not [p for p in multiprocessing.active_children() if p.name == "carn-stream-copy"]
