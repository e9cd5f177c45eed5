"""Segments as the unit of work: exact plans, segment-by-segment output, resuming, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from carn_stream.model.baselines import Bicubic
from carn_stream.model.metrics import psnr
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker
from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.execution.executors import InProcessExecutor, PlanRequest
from carn_stream.pipeline.execution.segmented import SegmentedRun, SegmentFailed
from carn_stream.pipeline.media.formats import FORMATS, OutputFormat
from carn_stream.pipeline.media.hls import PLAYLIST_NAME, segment_name
from carn_stream.pipeline.media.seeking import from_first_keyframe, seek_to_keyframe
from carn_stream.pipeline.media.segments import (
    PLAN_RULE,
    WHOLE,
    SegmentPlan,
    audio_packets,
    plan_segments,
    segment_frames,
    segments_show_their_start,
)
from carn_stream.pipeline.run import PipelineOptions
from carn_stream.server.jobs.store import JobStore
from tests.helpers import REPO_ROOT, launch_chromium, official_weights_path
from tests.media import (
    decode_rgb,
    downscale_frames,
    facts,
    raw_stream,
    raw_stream_from,
    remux_across_the_wrap,
    remux_cut,
    write_clip,
)
from tests.service import ServerProcess, media_server, wait_for

X264 = {"crf": "20", "preset": "veryfast"}


@pytest.fixture(scope="module")
def clips(data_dir, tmp_path_factory) -> dict[str, Path]:
    """Clips made from the real videos, each with a property segmenting must survive."""
    video = data_dir / "video"
    d = tmp_path_factory.mktemp("segment-clips")
    carphone = decode_rgb(video / "carphone_pristine.mp4", 120)
    small = [f[:72, :88] for f in carphone]
    bunny = downscale_frames(decode_rgb(video / "bigbuckbunny.mp4", 100), (96, 54))
    gop = {**X264, "x264-params": "keyint=25:min-keyint=25:scenecut=0"}
    steps = [1, 2, 1, 3, 1, 1, 2, 1] * 10  # irregular frame durations (1/25 s units)
    vfr_pts = [sum(steps[:i]) for i in range(len(steps))]
    return {
        # B-frames (x264 veryfast uses 3) and a keyframe each second; audio from the real clip
        "bframes": write_clip(d / "bframes.mp4", bunny, options=gop,
                              audio_from=video / "bigbuckbunny.mp4", audio_seconds=4.0),
        # open GOPs: the pictures before each I-frame in display order follow it in decode order
        "open_gop": write_clip(d / "open.mp4", small[:100],
                               options={**X264, "x264-params": "open-gop=1:keyint=25:"
                                        "min-keyint=25:scenecut=0"}),
        "vfr": write_clip(d / "vfr.mp4", small[:80], pts=vfr_pts, time_base=Fraction(1, 25),
                          options={**X264, "g": "10"}),
        "one_keyframe": write_clip(d / "one.mp4", small[:60], options={**X264, "g": "1000"}),
    }  # fmt: skip


@pytest.fixture(scope="module")
def wrapped(clips, tmp_path_factory) -> Path:
    """The B-frames clip in MPEG-TS, its 33-bit clock wrapping 2 s in (times from -2 s)."""
    return remux_across_the_wrap(clips["bframes"], tmp_path_factory.mktemp("wrap") / "w.ts", 2.0)


def all_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def is_open_gop(path: Path) -> bool:
    """Some packet after a keyframe (in decode order) is shown before it."""
    with av.open(str(path)) as c:
        key_pts = None
        for packet in c.demux(video=0):
            if packet.pts is None:
                continue
            if packet.is_keyframe:
                key_pts = packet.pts
            elif key_pts is not None and packet.pts < key_pts:
                return True
    return False


# --------------------------------------------------------------------------- plans


@pytest.mark.parametrize("name", ["bframes", "open_gop", "vfr", "one_keyframe"])
def test_every_frame_is_in_exactly_one_segment_in_order(clips, name):
    plan = plan_segments(clips[name], target_seconds=1.0)
    plan.check()
    expected = all_pts(clips[name])
    got = []
    for segment in plan.segments:
        with av.open(str(clips[name])) as container:
            frames = list(segment_frames(container, segment))
        assert [f.index for f in frames] == list(
            range(segment.first_frame, segment.first_frame + segment.frames)
        )
        got += [f.pts for f in frames]
    assert got == expected  # every frame once, in order, with its own timestamp
    assert plan.frames == len(expected)
    durations = sum(s.duration for s in plan.segments)
    assert abs(durations - facts(clips[name]).duration) < 1e-6


def test_plans_cut_on_keyframes_near_the_target(clips):
    assert is_open_gop(clips["open_gop"])  # the clip really has open GOPs
    plan = plan_segments(clips["bframes"], target_seconds=2.0)
    assert [s.frames for s in plan.segments] == [50, 50]  # keyframes every 25 frames (1 s)
    assert [round(s.duration, 6) for s in plan.segments] == [2.0, 2.0]
    plan = plan_segments(clips["bframes"], target_seconds=1.0)
    assert len(plan.segments) == 4
    assert plan.keyframe_aligned and all(s.key for s in plan.segments)


def test_an_input_with_one_keyframe_is_cut_into_segments_of_the_target_length(clips):
    # Once one segment of 60 frames: no resume, no spread over a cluster, one HLS segment.
    plan = plan_segments(clips["one_keyframe"], target_seconds=1.0)
    assert [s.frames for s in plan.segments] == [25, 35]  # the 0.4 s tail joins the last
    assert [s.key for s in plan.segments] == [True, False] and not plan.keyframe_aligned
    # The segment that starts between keyframes decodes to exactly the frames a decode of
    # the whole input gives there, pixel for pixel (decoded from the keyframe, then dropped).
    with av.open(str(clips["one_keyframe"])) as container:
        whole = [f.planes for f in segment_frames(container, plan_segments(
            clips["one_keyframe"], WHOLE).segments[0])]  # fmt: skip
    with av.open(str(clips["one_keyframe"])) as container:
        second = list(segment_frames(container, plan.segments[1]))
    assert [f.index for f in second] == list(range(25, 60))
    assert all(
        all(np.array_equal(a, b) for a, b in zip(f.planes, whole[f.index], strict=True))
        for f in second
    )


def test_cuts_stay_on_keyframes_where_they_come_often_enough(tmp_path, clips):
    frames = decode_rgb(clips["bframes"], 100)
    # A keyframe every 2 s against 1 s segments: within 3 targets, so the input is cut on its
    # keyframes only (x264's default, a keyframe every 10 s at 25 fps, against the service's
    # 4 s segments is the same case): every segment can be copied as it is.
    sparse = write_clip(tmp_path / "sparse.mp4", frames,
                        options={**X264, "x264-params": "keyint=50:min-keyint=50:scenecut=0"})
    plan = plan_segments(sparse, target_seconds=1.0)
    assert [s.frames for s in plan.segments] == [50, 50] and plan.keyframe_aligned
    assert plan_segments(sparse, target_seconds=4.0).keyframe_aligned
    # A GOP of 3.6 s: a long GOP against 1 s segments, cut between its keyframes.
    long_gop = write_clip(tmp_path / "long-gop.mp4", frames,
                          options={**X264, "x264-params": "keyint=90:min-keyint=90:scenecut=0"})
    plan = plan_segments(long_gop, target_seconds=1.0)
    assert [s.frames for s in plan.segments] == [25, 25, 25, 25]
    assert [s.key for s in plan.segments] == [True, False, False, False]
    # A keyframe every 1.2 s: near enough to the 1 s target, so every cut is on one.
    near = write_clip(tmp_path / "near.mp4", frames,
                      options={**X264, "x264-params": "keyint=30:min-keyint=30:scenecut=0"})
    plan = plan_segments(near, target_seconds=1.0)
    assert [s.frames for s in plan.segments] == [30, 30, 40] and plan.keyframe_aligned


def test_a_plan_survives_the_store_and_refuses_damage(clips):
    plan = plan_segments(clips["vfr"], target_seconds=1.0)
    assert SegmentPlan.from_dict(plan.to_dict()) == plan
    broken = plan.to_dict()
    broken["segments"][1]["start_pts"] += 1
    with pytest.raises(ValueError, match="does not start where"):
        SegmentPlan.from_dict(broken)


def test_segments_shorter_than_one_second_are_avoided(tmp_path, clips):
    frames = decode_rgb(clips["bframes"], 40)
    # keyframes every 10 frames (0.4 s): segments must still last at least a second
    clip = write_clip(tmp_path / "short-gop.mp4", frames, options={**X264, "g": "10"})
    plan = plan_segments(clip, target_seconds=1.0)
    assert all(s.duration >= 1.0 for s in plan.segments[:-1])
    assert plan.segments[-1].duration >= 1.0 or len(plan.segments) == 1


# --------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def bicubic_worker():
    worker = InferenceWorker(Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32")))
    yield worker
    worker.close()


def make(
    source: Path, output: Path, fmt: str | OutputFormat, worker, seconds=1.0, **kwargs
) -> SegmentedRun:
    async def go() -> SegmentedRun:
        executor = InProcessExecutor(worker)
        plan = await executor.plan(PlanRequest(source, seconds))
        chosen = FORMATS[fmt] if isinstance(fmt, str) else fmt
        run = SegmentedRun(source=source, plan=plan, fmt=chosen, output=output,
                           work_dir=output.parent / f".{output.name}.work",
                           options=PipelineOptions(scale=2, batch_size=2), executor=executor,
                           **kwargs)  # fmt: skip
        await run.execute()
        await executor.close()
        return run

    return asyncio.run(go())


def test_segmented_mp4_keeps_every_frame_timestamp_and_audio_packet(clips, bicubic_worker,
                                                                     tmp_path):  # fmt: skip
    out = tmp_path / "out.mp4"
    run = make(clips["bframes"], out, "mp4", bicubic_worker)
    assert len(run.plan.segments) == 4 and len(run.done) == 4
    src, got = facts(clips["bframes"]), facts(out)
    assert (got.width, got.height) == (192, 108)
    assert got.pts == src.pts and got.time_base == src.time_base  # exact, B-frames and all
    assert got.audio_packets == src.audio_packets and got.audio_codec == "aac"  # bit for bit
    assert not list(tmp_path.rglob("*.ts"))  # the segments were joined, then removed


def test_segmented_vfr_stays_vfr(clips, bicubic_worker, tmp_path):
    out = tmp_path / "vfr.mp4"
    make(clips["vfr"], out, "mp4", bicubic_worker)
    assert facts(out).pts == facts(clips["vfr"]).pts


def test_vfr_with_long_frames_after_each_keyframe_joins(clips, bicubic_worker, tmp_path):
    """Each segment's encoder starts its decode times before its first frame by its reorder
    delay, counted in that segment's first frame durations: four frames long here, so they
    reached back past the previous segment's last frame and the join failed (EINVAL)."""
    steps = [4 if i % 25 in (0, 1) else 1 for i in range(75)]
    pts = [sum(steps[:i]) for i in range(75)]
    frames = decode_rgb(clips["bframes"], 75)
    gop = {**X264, "x264-params": "keyint=25:min-keyint=25:scenecut=0"}
    source = write_clip(tmp_path / "slow.mp4", frames, pts=pts, time_base=Fraction(1, 25),
                        options=gop)  # fmt: skip
    out = tmp_path / "out.mp4"
    run = make(source, out, "mp4", bicubic_worker)
    assert len(run.done) >= 2
    assert facts(out).pts == facts(source).pts


def test_segmented_hls_lists_exact_durations_and_decodes_to_the_input_frames(
    clips, bicubic_worker, tmp_path
):
    out = tmp_path / "hls"
    run = make(clips["bframes"], out, "hls", bicubic_worker)
    playlist = (out / PLAYLIST_NAME).read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist and playlist.rstrip().endswith("ENDLIST")
    assert "#EXT-X-TARGETDURATION:1\n" in playlist
    durations = [float(line[8:-1]) for line in playlist.splitlines() if line.startswith("#EXTINF")]
    assert durations == [s.duration for s in run.plan.segments]
    names = [line for line in playlist.splitlines() if line.startswith("segment_")]
    joined = tmp_path / "all.ts"
    joined.write_bytes(b"".join((out / name).read_bytes() for name in names))
    with av.open(str(joined)) as c:
        stream = c.streams.video[0]
        times = [f.pts * stream.time_base for f in c.decode(video=0)]
    src = facts(clips["bframes"])
    offset = times[0] - src.pts[0] * src.time_base
    assert [t - offset for t in times] == [p * src.time_base for p in src.pts]
    with av.open(str(joined)) as c:
        packets = [bytes(p) for p in c.demux(audio=0) if p.size]
    # Every audio packet once, bit for bit: MPEG-TS carries AAC with an ADTS header in front
    # (7 bytes, 9 with a CRC), the payload is the input's packet.
    payloads = [p[7 if p[1] & 1 else 9 :] for p in packets]
    assert payloads == src.audio_packets


FMP4_HLS = FORMATS["hls"].for_codec("h264", fmp4=True)


def fmp4_video_and_audio(folder: Path) -> tuple[list[Fraction], list[bytes]]:
    """A fragmented-MP4 HLS folder's counterpart of :func:`hls_video_and_audio` (its init.mp4,
    then its media segments in the playlist's order)."""
    names = [n for n in (folder / PLAYLIST_NAME).read_text().splitlines() if n.startswith("seg")]
    assert names and all(n.endswith(".m4s") for n in names)
    joined = folder.parent / f"{folder.name}.mp4"
    joined.write_bytes(b"".join((folder / n).read_bytes() for n in ["init.mp4", *names]))
    with av.open(str(joined)) as c:
        times = [f.pts * f.time_base for f in c.decode(video=0)]
    with av.open(str(joined)) as c:
        packets = [bytes(p) for s in c.streams.audio[:1] for p in c.demux(s) if p.size]
    return times, packets


@pytest.mark.parametrize("name", ["bframes", "open_gop", "vfr"])
def test_fragmented_mp4_hls_has_every_frame_time_and_audio_packet_of_mpeg_ts(
    clips, bicubic_worker, tmp_path, name
):
    """H.264 asked for in fragmented MP4 (``fmp4``): the same frames at the same times, B-frames,
    open GOPs and variable frame rates included, and every audio packet bit for bit."""
    ts, fmp4 = tmp_path / "ts", tmp_path / "fmp4"
    make(clips[name], ts, "hls", bicubic_worker)
    make(clips[name], fmp4, FMP4_HLS, bicubic_worker)
    times, audio = fmp4_video_and_audio(fmp4)
    expected_times, expected_audio = hls_video_and_audio(ts)
    assert times == expected_times and len(times) == len(all_pts(clips[name]))
    assert audio == expected_audio and (name != "bframes" or audio)  # (only it has audio)


def audio_variant(source: Path, path: Path, kind: str) -> Path:
    """``source`` (video and French audio) remuxed into Matroska with its audio moved or cut:
    ``late`` (from 1.2 s), ``early`` (the video from 0.5 s, after a lead-in of audio),
    ``short`` (none after 1.0 s), ``silent`` (a second audio stream without a packet),
    ``two`` (a second audio stream, whole, the first from 1.2 s), ``apart`` (a second audio
    stream from 2.0 s, the first until 1.0 s: no segment has both)."""
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        video_in, audio_in = src.streams.video[0], src.streams.audio[0]
        video = out.add_stream_from_template(video_in)
        audio = out.add_stream_from_template(audio_in)
        audio.metadata["language"] = "fra"
        second = out.add_stream_from_template(audio_in) if kind in SECOND_AUDIO else None
        for packet in src.demux(video_in, audio_in):
            if packet.dts is None:
                continue
            is_audio = packet.stream.type == "audio"
            at = packet.pts * packet.time_base
            if is_audio and kind in ("two", "apart") and (kind == "two" or at >= 2):
                copy = av.Packet(bytes(packet))
                copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
                copy.stream = second
                out.mux(copy)
            if is_audio and kind in ("short", "apart") and at >= 1:
                continue
            late = kind in ("late", "two") and is_audio
            shift = 1.2 if late else 0.5 if kind == "early" and not is_audio else 0
            ticks = round(Fraction(shift) / packet.time_base)
            packet.pts += ticks
            packet.dts += ticks
            packet.stream = audio if is_audio else video
            out.mux(packet)
    return path


SECOND_AUDIO = ("silent", "two", "apart")


@pytest.mark.parametrize("kind", ["late", "early", "short", "silent", "two", "apart"])
def test_fragmented_mp4_hls_keeps_audio_that_starts_late_early_or_stops(
    clips, bicubic_worker, tmp_path, kind
):
    """Segments without audio packets (audio that starts late or stops early, a stream without
    any) failed as fragmented MP4, and the audio before the first picture was left out: each
    segment is written with the tracks it has, numbered as in init.mp4, which the first
    segment with every track writes (made of every segment's tracks at the end, if none has
    them all). The audio and the frames are those of the MPEG-TS form, and the audio keeps its
    language."""
    source = audio_variant(clips["bframes"], tmp_path / f"{kind}.mkv", kind)
    ts, fmp4 = tmp_path / "ts", tmp_path / "fmp4"
    make(source, ts, "hls", bicubic_worker)
    make(source, fmp4, FMP4_HLS, bicubic_worker)
    times, audio = fmp4_video_and_audio(fmp4)
    assert (times, audio) == hls_video_and_audio(ts)
    assert len(times) == 100 and len(audio) > 40
    with av.open(str(tmp_path / "fmp4.mp4")) as joined:  # (fmp4_video_and_audio's)
        assert joined.streams.audio[0].metadata.get("language") == "fra"
        # (a stream without packets has no track)
        assert len(joined.streams.audio) == (2 if kind in ("two", "apart") else 1)
    assert not list(fmp4.glob(".*"))  # no segment's header left waiting


class CopyingExecutor(InProcessExecutor):
    """Runs each segment as a cluster worker does: from a copy of the packets it needs, never
    the input itself (``segment_transport``), on this process's engine."""

    async def run(self, task, on_frame):
        from carn_stream.pipeline.execution.segment_transport import cut_segment, upscale_copy

        data = cut_segment(task.source, task.segment, task.time_base, task.last, task.time_shift)
        result, encoded = await upscale_copy(data, task, self.worker, on_frame, "copy")
        task.target.write_bytes(encoded)
        return result


def make_on_a_worker(source: Path, output: Path, worker, plan: SegmentPlan | None = None) -> None:
    """``source`` made into the HLS folder ``output`` (1 s segments, x2) as cluster workers
    make it: each segment from a copy of its packets (:class:`CopyingExecutor`)."""

    async def go() -> None:
        executor = CopyingExecutor(worker)
        chosen = plan or await executor.plan(PlanRequest(source, 1.0))
        run = SegmentedRun(source=source, plan=chosen, fmt=FORMATS["hls"], output=output,
                           work_dir=output.parent / f".{output.name}.work",
                           options=PipelineOptions(scale=2, batch_size=2), executor=executor)
        await run.execute()
        await executor.close()

    asyncio.run(go())


def hls_video_and_audio(folder: Path) -> tuple[list[Fraction], list[bytes]]:
    """The presentation times of every frame of an HLS output's segments played back to back,
    and its audio payloads (without their ADTS headers)."""
    names = [n for n in (folder / PLAYLIST_NAME).read_text().splitlines() if n.startswith("seg")]
    joined = folder.parent / f"{folder.name}.ts"
    joined.write_bytes(b"".join((folder / name).read_bytes() for name in names))
    with av.open(str(joined)) as c:
        times = [f.pts * f.time_base for f in c.decode(video=0)]
    with av.open(str(joined)) as c:
        packets = [bytes(p) for s in c.streams.audio[:1] for p in c.demux(s) if p.size]
    return times, [p[7 if p[1] & 1 else 9 :] for p in packets]


def test_a_cluster_worker_makes_mpeg_ts_segments_before_a_timestamp_wrap(
    wrapped, clips, bicubic_worker, tmp_path
):
    """The segments at negative times (before the 33-bit clock wrap the input starts ahead of)
    failed on a cluster worker: 'decoded 0 of 25 frames', as MOV, the copy's container, cannot
    start a track before 0. The copy's times are moved later by whole seconds, which it
    records and the worker takes off: its segments are those made from the input itself."""
    from carn_stream.pipeline.execution.segment_transport import cut_segment, localize, write_copy

    plan = plan_segments(wrapped, 1.0)
    first = plan.segments[0]
    copy = write_copy(cut_segment(wrapped, first, plan.time_base, False, plan.origin), tmp_path)
    local, _ = localize(first, plan.time_base, copy, plan.origin)
    assert first.start_pts < 0 <= local.start_pts  # the copy counts from the plan's origin
    here = tmp_path / "here"
    make(wrapped, here, "hls", bicubic_worker)

    make_on_a_worker(wrapped, tmp_path / "w", bicubic_worker, plan)
    times, audio = hls_video_and_audio(tmp_path / "w")
    assert len(times) == 100 and (times, audio) == hls_video_and_audio(here)
    assert audio == facts(clips["bframes"]).audio_packets  # every packet, once, in order


def tone_offsets(path: Path, container_format: str | None = None) -> np.ndarray:
    """How far (samples at 48 kHz) each 1024-sample block of a 440 Hz tone's decoded left
    channel lies from where the first whole block puts the tone (modulo its 109-sample
    period): 0 all along for audio that plays without a jump."""
    blocks = []
    with av.open(str(path), format=container_format) as c:
        for frame in c.decode(audio=0):
            samples = frame.to_ndarray()
            blocks.append(samples[0] if frame.format.is_planar else samples[0, ::2])
    left = np.concatenate(blocks).astype(np.float64)
    phases = []
    for at in range(0, len(left) - 1024, 1024):
        t = np.arange(at, at + 1024) * 2 * np.pi * 440 / 48000
        (a, b), *_ = np.linalg.lstsq(np.stack([np.sin(t), np.cos(t)], 1), left[at:at + 1024],
                                     rcond=None)  # fmt: skip
        phases.append(np.arctan2(b, a))
    turned = np.unwrap(np.array(phases[2:]))  # past the priming frame and the lead-in
    return (turned - turned[0]) * 48000 / (2 * np.pi * 440)


@pytest.mark.parametrize("container", ["mkv", "mov"])
def test_transcoded_audio_plays_across_segment_boundaries_as_one_stream(
    clips, bicubic_worker, tmp_path, container
):
    """Audio a segment cannot carry (PCM here) is made AAC in each segment. Every segment's
    encoder started with a priming frame over the previous segment's end: played back to back,
    the audio jumped back 1024 samples at each boundary (21 ms), and a joined MP4 kept some of
    those jumps. Segments now lay their frames on one grid and keep their own part of it: the
    frames follow one another exactly and the tone never jumps, with Matroska's times rounded
    to milliseconds too. A cluster worker, from its copy of the packets, makes the same audio
    bit for bit (MOV; PCM from Matroska is dated by its first packet there: see
    docs/PIPELINE.md)."""
    from tests.media import with_tone

    source = with_tone(clips["bframes"], tmp_path / f"pcm.{container}", tail=4.0,
                       codec="pcm_s16le")  # fmt: skip
    here = tmp_path / "here"
    make(source, here, "hls", bicubic_worker)
    starts, ends = [], []
    for path in sorted(here.glob("segment_*.ts")):
        with av.open(str(path)) as c:
            times = [round(p.pts * p.time_base * 48000) for p in c.demux(audio=0) if p.size]
        assert set(np.diff(times).tolist()) == {1024}
        starts.append(times[0])
        ends.append(times[-1] + 1024)
    assert len(starts) == 4 and starts[1:] == ends[:-1]  # back to back, no overlap, no gap
    _, audio = hls_video_and_audio(here)
    assert np.abs(tone_offsets(here.parent / "here.ts", "mpegts")).max() < 1
    joined = tmp_path / "joined.mp4"
    make(source, joined, "mp4", bicubic_worker)
    assert np.abs(tone_offsets(joined)).max() < 1
    if container != "mov":
        return

    make_on_a_worker(source, tmp_path / "w", bicubic_worker)
    assert hls_video_and_audio(tmp_path / "w")[1] == audio


@pytest.mark.parametrize("container", ["mkv", "ts"])
def test_audio_that_starts_after_the_picture_is_read_for_every_segment(
    clips, bicubic_worker, tmp_path, container
):
    """Audio that starts 5.5 s into the picture (a recording whose sound came on late; past
    FFmpeg's probe, so the stream's start reads as the file's): the segments before it hold
    none, and no seek can place a read at an audio packet that early. Every segment is made,
    in the process and as a cluster worker's copy, and the joined file has every audio
    packet."""
    from carn_stream.pipeline.execution.segment_transport import cut_segment
    from tests.media import with_tone

    gop = {**X264, "x264-params": "keyint=25:min-keyint=25:scenecut=0"}
    pictures = decode_rgb(clips["bframes"])
    long = write_clip(tmp_path / "long.mp4", pictures + pictures[::-1], options=gop)  # 8 s
    tone = with_tone(long, tmp_path / "tone.mkv", lead=1.0, tail=8.0)  # picture from 1 s
    source = tmp_path / f"late.{container}"
    with av.open(str(tone)) as c, av.open(str(source), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in c.streams}
        for packet in c.demux():
            if packet.pts is None:  # (Matroska gives its first packets no decode time)
                continue
            if packet.stream.type == "audio" and packet.pts * packet.time_base < Fraction(13, 2):
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    if container == "mkv":  # its audio's start reads as the file's, not where it starts
        with av.open(str(source)) as c:
            audio = c.streams.audio[0]
            assert (audio.start_time or 0) * audio.time_base < 2
    plan = plan_segments(source, 1.0)
    assert len(plan.segments) == 8
    for segment in plan.segments:
        last = segment.index == len(plan.segments) - 1
        assert cut_segment(source, segment, plan.time_base, last, plan.origin)
    out = tmp_path / "out.mkv"
    make(source, out, "mkv", bicubic_worker)
    src, got = facts(source), facts(out)

    def payloads(packets: list[bytes]) -> list[bytes]:  # without MPEG-TS's ADTS headers
        return [p[7 if p[1] & 1 else 9 :] if p[:2] == b"\xff\xf1" else p for p in packets]

    assert len(got.pts) == 200 and payloads(got.audio_packets) == payloads(src.audio_packets)
    assert len(src.audio_packets) > 100


@pytest.mark.parametrize("codec", ["libopus", "flac"])
def test_a_cluster_worker_takes_opus_and_flac_audio(clips, bicubic_worker, tmp_path, codec):
    """A cluster worker's copy of a segment was always MOV, which refuses Opus and FLAC: every
    segment of a WebM or Matroska file with such audio failed on a cluster ("its packets
    cannot be copied"). Such a copy is MP4 now; the segments play their audio (transcoded to
    AAC for HLS) without a jump."""
    from carn_stream.pipeline.execution.segment_transport import cut_segment
    from tests.media import with_tone

    source = with_tone(clips["bframes"], tmp_path / "a.mkv", tail=4.0, codec=codec)
    plan = plan_segments(source, 1.0)
    copy = cut_segment(source, plan.segments[1], plan.time_base, False, plan.origin)
    assert copy[4:8] == b"ftyp" and copy[8:12] != b"qt  "  # MP4, not QuickTime

    make_on_a_worker(source, tmp_path / "w", bicubic_worker, plan)
    times, audio = hls_video_and_audio(tmp_path / "w")
    assert len(times) == 100 and len(audio) > 180  # 4 s of 1024-sample frames at 48 kHz
    assert np.abs(tone_offsets(tmp_path / "w.ts", "mpegts")).max() < 1


@pytest.mark.parametrize("name", ["bframes", "wrapped"])
def test_a_seek_lands_where_the_keyframe_is_read_first(clips, wrapped, name):
    """MPEG-TS has no keyframe index: FFmpeg's seek to a keyframe's time landed on the packet
    after it when there are B-frames, and the segment's frames were missing."""
    path = wrapped if name == "wrapped" else clips[name]
    with av.open(str(path)) as c:
        keys = sorted(p.pts for p in c.demux(video=0) if p.is_keyframe and p.size)
    assert len(keys) == 4
    for key in keys:
        for wanted, expected in ((key, key), (key + 3600 if name == "wrapped" else key + 1024,
                                              key)):  # fmt: skip
            with av.open(str(path)) as c:
                video = c.streams.video[0]
                seek_to_keyframe(c, video, wanted)
                first = next(from_first_keyframe(c.demux(video)))
            assert (first.pts, first.is_keyframe) == (expected, True), (name, key, wanted)


def test_mpeg_ts_with_b_frames_across_a_timestamp_wrap_keeps_every_frame_and_its_audio(
    wrapped, clips, bicubic_worker, tmp_path
):
    """Two faults, both fixed. A segment of MPEG-TS with B-frames failed ('decoded 0 of 25
    frames': the seek landed past its keyframe). A segment at negative times, before a wrap of
    the 33-bit clock, sought its audio from time 0 and came out silent."""
    plan = plan_segments(wrapped, 1.0)
    assert plan.segments[0].start_pts * plan.time_base == -2  # FFmpeg's reading of the wrap
    counts = []
    for segment in plan.segments:
        with av.open(str(wrapped)) as c:
            last = segment.index == len(plan.segments) - 1
            counts.append(sum(1 for _ in audio_packets(c, segment, plan.time_base, last)))
    assert len(counts) == 4 and min(counts) >= 40, counts  # 48 kHz AAC: 47 a second
    out = tmp_path / "hls"
    make(wrapped, out, "hls", bicubic_worker)
    names = [n for n in (out / PLAYLIST_NAME).read_text().splitlines() if n.startswith("seg")]
    joined = tmp_path / "all.ts"
    joined.write_bytes(b"".join((out / name).read_bytes() for name in names))
    with av.open(str(joined)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 100  # every frame
    with av.open(str(joined)) as c:
        packets = [bytes(p) for p in c.demux(audio=0) if p.size]
    payloads = [p[7 if p[1] & 1 else 9 :] for p in packets]  # without the ADTS header
    assert payloads == facts(clips["bframes"]).audio_packets  # every packet, once, in order


def test_a_one_keyframe_mpeg_ts_is_made_in_segments_that_keep_every_frame(
    clips, bicubic_worker, tmp_path
):
    """No keyframe index and one keyframe: each segment's seek lands past it, and the search
    back stops as soon as it reads past the segment's start (not at the end of the file)."""
    ts = remux_across_the_wrap(clips["one_keyframe"], tmp_path / "one.ts", -10.0)  # no wrap
    out = tmp_path / "one.mp4"
    run = make(ts, out, "mp4", bicubic_worker)
    assert len(run.done) == 2
    src, got = facts(ts), facts(out)
    assert [p - got.pts[0] for p in got.pts] == [p - src.pts[0] for p in src.pts]


@pytest.fixture(scope="module")
def avi(clips, tmp_path_factory) -> Path:
    """The B-frames clip's pictures as H.264 with B-frames in AVI (which stores decode times
    only: FFmpeg numbers its packets in decode order)."""
    gop = {**X264, "x264-params": "keyint=25:min-keyint=25:scenecut=0"}
    path = tmp_path_factory.mktemp("avi") / "b.avi"
    write_clip(path, decode_rgb(clips["bframes"]), options=gop)
    assert all_pts(path) != sorted(all_pts(path))  # the decoder's own times: out of order
    return path


@pytest.mark.parametrize("cut", [0, 10])
def test_h264_with_b_frames_in_avi_keeps_its_frames_in_display_order(avi, bicubic_worker,
                                                                      tmp_path, cut):  # fmt: skip
    """The frames a decoder reorders came out of an AVI with their times swapped, and
    encoding the first segment failed (EINVAL). Each frame now takes the next time in
    order; a recording cut mid-GOP (10 packets left out) loses no picture and repeats none."""
    source = remux_cut(avi, tmp_path / "cut.avi", drop_video=cut) if cut else avi
    src = decode_rgb(source)  # the pictures a decoder shows, in display order
    assert len(src) == 100 - (25 if cut else 0)
    out = tmp_path / "out.mp4"
    make(source, out, "mp4", bicubic_worker)
    got = facts(out)
    steps = set(np.diff(got.pts).tolist())
    assert len(got.pts) == len(src) and len(steps) == 1  # every frame, evenly spaced
    assert got.time_base * steps.pop() == Fraction(1, 25)
    made = downscale_frames(decode_rgb(out), (96, 54))
    # each picture at its place: a swap would put a neighbour's picture there
    assert min(psnr(a, b) for a, b in zip(made, src, strict=True)) > 30


def test_avi_segments_keep_display_order_on_a_cluster_worker_and_in_a_stored_copy(avi, tmp_path):
    """A cluster worker decodes a MOV copy of a segment's packets, and a video stored small is
    re-encoded from the whole file: both took the decoder's swapped times. AVI has no
    ``original`` rendition (a copy into MPEG-TS would show the frames out of order)."""
    from carn_stream.pipeline.execution.segment_transport import cut_segment, localize, write_copy
    from carn_stream.pipeline.media.delivery import encode_copy
    from carn_stream.pipeline.media.encode import EncoderOptions
    from carn_stream.server.vod.manager import describe_renditions

    plan = plan_segments(avi, 1.0)
    assert plan.decode_order
    times = []
    for segment in plan.segments:
        last = segment.index == len(plan.segments) - 1
        copy = write_copy(cut_segment(avi, segment, plan.time_base, last, plan.origin), tmp_path)
        local, time_base = localize(segment, plan.time_base, copy, plan.origin)
        with av.open(str(copy)) as c:
            times += [f.pts * time_base for f in segment_frames(c, local, 0, plan.decode_order)]
    assert times == sorted(times) and len(times) == 100
    # A plan stored without the flag: the AVI itself still says so.
    with av.open(str(avi)) as c:
        assert [f.pts * plan.time_base for f in segment_frames(c, plan.segments[0])] == times[:25]
    stored = encode_copy(avi, tmp_path / "small.mp4", scale=2, crf=20)
    got = facts(stored.path)
    assert len(got.pts) == 100 and got.pts == sorted(got.pts)
    names = [r.name for r in describe_renditions(avi, plan, [2], EncoderOptions())]
    assert names == ["x2"]


def test_an_avi_with_mp3_audio_that_starts_mid_gop_keeps_its_audio_in_every_segment(
    clips, bicubic_worker, tmp_path
):
    """An AVI indexes its video from the first keyframe, and FFmpeg refuses a seek before it
    ("Operation not permitted"): a recording cut mid-GOP (10 packets left out) failed segment
    1, whose audio is read from 2 s before it. The audio's own index places the read now, in
    the process and on a cluster worker; every frame and every MP3 packet comes out."""
    from carn_stream.pipeline.execution.segment_transport import cut_segment, write_copy
    from tests.media import with_mp3_audio

    gop = {**X264, "x264-params": "keyint=25:min-keyint=25:scenecut=0"}
    mp3 = with_mp3_audio(clips["bframes"], tmp_path / "mp3.mp4")
    avi = write_clip(tmp_path / "b.avi", decode_rgb(clips["bframes"]), options=gop,
                     audio_from=mp3)  # fmt: skip
    cut = remux_cut(avi, tmp_path / "cut.avi", drop_video=10)
    plan = plan_segments(cut, 1.0)
    assert len(plan.segments) == 3
    out = tmp_path / "out.mp4"
    make(cut, out, "mp4", bicubic_worker)
    src, got = facts(cut), facts(out)
    assert len(got.pts) == len(src.pts) == 75
    assert got.audio_packets == src.audio_packets and len(src.audio_packets) > 100
    for segment in plan.segments:
        last = segment.index == len(plan.segments) - 1
        copy = write_copy(cut_segment(cut, segment, plan.time_base, last, plan.origin), tmp_path)
        with av.open(str(copy)) as c:
            assert sum(1 for p in c.demux(audio=0) if p.size) > 30


def test_a_raw_h264_stream_gets_back_the_pictures_and_times_of_the_file_it_came_from(
    data_dir, bicubic_worker, tmp_path
):
    """A raw stream (Annex B, no container: what cameras write) has no timestamps, and its plan
    failed ("packets without timestamps"). The clip's own H.264 packets, B-frames and all,
    copied out of their MP4: planned through a timed copy, they come back as the MP4 had them,
    at the rate the stream's header gives (29.97 fps); nothing is re-encoded."""
    from carn_stream.pipeline.execution.executors import plan_for

    original = data_dir / "video" / "carphone_pristine.mp4"
    raw = raw_stream(original, tmp_path / "carphone.h264")
    with pytest.raises(InputError, match=r"raw H\.264/HEVC"):
        plan_for(PlanRequest(raw, 1.0))  # no place for a copy: refused, as before
    copy = tmp_path / "timed.mp4"
    plan = plan_for(PlanRequest(raw, 1.0, timed_copy=copy))
    assert plan.frames == 120 and plan.frame_rate == Fraction(30000, 1001)
    want, got = facts(original), facts(copy)
    assert [p * got.time_base for p in got.pts] == [p * want.time_base for p in want.pts]
    assert all(np.array_equal(a, b) for a, b in
               zip(decode_rgb(copy), decode_rgb(original), strict=True))  # fmt: skip
    out = tmp_path / "out.mp4"
    make(copy, out, "mp4", bicubic_worker)
    made = facts(out)
    assert [p * made.time_base for p in made.pts] == [p * want.time_base for p in want.pts]


def luma(path: Path) -> list[np.ndarray]:
    """The Y plane of every frame a plain decode shows."""
    with av.open(str(path)) as c:
        return [f.to_ndarray()[: f.height] for f in c.decode(video=0)]  # yuv420p: Y rows first


def check_every_segment(source: Path, shown: list[np.ndarray], exact: bool = True) -> SegmentPlan:
    """Every 1 s segment of ``source``, decoded here and from a cluster worker's copy of its
    packets, gives exactly the pictures ``shown`` at its frames' indexes (not ``exact``: every
    frame, each close to its picture)."""
    from carn_stream.pipeline.execution.segment_transport import cut_segment, localize, write_copy

    plan = plan_segments(source, 1.0)
    assert plan.frames == len(shown)
    for segment in plan.segments:
        last = segment.index == len(plan.segments) - 1
        copy = write_copy(cut_segment(source, segment, plan.time_base, last, plan.origin),
                          source.parent)  # fmt: skip
        local, _ = localize(segment, plan.time_base, copy, plan.origin)
        for path, part in ((source, segment), (copy, local)):  # here, and on a cluster worker
            with av.open(str(path)) as c:
                frames = list(segment_frames(c, part))
            assert len(frames) == segment.frames, (path.name, segment.index)
            for frame in frames:
                same = np.array_equal(frame.planes[0], shown[frame.index])
                assert same or (not exact and psnr(frame.planes[0], shown[frame.index]) > 20)
    return plan


def test_a_cluster_worker_gets_decode_times_for_matroska_packets_read_after_a_seek(
    data_dir, tmp_path
):
    """Matroska stores no decode times, and FFmpeg's guess needs the packets before a seek: the
    first packets a cluster's head read after one had none, and the MOV muxer refused them
    (EINVAL: "its packets cannot be copied for a cluster worker"), here for an open GOP with a
    B-frame pyramid."""
    carphone = decode_rgb(data_dir / "video" / "carphone_pristine.mp4", 100)
    params = "open-gop=1:keyint=25:min-keyint=25:scenecut=0:bframes=3:b-pyramid=normal"
    source = write_clip(tmp_path / "open.mkv", [f[:72, :88] for f in carphone],
                        options={"crf": "12", "preset": "veryfast", "x264-params": params})
    check_every_segment(source, luma(source))


def back_and_forth(pictures: list[np.ndarray], count: int) -> list[np.ndarray]:
    cycle = pictures + pictures[::-1]
    return [cycle[i % len(cycle)] for i in range(count)]


@pytest.mark.parametrize("keyint,count,size", [(10, 60, (96, 54)), (100, 150, (640, 360))],
                         ids=["short", "long"])  # fmt: skip
def test_segments_of_an_intra_refresh_stream_start_where_the_picture_is_whole(
    data_dir, tmp_path, keyint, count, size
):
    """Intra refresh (low-latency encoders): one IDR picture, then recovery points marked as
    keyframes, after which a decoder shows nothing until the picture is whole. Every segment
    after the first lost its first frames ("decoded 26 of 30 frames"), here and on a cluster
    worker; with a refresh longer than a segment, all of them ("decoded 0 of 25"), and those
    between keyframes decoded from such a recovery point some. Their decode now starts from an
    earlier keyframe, and shows exactly the pictures of a decode from the top. The segments
    cannot be played on their own, so a video on request has no ``original`` rendition."""
    from carn_stream.pipeline.media.encode import EncoderOptions
    from carn_stream.server.vod.manager import describe_renditions

    bunny = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 100), size)
    pictures = back_and_forth(bunny, count)
    params = f"intra-refresh=1:keyint={keyint}:bframes=0"
    source = write_clip(tmp_path / "refresh.mp4", pictures,
                        options={"crf": "25", "preset": "veryfast", "x264-params": params})
    plan = check_every_segment(source, luma(source))
    assert len(plan.segments) > 1 and plan.keyframe_aligned == (keyint == 10)
    assert [r.name for r in describe_renditions(source, plan, [2], EncoderOptions())] == ["x2"]


@pytest.mark.parametrize("suffix", [".ts", ".mkv", ".mp4"])
@pytest.mark.parametrize("params", ["intra-refresh=1:keyint=10:bframes=0",
                                    "intra-refresh=1:keyint=10:bframes=3:b-pyramid=normal"],
                         ids=["intra-refresh", "intra-refresh-b-frames"])  # fmt: skip
def test_a_recording_joined_at_a_recovery_point_plans_the_frames_a_decoder_shows(
    data_dir, tmp_path, suffix, params
):
    """A recording joined at a recovery point (intra refresh, as low-latency encoders and
    broadcast send it) starts with pictures a decoder decodes and never shows until the
    picture is whole. The plan counted them as frames, and the first segment failed ("decoded
    26 of 30 frames"), here and on a cluster worker. The plan now starts at the first frame a
    decode from the top shows, and every segment shows the frames a plain decode does. The
    first segment does not start on a keyframe: its packets are not offered as they are."""
    from carn_stream.pipeline.media.encode import EncoderOptions
    from carn_stream.server.vod.manager import describe_renditions

    bunny = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 100), (96, 54))
    whole = write_clip(tmp_path / "whole.ts", bunny, container_format="mpegts",
                       options={"crf": "25", "preset": "veryfast", "x264-params": params})
    with av.open(str(whole)) as c:
        keys = [i for i, p in enumerate(p for p in c.demux(video=0) if p.size) if p.is_keyframe]
    joined = remux_cut(whole, tmp_path / f"joined{suffix}", drop_video=keys[2])
    shown = luma(joined)
    assert len(shown) < len(bunny) - keys[2]  # pictures decoded and never shown: the case
    # (x264's intra refresh with B-frames: a decode from a later recovery point is inexact for
    # a few frames, as after any seek there; see the raw-stream test below)
    plan = check_every_segment(joined, shown, exact="bframes=0" in params)
    assert len(plan.segments) > 1
    # Without B-frames the first frame shown is no keyframe; with them it is a later recovery
    # point, which a decode from there does not show.
    first = dataclasses.replace(plan, segments=plan.segments[:1])
    assert first.keyframe_aligned == ("bframes=0" not in params)
    assert not (first.keyframe_aligned and segments_show_their_start(joined, first))
    assert [r.name for r in describe_renditions(joined, plan, [2], EncoderOptions())] == ["x2"]


def test_recordings_joined_end_to_end_keep_every_frame_when_their_times_start_again(
    clips, tmp_path
):
    """Two MPEG-TS recordings joined with ``cat``, the second's times starting again below
    the first's: the plan's first-frame rule (pictures shown before the first frame are none
    of the video) left the second recording out of the plan, and nothing said so."""
    from av.bitstream import BitStreamFilterContext

    def recording(base_seconds: int) -> bytes:
        path = tmp_path / f"at{base_seconds}.ts"
        with av.open(str(clips["bframes"])) as c, av.open(str(path), "w", format="mpegts") as out:
            video = c.streams.video[0]
            stream = out.add_stream_from_template(video)
            annexb = BitStreamFilterContext("h264_mp4toannexb", video)
            for packet in c.demux(video):
                if packet.dts is None:
                    continue
                for p in annexb.filter(packet):
                    p.pts = base_seconds * 90000 + round(p.pts * video.time_base * 90000)
                    p.dts = base_seconds * 90000 + round(p.dts * video.time_base * 90000)
                    p.time_base, p.stream = Fraction(1, 90000), stream
                    out.mux(p)
        return path.read_bytes()

    joined = tmp_path / "joined.ts"
    joined.write_bytes(recording(30) + recording(0))
    assert len(all_pts(joined)) == 200
    plan = plan_segments(joined, 1.0)
    assert plan.frames == 200
    decoded = 0
    for segment in plan.segments:
        with av.open(str(joined)) as c:
            decoded += sum(1 for _ in segment_frames(c, segment))
    assert decoded == 200


@pytest.mark.parametrize(
    "codec,params,clip",
    [
        ("libx265", "keyint=10:min-keyint=10:open-gop=1:bframes=3:scenecut=0", "carphone"),
        ("libx264", "keyint=10:min-keyint=10:open-gop=1:bframes=3:b-pyramid=normal:scenecut=0",
         "carphone"),
        ("libx264", "intra-refresh=1:keyint=10:bframes=0", "carphone"),
        ("libx264", "intra-refresh=1:keyint=10:bframes=3:b-pyramid=normal", "bunny"),
    ],
    ids=["hevc-open-gop", "h264-open-gop", "h264-intra-refresh", "h264-intra-refresh-b-frames"],
)  # fmt: skip
def test_a_raw_stream_joined_at_a_recovery_point_keeps_the_frames_a_decoder_shows(
    data_dir, tmp_path, codec, params, clip
):
    """A recording joined mid-stream starts at a CRA or an open GOP's I-frame (its leading
    pictures refer to what came before: a decoder skips them, and in H.264 later ones may
    refer to them), or at a recovery point (the pictures until the picture is whole are
    decoded, never shown; with B-frames that build-up outlasts the next recovery point). All
    were refused ("31 pictures decode to 30 frames"). The copy keeps those pictures before its
    start, hidden by its edit list, and no keyframe among them (an MP4 reader would start its
    edit list there): it shows exactly what a decoder shows of the raw stream, and its
    segments, here and on a cluster worker, show those frames."""
    from carn_stream.pipeline.media.elementary import copy_with_times

    if clip == "carphone":
        pictures = [f[:64, :96] for f in decode_rgb(data_dir / "video" / "carphone_pristine.mp4")]
    else:  # its build-up outlasts the next recovery point
        bunny = decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 100)
        pictures = downscale_frames(bunny, (192, 108))
    pictures = pictures[:100]
    suffix, raw_format = (".hevc", "hevc") if codec == "libx265" else (".h264", "h264")
    level = {"x265-params": f"{params}:log-level=error"} if codec == "libx265" else {
        "x264-params": params}  # fmt: skip
    whole = write_clip(tmp_path / f"whole{suffix}", pictures, codec=codec,
                       container_format=raw_format,
                       options={"crf": "25", "preset": "veryfast", **level})  # fmt: skip
    with av.open(str(whole)) as c:
        keys = [i for i, p in enumerate(p for p in c.demux(video=0) if p.size) if p.is_keyframe]
    for key in keys[1:]:  # the first join with pictures decoded and not shown: the case at hand
        joined = raw_stream_from(whole, tmp_path / f"joined{suffix}", key)
        shown = luma(joined)
        if len(shown) < len(pictures) - key:
            break
    else:
        pytest.fail("no join hides a picture")
    copy = tmp_path / "copy.mp4"
    copy_with_times(joined, copy)
    with av.open(str(joined)) as raw, av.open(str(copy)) as copied:
        kept = sum(1 for p in copied.demux(video=0) if p.size)
        assert kept == sum(1 for p in raw.demux(video=0) if p.size)  # every picture kept
    got = facts(copy)
    assert [p * got.time_base for p in got.pts] == [Fraction(n, 25) for n in range(len(shown))]
    assert all(np.array_equal(a, b) for a, b in zip(luma(copy), shown, strict=True))
    # x264's intra refresh with B-frames says a picture is whole a few frames early: a decode
    # from a recovery point differs there from one from the top (26 dB at worst, measured), as
    # after any seek to it.
    check_every_segment(copy, shown, exact="bframes=3:b-pyramid" not in params)


def test_a_cancelled_plan_stops_its_raw_streams_copy(clips, tmp_path):
    """Cancelling a plan (a job cancelled, a client gone) only stopped the wait: the decode
    pass of a long raw stream ran on, and a job's copy could reappear after its folder was
    cleaned. The copy now stops, leaving nothing."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from carn_stream.pipeline.execution.executors import plan_in_thread
    from carn_stream.pipeline.media.elementary import copy_with_times

    pictures = decode_rgb(clips["bframes"])
    raw = write_clip(tmp_path / "long.h264", [pictures[i % 100] for i in range(1500)],
                     container_format="h264", options={"preset": "ultrafast"})  # fmt: skip
    stop = threading.Event()
    stop.set()
    with pytest.raises(InputError, match="stopped"):
        copy_with_times(raw, tmp_path / "copy.mp4", stop=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.h264"]
    threads = ThreadPoolExecutor(1)

    async def cancel_soon() -> None:
        request = PlanRequest(raw, 1.0, timed_copy=tmp_path / "copy.mp4")
        task = asyncio.create_task(plan_in_thread(request, threads))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    threads.shutdown(wait=True)  # the thread's work is over, whatever it had reached
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.h264"]


def test_a_raw_hevc_stream_with_b_frames_is_timed_at_the_rate_given(clips, tmp_path):
    """Frames a decoder reorders take their display places; a rate given (the header's may be
    missing or wrong) sets the times; the source, given as the copy's place, is replaced."""
    from carn_stream.pipeline.media.elementary import copy_with_times

    pictures = decode_rgb(clips["bframes"], 30)
    raw = write_clip(tmp_path / "b.hevc", pictures, codec="libx265", container_format="hevc",
                     options={"crf": "20", "preset": "ultrafast",
                              "x265-params": "bframes=3:log-level=error"})  # fmt: skip
    shown = decode_rgb(raw)  # the pictures in display order
    with av.open(str(raw)) as c:
        assert c.format.name == "hevc" and c.streams.video[0].codec_context.has_b_frames
    kept = tmp_path / "kept.hevc"
    shutil.copy(raw, kept)
    assert copy_with_times(raw, raw, rate=Fraction(30)) == 30  # replaced in place
    got = facts(raw)
    assert [p * got.time_base for p in got.pts] == [Fraction(n, 30) for n in range(30)]
    assert all(np.array_equal(a, b) for a, b in zip(decode_rgb(raw), shown, strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.hevc", "kept.hevc"]  # no .part
    # The limits stop the decode pass: a duration, a frame count, a size.
    from carn_stream.pipeline.errors import LimitError
    from carn_stream.pipeline.media.segments import InputLimits

    for limits, message in [
        (InputLimits(2, 0, max_duration=0.5), "more than 13 frames at 25 fps"),
        (InputLimits(2, 0, max_duration=60, max_frames=20), "more than 20 frames"),
        (InputLimits(2, 10_000, max_duration=60), "over the limit of 10000 pixels"),
    ]:
        with pytest.raises(LimitError, match=message):
            copy_with_times(kept, tmp_path / "out.mp4", limits)
        assert not (tmp_path / "out.mp4").exists()
        assert not (tmp_path / ".out.mp4.part").exists()


@pytest.mark.parametrize("fmt", ["mp4", "mov", "mkv"])
def test_a_file_made_from_an_input_that_starts_before_zero_shows_every_frame(
    wrapped, bicubic_worker, tmp_path, fmt
):
    """The wrapped MPEG-TS starts at -2 s: an MP4 or MOV made from it hid the frames before
    0 behind an edit list (the CLI said 100 frames, players showed 50)."""
    out = tmp_path / f"out.{fmt}"
    make(wrapped, out, fmt, bicubic_worker)
    with av.open(str(out)) as c:
        shown = [f.pts * f.time_base for f in c.decode(video=0)]
    src = facts(wrapped)
    assert len(shown) == 100 and shown[0] >= 0
    assert [t - shown[0] for t in shown] == [(p - src.pts[0]) * src.time_base for p in src.pts]


@pytest.mark.parametrize("fmt", ["mp4", "hls"])
@pytest.mark.parametrize("before", [55, 65, 100])
def test_an_input_near_a_timestamp_wrap_is_made_whole(clips, bicubic_worker, tmp_path, fmt, before):
    """The 33-bit MPEG-TS clock wraps every 26.5 h; FFmpeg reads an input that starts up to a
    minute before its wrap from negative times, and one that starts earlier at times near 26.5
    h. Segments carried the input's times plus a fixed offset: those read before 0 stayed
    negative (at 55 s: the MP4 join failed, "Invalid argument"), those near 26.5 h crossed the
    wrap inside the segment file (at 65 and 100 s: an MP4 with no decodable frame, without an
    error). Their times now count from the plan's first second."""
    source = remux_across_the_wrap(clips["bframes"], tmp_path / "w.ts", float(before))
    src = facts(source)
    out = tmp_path / ("out" if fmt == "hls" else "out.mp4")
    make(source, out, fmt, bicubic_worker)
    if fmt == "hls":
        names = [n for n in (out / PLAYLIST_NAME).read_text().splitlines() if n.startswith("seg")]
        joined = tmp_path / "all.ts"
        joined.write_bytes(b"".join((out / name).read_bytes() for name in names))
        out = joined
    with av.open(str(out)) as c:
        shown = [f.pts * f.time_base for f in c.decode(video=0)]
    assert [t - shown[0] for t in shown] == [(p - src.pts[0]) * src.time_base for p in src.pts]
    if fmt == "mp4":  # its audio is the input's, at the same times as its video
        with av.open(str(out)) as c:
            audio = [p.pts * p.time_base for p in c.demux(audio=0) if p.size]
        assert abs(audio[0] - shown[0]) < 1, (audio[0], shown[0])


@pytest.mark.parametrize("fmt", ["mp4", "mkv"])
def test_a_recording_that_starts_late_makes_a_file_that_starts_at_0(
    clips, bicubic_worker, tmp_path, fmt
):
    """A broadcast recording's clock starts anywhere. One at 5000 s made an MP4 with an empty
    edit that long (Chromium: 5001 s long, ended at once) and a Matroska file that played
    5000 s of nothing first. A file now counts from the input's start, as FFmpeg's own tools
    make it: every frame and audio packet at its time less that start."""
    source = remux_across_the_wrap(clips["bframes"], tmp_path / "late.ts", -5000.0)
    src = facts(source)
    with av.open(str(source)) as c:
        start = min(s.start_time * s.time_base for s in c.streams)
        heard = [p.pts * p.time_base - start for p in c.demux(audio=0) if p.size]
    assert start >= 5000
    out = tmp_path / f"out.{fmt}"
    make(source, out, fmt, bicubic_worker)
    with av.open(str(out)) as c:
        assert c.start_time == 0 and c.duration < 5_000_000, (c.start_time, c.duration)  # µs
        shown = [f.pts * f.time_base for f in c.decode(video=0)]
    with av.open(str(out)) as c:
        audio = [p.pts * p.time_base for p in c.demux(audio=0) if p.size]
    expected = [p * src.time_base - start for p in src.pts]
    assert len(shown) == len(expected) == 100 and len(audio) == len(heard)
    tick = Fraction(1, 1000)  # (Matroska counts in milliseconds)
    assert all(abs(a - b) <= tick for a, b in zip(shown, expected, strict=True))
    assert all(abs(a - b) <= tick for a, b in zip(audio, heard, strict=True))


def test_chapters_move_with_the_file_that_starts_at_0(clips, bicubic_worker, tmp_path):
    """An input whose streams start 30 s in, with chapters from there: the file counts from
    its start, and so do its chapters."""
    chapters = [{"id": n + 1, "start": 30_000 + 1000 * n, "end": 31_000 + 1000 * n,
                 "time_base": Fraction(1, 1000), "metadata": {"title": f"Part {n}"}}
                for n in range(2)]  # fmt: skip
    source = remux_cut(clips["bframes"], tmp_path / "late.mkv", start=-30.0, chapters=chapters)
    out = tmp_path / "out.mkv"
    make(source, out, "mkv", bicubic_worker)
    with av.open(str(out)) as c:
        chapters = [(ch["start"] * ch["time_base"], ch["end"] * ch["time_base"],
                     ch["metadata"]["title"]) for ch in c.chapters()]  # fmt: skip
        first = next(c.decode(video=0)).time
    with av.open(str(source)) as c:
        start = min(s.start_time * s.time_base for s in c.streams)
    assert 30 <= start < 31 and first < 1
    assert chapters == [(30 - start, 31 - start, "Part 0"), (31 - start, 32 - start, "Part 1")]


def test_a_recording_whose_clock_wraps_inside_it_is_made_whole(data_dir, bicubic_worker, tmp_path):
    """A 90 s recording whose 33-bit clock wraps 75 s in: FFmpeg reads it from 26.5 h on,
    across the wrap. Its segments near and after the wrap came out of a joined MP4 undecodable
    (150 of 900 frames)."""
    small = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 100), (64, 36))
    clip = write_clip(tmp_path / "long.mp4", [small[i % 100] for i in range(900)],
                      rate=Fraction(10), options={"crf": "30", "preset": "ultrafast", "g": "40"},
                      audio_from=data_dir / "video" / "bigbuckbunny.mp4", audio_seconds=90.0)
    source = remux_across_the_wrap(clip, tmp_path / "wraps.ts", 75.0)
    src = facts(source)
    assert src.pts[0] * src.time_base > 95000  # read at 26.5 h, not before 0
    out = tmp_path / "out.mp4"
    make(source, out, "mp4", bicubic_worker, seconds=8.0)
    with av.open(str(out)) as c:
        shown = [f.pts * f.time_base for f in c.decode(video=0)]
    assert [t - shown[0] for t in shown] == [(p - src.pts[0]) * src.time_base for p in src.pts]


@pytest.mark.parametrize("cut", ["edit_list", "mid_gop"])
def test_frames_a_decoder_never_shows_are_not_planned(clips, bicubic_worker, tmp_path, cut):
    """An MP4 trimmed by stream copy starts with an edit list that hides the GOP's first
    frames; a recording cut mid-GOP starts with frames that cannot be decoded. Both were
    planned as frames, and the first segment failed: 'decoded 12 of 25 frames'."""
    kind = {"start": 0.52} if cut == "edit_list" else {"drop_video": 7}
    source = remux_cut(clips["bframes"], tmp_path / f"{cut}.mp4", **kind)
    with av.open(str(source)) as c:
        shown = [f.pts for f in c.decode(video=0)]  # what the decoder shows
    assert len(shown) == (87 if cut == "edit_list" else 75)
    plan = plan_segments(source, 1.0)
    assert plan.frames == len(shown) and plan.segments[0].start_pts == shown[0]
    # The first frame shown after an edit list is no keyframe: the first segment's packets
    # cannot be copied as they are (its remux for the original rendition found no start).
    assert plan.segments[0].key == (cut == "mid_gop")
    out = tmp_path / "out.mp4"
    make(source, out, "mp4", bicubic_worker)
    got = facts(out)
    assert [p - got.pts[0] for p in got.pts] == [p - shown[0] for p in shown]


def test_a_one_keyframe_input_is_made_in_segments_that_keep_every_frame(
    clips, bicubic_worker, tmp_path
):
    out = tmp_path / "one.mp4"
    run = make(clips["one_keyframe"], out, "mp4", bicubic_worker)
    assert len(run.done) == 2  # two segments, each made (and resumable) on its own
    assert facts(out).pts == facts(clips["one_keyframe"]).pts


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_cluster_worker_gets_the_first_segment_of_a_recording_cut_mid_gop(clips, tmp_path, cut):
    """The copy of the first segment began at the top, with the packets before the first
    keyframe: where the first of them is shown after the B-frames that follow it, the MOV
    copy read back every time a frame early, and the worker decoded 24 of 25 frames."""
    from av.bitstream import BitStreamFilterContext

    source = tmp_path / f"cut{cut}.ts"
    with av.open(str(clips["bframes"])) as c, av.open(str(source), "w", format="mpegts") as out:
        video = c.streams.video[0]
        stream = out.add_stream_from_template(video)
        annexb = BitStreamFilterContext("h264_mp4toannexb", video)
        packets = [p for packet in c.demux(video) if packet.dts is not None
                   for p in annexb.filter(packet)]  # fmt: skip
        for p in packets[cut:]:
            p.stream = stream
            out.mux(p)
    check_every_segment(source, luma(source))


def test_a_segment_between_keyframes_travels_to_a_cluster_worker_with_its_preroll(
    clips, tmp_path
):
    from carn_stream.pipeline.execution.segment_transport import (
        cut_segment,
        localize,
        write_copy,
    )

    source = clips["one_keyframe"]
    plan = plan_segments(source, 1.0)
    segment = plan.segments[1]
    copy = write_copy(cut_segment(source, segment, plan.time_base, last=True), tmp_path)
    local, _ = localize(segment, plan.time_base, copy)
    with av.open(str(copy)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    # The packets from the keyframe on: the 25 frames before the segment travel with it.
    assert packets[0].is_keyframe and len(packets) == 60
    with av.open(str(copy)) as c:
        got = list(segment_frames(c, local))
    with av.open(str(source)) as c:
        want = list(segment_frames(c, segment))
    assert [f.pts * f.time_base for f in got] == [f.pts * f.time_base for f in want]
    assert all(
        all(np.array_equal(a, b) for a, b in zip(g.planes, w.planes, strict=True))
        for g, w in zip(got, want, strict=True)
    )


def test_a_segment_between_keyframes_is_not_remuxed_as_it_is(clips, tmp_path):
    from carn_stream.pipeline.media.remux import RemuxTask, remux_segment

    plan = plan_segments(clips["one_keyframe"], 1.0)
    target = tmp_path / "segment_00001.ts"
    with pytest.raises(InputError, match=r"segment 1 \(1\.00-2\.40 s\) does not start on a "
                                         "keyframe"):  # fmt: skip
        remux_segment(RemuxTask.of(clips["one_keyframe"], plan, 1, target))
    assert not list(tmp_path.iterdir())


def test_matroska_with_b_frames_is_remuxed_into_its_original_segments(clips, tmp_path):
    """Matroska stores no decode times, and with B-frames FFmpeg gives its packets none: the
    MPEG-TS muxer refused every segment of the ``original`` rendition a video offered
    (a bare "Invalid argument"). They get decode times, and each segment shows the input's
    frames at the input's times (plus the segments' offset)."""
    from carn_stream.pipeline.media.encode import SEGMENT_OFFSET_SECONDS
    from carn_stream.pipeline.media.remux import RemuxTask, remux_segment

    source = video_copied(clips["bframes"], tmp_path / "b.mkv")
    with av.open(str(source)) as c:
        assert any(p.dts is None for p in c.demux(video=0) if p.size)  # the case at hand
    want = [(f.pts * f.time_base, f.to_ndarray()) for f in decode_frames(source)]
    plan = plan_segments(source, 1.0)
    got = []
    for segment in plan.segments:
        target = tmp_path / f"original{segment.index}.ts"
        remux_segment(RemuxTask.of(source, plan, segment.index, target))
        got += [(f.pts * f.time_base - SEGMENT_OFFSET_SECONDS, f.to_ndarray())
                for f in decode_frames(target)]  # fmt: skip
    assert [t for t, _ in got] == [t for t, _ in want]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_an_open_gop_h264_original_segment_plays_on_its_own(clips, tmp_path, suffix):
    """MP4 and Matroska keep H.264's parameter sets in their header, and FFmpeg's conversion
    to MPEG-TS put them before IDR pictures only: a segment of the ``original`` rendition that
    starts at an open GOP's I-frame held none, and a player starting there decoded nothing
    ("Invalid data"). Each segment now carries them; played on, they show every frame."""
    from carn_stream.pipeline.media.remux import RemuxTask, remux_segment

    source = video_copied(clips["open_gop"], tmp_path / f"open{suffix}")
    assert is_open_gop(source)
    plan = plan_segments(source, 1.0)
    assert len(plan.segments) == 4 and plan.keyframe_aligned
    joined = b""
    for segment in plan.segments:
        target = tmp_path / f"original{segment.index}.ts"
        remux_segment(RemuxTask.of(source, plan, segment.index, target))
        alone = decode_frames(target)  # a player that starts here
        assert len(alone) >= segment.frames - 3, (segment.index, len(alone))
        joined += target.read_bytes()
    (tmp_path / "all.ts").write_bytes(joined)
    played = decode_frames(tmp_path / "all.ts")
    want = decode_frames(source)
    assert len(played) == len(want) == plan.frames
    assert all(np.array_equal(a.to_ndarray(), b.to_ndarray())
               for a, b in zip(played, want, strict=True))  # fmt: skip


def test_original_segments_of_a_stream_whose_parameter_sets_change_play_on(clips, tmp_path):
    """Two open-GOP recordings of different sizes joined in one Matroska stream, each with its
    parameter sets in-band: the header's (the first recording's) put before every segment's
    I-frame replaced the second's, and half its frames came out wrong. They are put there only
    where the stream carries none of its own; played on, the segments show every frame."""
    from carn_stream.pipeline.media.remux import RemuxTask, remux_segment
    from tests.media import concat_h264

    opts = {**X264, "x264-params": "open-gop=1:keyint=25:min-keyint=25:scenecut=0"}
    car = [f[:72, :88] for f in decode_rgb(clips["open_gop"])][:50]
    bunny = decode_rgb(clips["bframes"])[:50]
    parts = [write_clip(tmp_path / f"{name}.ts", pictures, options=opts, container_format="mpegts")
             for name, pictures in (("a", car), ("b", bunny))]  # fmt: skip
    source = concat_h264(tmp_path / "joined.mkv", parts, container_format="matroska")
    plan = plan_segments(source, 1.0)
    assert plan.in_band_parameter_sets and len(plan.segments) == 4
    joined = b""
    for segment in plan.segments:
        target = tmp_path / f"original{segment.index}.ts"
        remux_segment(RemuxTask.of(source, plan, segment.index, target))
        joined += target.read_bytes()
    (tmp_path / "all.ts").write_bytes(joined)
    played, want = decode_frames(tmp_path / "all.ts"), decode_frames(source)
    assert [(f.width, f.height) for f in played] == [(f.width, f.height) for f in want]
    assert all(np.array_equal(a.to_ndarray(), b.to_ndarray())
               for a, b in zip(played, want, strict=True))  # fmt: skip


def test_the_plans_origin_is_whole_ticks_of_every_stream_and_before_early_audio(tmp_path, clips):
    """Segments count their times from the plan's origin, taken off every frame and audio
    packet: an AVI whose MP3 audio counts in 24 ms frames (3/125 s) and starts at 1 s failed
    every segment ("1 s is no whole number of ticks of 3/125"); and audio that starts long
    before the first frame must not fall before it."""
    from tests.media import with_mp3_audio

    gop = {**X264, "x264-params": "keyint=25:min-keyint=25:scenecut=0"}
    mp3 = with_mp3_audio(clips["bframes"], tmp_path / "mp3.mp4")
    avi = write_clip(tmp_path / "b.avi", decode_rgb(clips["bframes"]), options=gop,
                     audio_from=mp3)  # fmt: skip
    cut = remux_cut(avi, tmp_path / "cut.avi", drop_video=25)
    with av.open(str(cut)) as c:
        assert c.streams.audio[0].time_base == Fraction(3, 125)
    plan = plan_segments(cut, 1.0)
    assert plan.origin % 3 == 0
    early = tmp_path / "early.mkv"  # its audio starts 3 s before its first frame
    with av.open(str(clips["bframes"])) as c, av.open(str(early), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in c.streams}
        for packet in c.demux():
            if packet.dts is None:
                continue
            if packet.stream.type == "video":
                later = round(3 / packet.time_base)
                packet.pts, packet.dts = packet.pts + later, packet.dts + later
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    with av.open(str(early)) as c:
        first_audio = min(p.pts * p.time_base for p in c.demux(audio=0) if p.pts is not None)
    plan = plan_segments(early, 1.0)
    assert plan.segments[0].start_pts * plan.time_base >= 3 and plan.origin <= first_audio


@pytest.mark.parametrize(("container", "fmt"), [("mp4", "mp4"), ("mkv", "mkv"), ("mkv", "mp4")])
def test_audio_long_before_the_first_frame_joins_with_every_frame_and_packet(
    clips, bicubic_worker, tmp_path, container, fmt
):
    """The first segment holds all the audio before the first frame. With 12 s of it, FFmpeg's
    probe of that segment ended before its video, and the join failed ("dimensions not set").
    Now the joined file has every frame at its time and every audio packet. (An MKV made from
    an MP4 starts 21 ms later, as ``ffmpeg -c copy`` makes it: Matroska holds no time before
    0, where the AAC priming frame lies.)"""
    from tests.media import with_tone

    source = with_tone(clips["bframes"], tmp_path / f"early.{container}", lead=12.0)
    out = tmp_path / f"out.{fmt}"
    make(source, out, fmt, bicubic_worker)
    src, got = facts(source), facts(out)
    assert len(got.pts) == 100
    assert [t * got.time_base for t in got.pts] == [t * src.time_base for t in src.pts]
    assert got.pts[0] * got.time_base == 12
    assert got.audio_packets == src.audio_packets and len(src.audio_packets) > 700


def test_an_hls_folder_whose_first_segment_opens_with_long_audio_names_its_picture_size(
    clips, bicubic_worker, tmp_path
):
    """The master playlist describes the folder from its first segment, which holds the 12 s
    of audio before the first frame: read as far as its video, it has the picture's size
    (it said 0x0) and the codecs of both streams."""
    from tests.media import with_tone

    source = with_tone(clips["bframes"], tmp_path / "early.mp4", lead=12.0)
    out = tmp_path / "hls"
    make(source, out, "hls", bicubic_worker)
    variant = (out / "master.m3u8").read_text().splitlines()[3]
    assert ",RESOLUTION=192x108,CODECS=\"avc1." in variant and ",mp4a.40.2\"" in variant


def video_copied(source: Path, path: Path) -> Path:
    """``source``'s video packets copied as they are into ``path`` (its suffix names the
    container)."""
    with av.open(str(source)) as c, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(c.streams.video[0])
        for packet in c.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return path


def decode_frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hls", FMP4_HLS], ids=["mpeg-ts", "fmp4"])
def test_segmented_hls_plays_to_the_end_in_chromium(clips, bicubic_worker, tmp_path, fmt):
    from playwright.sync_api import sync_playwright

    out = tmp_path / "hls"
    make(clips["bframes"], out, fmt, bicubic_worker)
    (out / "page.html").write_text('<video id="v" src="index.m3u8" muted autoplay></video>')
    with media_server(out) as base, sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(f"{base}/page.html")
            page.wait_for_function("document.getElementById('v').ended", timeout=30_000)
            played = page.evaluate("document.getElementById('v').currentTime")
            width = page.evaluate("document.getElementById('v').videoWidth")
        finally:
            browser.close()
    assert width == 192 and abs(played - 4.0) < 0.1


def test_a_corrupt_stretch_fails_its_segment_by_time_range(clips, bicubic_worker, tmp_path):
    source = tmp_path / "corrupt.mp4"
    shutil.copy(clips["bframes"], source)
    plan = plan_segments(source, 1.0)
    second = plan.segments[1]
    with av.open(str(source)) as c:  # blank the second segment's packets but its keyframe
        spans = [(p.pos, p.size) for p in c.demux(video=0) if p.pts is not None
                 and not p.is_keyframe and second.start_pts <= p.pts < second.end_pts]  # fmt: skip
    with open(source, "r+b") as f:
        for pos, size in spans:
            f.seek(pos)
            f.write(b"\0" * size)
    out = tmp_path / "out.mp4"
    with pytest.raises(SegmentFailed, match=r"segment 1 \(1\.00-2\.00 s\) failed"):
        make(source, out, "mp4", bicubic_worker)
    assert not out.exists()


class _StageFailsAsCancelled(InProcessExecutor):
    """A segment's pipeline whose stage fails at the moment its run is cancelled: the first
    attempts wait for ``fail`` inside a TaskGroup, as ``run_pipeline``'s stages run; a retry
    fails at once."""

    def __init__(self, worker) -> None:
        super().__init__(worker)
        self.attempts, self.entered = 0, asyncio.Event()
        self.fail: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self, task, on_frame):
        self.attempts += 1
        self.entered.set()
        try:
            async with asyncio.TaskGroup() as stages:
                stages.create_task(self._stage())
        except BaseExceptionGroup as errors:
            raise errors.exceptions[0] from None

    async def _stage(self) -> None:
        await self.fail
        raise RuntimeError("the stage failed")


def test_a_run_cancelled_as_a_segment_fails_ends_cancelled_without_retrying(
    clips, bicubic_worker, tmp_path
):
    """The cancellation and the stage's error arrive in the same loop turn: the pipeline's
    TaskGroup reports the error, and before the fix the segment was retried (3 attempts) and
    the run ended as a failure."""
    plan = plan_segments(clips["bframes"], 60.0)
    assert len(plan.segments) == 1

    async def go() -> int:
        executor = _StageFailsAsCancelled(bicubic_worker)
        out = tmp_path / "out.mp4"
        run = SegmentedRun(source=clips["bframes"], plan=plan, fmt=FORMATS["mp4"], output=out,
                           work_dir=tmp_path / ".work", options=PipelineOptions(scale=2),
                           executor=executor)  # fmt: skip
        owner = asyncio.ensure_future(run.execute())
        await asyncio.wait_for(executor.entered.wait(), 10)
        owner.cancel()
        executor.fail.set_result(None)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(owner, 10)
        return executor.attempts

    assert asyncio.run(go()) == 1


def test_a_plan_of_a_file_without_video_frames_is_refused(tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(InputError):
        plan_segments(tmp_path / "text.mp4")


# --------------------------------------------------------------------------- resuming


def cli(*args: str, weights: Path | None = None, **kwargs) -> subprocess.Popen:
    """The command, with the official weights (or ``weights``)."""
    env = {**os.environ, "CARN_WEIGHTS": str(weights or official_weights_path())}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen(
        [sys.executable, "-m", "carn_stream.cli", *args], cwd=REPO_ROOT, env=env, text=True,
        **pipes,
    )  # fmt: skip


def killed_after_a_segment(args: tuple[str, ...], work: Path, weights: Path | None = None) -> Path:
    """Run the command until its work folder's manifest records a segment, then kill it
    (SIGKILL, as a crash); returns the manifest."""
    first = cli(*args, weights=weights)
    manifest = work / "segments.jsonl"
    try:
        wait_for(lambda: manifest.is_file() and manifest.read_text().count("\n") >= 1, 120,
                 "a finished segment")  # fmt: skip
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    return manifest


def segment_files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("segment_*.ts")}


def test_a_work_folder_planned_by_the_earlier_rule_is_not_resumed(clips, tmp_path):
    from argparse import Namespace

    from carn_stream.pipeline.execution.workdir import WorkDir
    from carn_stream.pipeline.media.encode import EncoderOptions
    from carn_stream.settings import Settings
    from carn_stream.upscale_command import Item, _identify

    source, work = clips["one_keyframe"], tmp_path / "work"
    item = Item(source, tmp_path / "out.mp4", FORMATS["mp4"], work)

    def identify() -> None:
        _identify(item, Namespace(scale=2, input_fps=None, deinterlace=True), Settings(),
                  EncoderOptions(), 1.0)

    identify()
    # The earlier rule planned this input as one segment.
    earlier = dataclasses.replace(plan_segments(source, WHOLE), rule=PLAN_RULE - 1)
    WorkDir(work).start(item.identity, earlier)
    identify()
    assert item.resumed is None  # started afresh, with today's plan
    WorkDir(work).start(item.identity, plan_segments(source, 1.0))
    identify()
    assert item.resumed is not None and len(item.resumed[0].segments) == 2
    # Another output (an HLS folder's segments live in it): not resumed. The same work folder
    # resumed a run into another folder, whose playlist then named segments that were not there.
    item.output = tmp_path / "elsewhere.mp4"
    identify()
    assert item.resumed is None


@pytest.mark.slow
@pytest.mark.parametrize("raw", [False, True], ids=["mp4", "raw-h264"])
def test_the_cli_resumes_after_being_killed(clips, tmp_path, raw):
    """A raw stream's run reads its timed copy in the work folder; a resume that finds the copy
    gone makes it again, and the segments kept still fit."""
    out = tmp_path / "out.mp4"
    work = tmp_path / "work"
    source = raw_stream(clips["bframes"], tmp_path / "b.h264") if raw else clips["bframes"]
    args = ("upscale", str(source), str(out), "--scale", "2", "--precision", "fp32",
            "--segment-seconds", "1", "--work-dir", str(work))  # fmt: skip
    manifest = killed_after_a_segment(args, work)
    # As if killed right after its first segment (it may have made up to three by the time
    # the signal lands): three are left, so the resumed run is watched while it makes them.
    # Unrecorded segments are made again, whatever files they left.
    first_line = manifest.read_text().splitlines(keepends=True)[0]
    manifest.write_text(first_line)
    recorded = {Path(json.loads(first_line)["file"]).name}
    kept = {n: v for n, v in segment_files(work / "segments").items() if n in recorded}
    assert kept and not out.exists()
    assert (work / "input.mp4").is_file() == raw
    if raw:
        (work / "input.mp4").unlink()
    log = tmp_path / "second.log"
    second = cli(*args, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    # While it runs: once it has published a segment of its own, the kept ones are still the
    # very same files (same inode and modification time), not made again.
    seen_after_new = False
    while second.poll() is None:
        try:  # (the run removes its work folder once the output is complete: at any moment)
            lines = manifest.read_text().count("\n") if manifest.is_file() else 0
            now = segment_files(work / "segments") if (work / "segments").is_dir() else {}
        except FileNotFoundError:
            lines, now = 0, {}
        assert all(now[name] == kept[name] for name in kept if name in now)
        seen_after_new |= lines > len(kept) and set(kept) <= set(now)
        time.sleep(0.05)
    second.wait(timeout=300)
    stderr = log.read_text()
    assert second.returncode == 0, stderr
    assert seen_after_new  # the check above ran after the resumed run had made a segment
    assert "resuming" in stderr and f"{len(kept)} of 4 segments" in stderr
    got, want = facts(out), facts(clips["bframes"])
    assert [p * got.time_base for p in got.pts] == [p * want.time_base for p in want.pts]
    assert not work.exists()  # removed once the output is complete


@pytest.mark.slow
def test_a_rerun_with_other_weights_makes_every_segment_again(clips, tmp_path):
    """The run's identity named the weights by their path: a file at the same path with other
    contents (a model tuned again), or the official weights downloaded where the bundled ones
    stood in, resumed the other model's segments into one output."""
    from carn_stream.model import CARNMWeights

    out, work = tmp_path / "out.mp4", tmp_path / "work"
    weights = tmp_path / "model.pth"
    shutil.copyfile(official_weights_path(), weights)
    args = ("upscale", str(clips["bframes"]), str(out), "--scale", "2", "--precision", "fp32",
            "--segment-seconds", "1", "--work-dir", str(work))  # fmt: skip
    killed_after_a_segment(args, work, weights)
    shutil.copyfile(CARNMWeights.BUNDLED.value.bundled_path, weights)  # same path, new model
    second = cli(*args, weights=weights)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert (f"{work} holds segments made with other weights or on another device: making {out} "
            "afresh") in stderr
    assert "resuming" not in stderr and not work.exists()
    assert facts(out).pts == facts(clips["bframes"]).pts


@pytest.mark.slow
def test_ctrl_c_on_a_one_keyframe_input_says_what_is_kept_and_the_rerun_resumes(clips, tmp_path):
    # Once one segment: stopped at 55 of 132 frames, "finished ones stay" though none had,
    # and the rerun started over from frame 0.
    source = write_clip(tmp_path / "one.mp4", decode_rgb(clips["bframes"], 100),
                        options={**X264, "g": "1000"})  # fmt: skip
    out, work = tmp_path / "out.mp4", tmp_path / "work"
    args = ("upscale", str(source), str(out), "--scale", "4", "--precision", "fp32",
            "--segment-seconds", "1", "--work-dir", str(work))  # fmt: skip
    manifest = work / "segments.jsonl"
    first = cli(*args)
    try:
        wait_for(lambda: manifest.is_file() and manifest.read_text().count("\n") >= 1, 120,
                 "a finished segment")  # fmt: skip
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
    finally:
        first.kill()
    assert first.returncode == 130, stderr
    kept = manifest.read_text().count("\n")
    said = re.search(r"stopping: abandoning the segments in progress; (\d+) of 4 segments are "
                     r"done and stay in (\S+): running the same command again resumes from them "
                     r"and makes again the (\d+) frames? of the segments in progress", stderr)
    assert said, stderr
    assert int(said[1]) == kept and said[2] == str(work)
    # The other segment in flight has made some of its frames, or (on a busy machine, when
    # its pre-roll decode is still under way) none yet: never all of them.
    assert 0 <= int(said[3]) < 100 - 25 * kept
    second = cli(*args)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert f"{kept} of 4 segments ({25 * kept} frames) already done" in stderr
    assert facts(out).pts == facts(source).pts


@pytest.mark.slow
def test_the_service_resumes_a_killed_job_from_its_done_segments(clips, tmp_path):
    data = tmp_path / "data"
    with media_server(clips["bframes"].parent) as base:
        first = ServerProcess(data).start()
        try:
            job = first.call("POST", "/jobs", {"url": f"{base}/bframes.mp4", "format": "hls"})
            job = job.json()
            wait_for(lambda: first.job(job["id"])["segments"]["done"] >= 1, 120, "a segment")
        finally:
            first.kill()
        folder = data / "jobs" / job["id"] / "hls"
        # What the store had recorded as done when the process died: those are kept. A
        # segment published but not yet recorded was still running, and may be made again.
        store = JobStore(data / "jobs.sqlite3")
        done = {segment_name(s.index) for s in store.segments(job["id"]) if s.state == "done"}
        store.close()
        kept = {name: v for name, v in segment_files(folder).items() if name in done}
        assert kept
        second = ServerProcess(data).start()
        try:
            done = second.wait_job(job["id"], ("succeeded", "failed"), timeout=300)
            assert done["state"] == "succeeded", done["error"]
            assert done["segments"] == {"total": 4, "done": 4, "running": 0, "failed": 0}
            segments = second.call("GET", f"/jobs/{job['id']}/segments").json()
        finally:
            second.stop()
    now = segment_files(folder)
    assert {name: now[name] for name in kept} == kept  # the done segments were not redone
    assert all(s["state"] == "done" and s["node"] for s in segments)
    joined = tmp_path / "all.ts"
    names = sorted(now)
    joined.write_bytes(b"".join((folder / n).read_bytes() for n in names))
    assert len(all_pts(joined)) == 100


@pytest.mark.slow
def test_a_graceful_stop_is_quick_and_costs_no_attempt(clips, tmp_path):
    data = tmp_path / "data"
    with media_server(clips["bframes"].parent) as base:
        first = ServerProcess(data).start()
        try:
            job = first.call("POST", "/jobs", {"url": f"{base}/bframes.mp4", "format": "mp4"})
            job = job.json()
            wait_for(lambda: first.job(job["id"])["progress"]["frames_done"] > 0, 120, "work")
        finally:
            started = time.monotonic()
            first.stop()  # SIGTERM, as docker stop and orchestrators send
            stopped_in = time.monotonic() - started
        # uvicorn re-raises the signal once it has shut down cleanly
        assert "Application shutdown complete" in first.log.read_text()
        assert stopped_in < 10  # inside Docker's default grace period, with a job running
        second = ServerProcess(data).start()
        try:
            done = second.wait_job(job["id"], ("succeeded", "failed"), timeout=300)
        finally:
            second.stop()
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 1  # the stopped run did not count


def test_a_segment_whose_copy_for_a_cluster_passes_the_limit_is_refused_saying_why(
    clips, monkeypatch
):
    """A segment's copy starts at the keyframe before it: an input with one keyframe made
    copies growing to the whole input, each held in memory twice and sent whole."""
    from carn_stream.pipeline.execution import segment_transport

    plan = plan_segments(clips["one_keyframe"], 1.0)
    last = plan.segments[-1]
    size = len(segment_transport.cut_segment(clips["one_keyframe"], last, plan.time_base, True))
    monkeypatch.setattr(segment_transport, "MAX_COPY_BYTES", size // 2)
    with pytest.raises(segment_transport.CopyTooLarge, match="upscale this input on one machine"):
        segment_transport.cut_segment(clips["one_keyframe"], last, plan.time_base, True)
