"""Outputs the way people expect: the container the suffix names, one overwrite rule, the whole
file kept (subtitles, chapters, metadata, attachments, aspect ratio), 10-bit kept 10-bit, and
folders of videos at once."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import re
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
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker
from carn_stream.pipeline.errors import OutputError
from carn_stream.pipeline.execution.executors import InProcessExecutor, PlanRequest
from carn_stream.pipeline.execution.segmented import SegmentedRun, SegmentFailed
from carn_stream.pipeline.media.encode import EncoderOptions
from carn_stream.pipeline.media.formats import FORMATS, format_for_path
from carn_stream.pipeline.media.keep import subtitle_payload, subtitle_text
from carn_stream.pipeline.run import PipelineOptions
from tests.helpers import (
    REPO_ROOT,
    QuietHandler,
    official_weights_path,
    play_switched_to_second_audio,
    serve_directory,
)
from tests.media import (
    HDR10_LIGHT_LEVEL,
    HDR10_MASTERING,
    decode_rgb,
    downscale_frames,
    facts,
    with_mp3_audio,
    with_pcm_audio,
    with_second_audio,
    write_clip,
    write_exif_mjpeg,
    write_hdr10_clip,
    write_rich_mkv,
)
from tests.service import wait_for

X264 = {"crf": "12", "preset": "veryfast", "g": "25"}


@pytest.fixture(scope="module")
def clips(data_dir, tmp_path_factory) -> dict[str, Path]:
    video = data_dir / "video"
    d = tmp_path_factory.mktemp("clips")
    bunny = downscale_frames(decode_rgb(video / "bigbuckbunny.mp4", 50), (160, 90))
    rich = downscale_frames(decode_rgb(video / "bigbuckbunny.mp4", 40), (320, 180))
    found = {
        # a keyframe each second: two segments of 1 s
        "bunny": write_clip(
            d / "bunny.mp4",
            bunny,
            audio_from=video / "bigbuckbunny.mp4",
            audio_seconds=2.0,
            options=X264,
        ),
        "rich": write_rich_mkv(
            d / "rich.mkv", rich, audio_from=video / "bigbuckbunny.mp4", audio_seconds=1.6
        ),
        "ten_pq": _deep_clip(d / "ten_pq.mkv", bunny[:4], transfer=16),
        "ten_hlg": _deep_clip(d / "ten_hlg.mkv", bunny[:4], transfer=18),
        "eight": write_clip(d / "eight.mkv", bunny[:4], codec="ffv1", pix_fmt="yuv420p"),
        # HDR10 with its metadata, a keyframe each second: two segments of 1 s
        "hdr10": write_hdr10_clip(d / "hdr10.mp4", bunny),
    }
    # bunny's audio (5.1 AAC, untagged) and a stereo commentary in English
    found["two_audio"] = with_second_audio(found["bunny"], d / "two_audio.mkv", 2.0)
    return found


def _deep_clip(path: Path, frames: list[np.ndarray], transfer: int) -> Path:
    """A lossless 10-bit clip tagged BT.2020 (primaries, matrix) with ``transfer`` (16: PQ,
    18: HLG)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p10le"
        ctx = stream.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = 9, transfer, 9, 1
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf = vf.reformat(format="yuv420p10le", dst_colorspace=9)
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def worker():
    worker = InferenceWorker(Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32")))
    yield worker
    worker.close()


def make(source: Path, output: Path, worker, fmt: str | None = None, codec: str = "h264",
         crf: int = 18, fmp4: bool = False) -> Path:  # fmt: skip
    """A segmented run (segments of 1 s) of ``source`` into ``output``, as the CLI makes it."""
    chosen = format_for_path(output, fmt).for_codec(codec, fmp4)

    async def go() -> Path:
        executor = InProcessExecutor(worker)
        plan = await executor.plan(PlanRequest(source, 1.0))
        options = PipelineOptions(scale=2, batch_size=2, encoder=EncoderOptions(codec, crf))
        run = SegmentedRun(source=source, plan=plan, fmt=chosen, output=output,
                           work_dir=output.parent / f".{output.name}.work", options=options,
                           executor=executor)  # fmt: skip
        try:
            return await run.execute()
        finally:
            await executor.close()

    return asyncio.run(go())


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "CARN_WEIGHTS": str(official_weights_path()), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "carn_stream.cli", *args], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=300, **kwargs,
    )  # fmt: skip


def brand(path: Path) -> str:
    with av.open(str(path)) as c:
        return c.metadata.get("major_brand", "")


# --------------------------------------------------------------------------- containers


@pytest.mark.parametrize(
    "suffix,demuxer,major_brand",
    [(".mkv", "matroska,webm", ""), (".mov", "mov,mp4,m4a,3gp,3g2,mj2", "qt  "),
     (".mp4", "mov,mp4,m4a,3gp,3g2,mj2", "isom")],
)  # fmt: skip
def test_the_suffix_picks_the_container(clips, worker, tmp_path, suffix, demuxer, major_brand):
    out = make(clips["bunny"], tmp_path / f"out{suffix}", worker)
    with av.open(str(out)) as c:
        assert c.format.name == demuxer
    assert brand(out) == major_brand  # MOV and MP4 share a demuxer; their brands differ
    src, got = facts(clips["bunny"]), facts(out)
    assert (got.width, got.height) == (320, 180)
    # the same presentation times (Matroska counts in milliseconds, MP4 and MOV in the input's
    # own time base)
    assert [p * got.time_base for p in got.pts] == [p * src.time_base for p in src.pts]
    assert got.audio_packets == src.audio_packets and got.audio_codec == "aac"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_files_last_as_long_as_the_input_at_its_frame_rate(clips, worker, tmp_path, suffix):
    # Joined from segments, the files once ended a frame early (MPEG-TS keeps no durations)
    # and reported odd rates: 640000/25089 (MP4, MOV) or 12800/1 (MKV) for this 25 fps
    # input; the frames themselves were right.
    out = make(clips["bunny"], tmp_path / f"out{suffix}", worker)
    with av.open(str(clips["bunny"])) as c:
        rate, seconds = c.streams.video[0].average_rate, c.duration / av.time_base
    with av.open(str(out)) as c:
        video = c.streams.video[0]
        assert video.average_rate == rate == 25
        assert c.duration / av.time_base == pytest.approx(seconds, abs=1e-3)
        if video.duration is not None:  # MKV gives only the container's duration
            assert float(video.duration * video.time_base) == pytest.approx(2.0, abs=1e-3)
    assert len(facts(out).pts) == 50


def test_an_animated_gif_is_upscaled_at_its_own_frame_times(data_dir, worker, tmp_path):
    """Animated GIFs were refused as "not a video container"; GIF's demuxer opens nothing
    else, so they are read like any video: every frame, at the times its delays give."""
    gif = tmp_path / "carphone.gif"
    with av.open(str(data_dir / "video" / "carphone_pristine.mp4")) as src, \
            av.open(str(gif), "w") as out:  # fmt: skip
        stream = out.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = 176, 144, "rgb8"
        for n, frame in enumerate(itertools.islice(src.decode(video=0), 0, 24, 3)):
            frame = frame.reformat(format="rgb8")
            frame.pts, frame.time_base = n, Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    out = make(gif, tmp_path / "carphone.mp4", worker)
    with av.open(str(out)) as c:
        video = c.streams.video[0]
        assert (video.width, video.height) == (352, 288)
        times = [float(f.time) for f in c.decode(video=0)]
    assert times == pytest.approx([n / 10 for n in range(8)])


def test_transcoded_audio_keeps_its_time_in_every_segment(clips, worker, tmp_path):
    # Audio the segments cannot carry (PCM here) is transcoded to AAC; it was once timed from
    # zero in every segment instead of from the segment's start (the encoder counted samples
    # from 0), so segments after the first played silence or the wrong audio.
    source = with_pcm_audio(clips["bunny"], tmp_path / "pcm.mkv")
    out = make(source, tmp_path / "hls", worker)
    segments = sorted(out.glob("segment_*.ts"))
    assert len(segments) == 2
    for path in segments:
        with av.open(str(path)) as c:
            video = next(p for p in c.demux(video=0) if p.pts is not None)
            v_at = video.pts * video.time_base
        with av.open(str(path)) as c:
            audio = next(p for p in c.demux(audio=0) if p.pts is not None)
            a_at = audio.pts * audio.time_base
        assert abs(a_at - v_at) < 0.05, (path.name, float(a_at), float(v_at))


def test_transcoded_audio_joins_into_one_file(data_dir, worker, tmp_path):
    """Each segment's AAC encoder starts with a priming frame timed before the segment: an MP4
    of PCM audio (a camera's MOV, a broadcast's MP2 alike) failed to join ('non monotonically
    increasing dts') once a segment's priming frame fell on the previous one's last."""
    video = data_dir / "video" / "bigbuckbunny.mp4"
    frames = downscale_frames(decode_rgb(video, 100), (96, 54))
    clip = write_clip(tmp_path / "clip.mp4", frames, options=X264, audio_from=video,
                      audio_seconds=4.0)  # fmt: skip
    source = with_pcm_audio(clip, tmp_path / "pcm.mkv")
    out = make(source, tmp_path / "out.mp4", worker)
    got = facts(out)
    assert got.audio_codec == "aac" and len(got.pts) == 100
    with av.open(str(out)) as c:
        stream = c.streams.audio[0]
        times = [p.pts * p.time_base for p in c.demux(stream) if p.size]
    assert times == sorted(times) and len(set(times)) == len(times)  # no frame twice
    assert 3.9 < float(times[-1]) < 4.1  # the whole 4 s, no more


def test_mp3_audio_is_copied_bit_for_bit(clips, worker, tmp_path):
    """MP3's decoder is called 'mp3float', which is on no list of what a container can hold
    ('mp3' is): it was transcoded to AAC, and then failed to join as above. Its codec string
    too: a folder's master playlist left CODECS out, and a video on request's upscaled
    renditions claimed AAC."""
    from carn_stream.pipeline.media.renditions import upscaled_audio_tag

    source = with_mp3_audio(clips["bunny"], tmp_path / "mp3.mp4")
    assert upscaled_audio_tag(source) == "mp4a.40.34"
    for name in ("out.mp4", "out.mkv", "hls"):
        out = make(source, tmp_path / name, worker)
        if name == "hls":
            with av.open(str(sorted(out.glob("segment_*.ts"))[0])) as c:
                assert c.streams.audio[0].codec_context.codec.canonical_name == "mp3"
            master = (out / "master.m3u8").read_text()
            assert re.search(r'CODECS="avc1\.[0-9a-f]{6},mp4a\.40\.34"', master), master
            continue
        assert facts(out).audio_packets == facts(source).audio_packets, name


def test_mp3_below_16_khz_is_aac_where_mp4_holds_it_and_copied_elsewhere(clips, worker, tmp_path):
    """MPEG-2.5's MP3 (8 to 12 kHz) has no MP4 sample entry: an MP4 output failed to join
    ("Invalid argument"). Segments, which MP4 files and fragmented-MP4 folders are made of,
    now carry it as AAC at its own rate; Matroska and QuickTime keep it bit for bit."""
    from carn_stream.pipeline.media.renditions import source_codecs, upscaled_audio_tag

    source = with_mp3_audio(clips["bunny"], tmp_path / "mp3.mkv", rate=11025)
    with av.open(str(source)) as c:
        assert (c.streams.audio[0].codec_context.codec.canonical_name,
                c.streams.audio[0].sample_rate) == ("mp3", 11025)  # fmt: skip
        heard = sum(frame.samples for frame in c.decode(audio=0)) / 11025
    assert upscaled_audio_tag(source) == "mp4a.40.2"
    assert source_codecs(source)[1] is None  # (a copy of the input leaves it out)
    for name in ("out.mp4", "hls", "out.mkv", "out.mov"):
        out = make(source, tmp_path / name, worker, fmp4=name == "hls")
        played = out / "index.m3u8" if name == "hls" else out
        with av.open(str(played)) as c:
            audio = c.streams.audio[0]
            codec = audio.codec_context.codec.canonical_name
            assert (codec, audio.sample_rate) == ("mp3" if name in ("out.mkv", "out.mov")
                                                  else "aac", 11025), name  # fmt: skip
            samples = sum(frame.samples for frame in c.decode(audio=0))
        # (within three AAC frames: a segment's whole frames overlap its neighbours')
        assert abs(samples - heard * 11025) < 3 * 1024, (name, samples / 11025, heard)
        if codec == "mp3":
            assert facts(out).audio_packets == facts(source).audio_packets, name


def test_an_unknown_suffix_is_refused_with_the_allowed_ones():
    with pytest.raises(OutputError, match=r"'\.avi'; use \.mp4, \.mkv, \.mov, or a folder"):
        format_for_path(Path("out.avi"))
    with pytest.raises(OutputError, match=r"a mkv output needs a name ending in \.mkv"):
        format_for_path(Path("out.mp4"), "mkv")  # never MKV data in a .mp4 file
    assert format_for_path(Path("OUT.MKV")).name == "mkv"
    assert format_for_path(Path("folder")).name == "hls"
    assert format_for_path(Path("out.mp4"), "hls").name == "hls"  # HLS takes any folder name


def test_the_cli_refuses_an_unknown_suffix_in_one_line(tmp_path, clips):
    result = cli("upscale", str(clips["eight"]), str(tmp_path / "o.avi"), "--scale", "2")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"carn-stream upscale: error: output {tmp_path / 'o.avi'}: unsupported suffix '.avi'; "
        "use .mp4, .mkv, .mov, or a folder (no suffix) for HLS"
    ]


# --------------------------------------------------------------------------- overwriting


@pytest.mark.parametrize("name", ["out.mp4", "out.mkv", "hls"])
def test_one_overwrite_rule_for_files_and_folders(tmp_path, name):
    fmt = format_for_path(Path(name))
    output = tmp_path / "new" / "deeper" / name
    fmt.claim(output, overwrite=False)  # missing parents are created, for both kinds
    assert output.parent.is_dir()
    if fmt.is_folder:
        output.mkdir()
        (output / "index.m3u8").write_text("#EXTM3U\n")
        (output / "segment_00000.ts").write_bytes(b"old")
    else:
        output.write_bytes(b"old")
    with pytest.raises(OutputError, match="use --overwrite to replace it"):
        fmt.claim(output, overwrite=False)
    fmt.claim(output, overwrite=True)
    if fmt.is_folder:  # the old playlist and segments are gone; the folder is reused
        assert output.is_dir() and not any(output.iterdir())
    else:  # a file is only replaced when the new one is complete
        assert output.read_bytes() == b"old"
    fmt.claim(output, overwrite=False, resuming=True)  # the run's own output: no refusal


def test_overwrite_never_deletes_what_is_not_an_output(tmp_path):
    hls = FORMATS["hls"]
    (tmp_path / "keep.txt").write_text("user data")
    (tmp_path / "index.m3u8").write_text("#EXTM3U\n")
    with pytest.raises(OutputError, match="holds other files"):
        hls.claim(tmp_path, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "user data"
    (tmp_path / "a.mp4").mkdir()
    with pytest.raises(OutputError, match="is a folder; a mp4 output is one file"):
        FORMATS["mp4"].claim(tmp_path / "a.mp4", overwrite=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["out.mp4", "hls"])
def test_the_cli_refuses_an_existing_output_unless_asked(clips, tmp_path, name):
    output = tmp_path / "missing-parent" / name
    args = ("upscale", str(clips["eight"]), str(output), "--scale", "2", "--precision", "fp32")
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    stamp = {p.name: p.stat().st_mtime_ns for p in ([output] if output.is_file() else
                                                   output.iterdir())}  # fmt: skip
    again = cli(*args)
    assert again.returncode == 1 and "exists" in again.stderr and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    forced = cli(*args, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    after = {p.name: p.stat().st_mtime_ns for p in ([output] if output.is_file() else
                                                   output.iterdir())}  # fmt: skip
    assert after.keys() == stamp.keys() and all(after[k] != stamp[k] for k in stamp)


@pytest.mark.slow
def test_an_interrupted_hls_run_resumes_into_its_own_folder(data_dir, tmp_path):
    # Five 1 s segments: killed once the first is published, at most two of them are done.
    frames = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 125), (96, 54))
    clip = write_clip(tmp_path / "five.mp4", frames, options=X264)
    out = tmp_path / "hls"
    args = ("upscale", str(clip), str(out), "--scale", "2", "--precision", "fp32",
            "--segment-seconds", "1", "--batch", "1")  # fmt: skip
    env = {**os.environ, "CARN_WEIGHTS": str(official_weights_path())}
    first = subprocess.Popen([sys.executable, "-m", "carn_stream.cli", *args], cwd=REPO_ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(lambda: (out / "segment_00000.ts").is_file(), 120, "a finished segment")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    assert not (out / "index.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")
    second = cli(*args)  # no --overwrite: the folder holds this run's own segments
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr
    assert (out / "index.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")


# --------------------------------------------------------------------------- the whole file


def streams_of(path: Path) -> dict[str, list]:
    with av.open(str(path)) as c:
        return {
            kind: [(s.codec_context.name if s.codec_context else None, dict(s.metadata),
                    s.disposition) for s in getattr(c.streams, kind)]
            for kind in ("video", "audio", "subtitles")
        }  # fmt: skip


def cues(path: Path) -> list[tuple[Fraction, bytes]]:
    with av.open(str(path)) as c:
        stream = c.streams.subtitles[0]
        return [(p.pts * p.time_base, bytes(p)) for p in c.demux(stream) if p.size > 2]


def test_mkv_keeps_subtitles_chapters_metadata_attachments_and_aspect(clips, worker, tmp_path):
    src = clips["rich"]
    out = make(src, tmp_path / "out.mkv", worker)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert b.metadata["title"] == "A rich test clip"
        assert [(c["start"] * c["time_base"], c["metadata"]) for c in b.chapters()] == [
            (c["start"] * c["time_base"], c["metadata"]) for c in a.chapters()
        ] and len(b.chapters()) == 2
        assert b.streams.video[0].sample_aspect_ratio == Fraction(4, 3)  # anamorphic stays so
        (font,) = b.streams.attachments
        assert (font.name, font.mimetype) == ("font.ttf", "application/x-truetype-font")
        assert bytes(font.data) == bytes(a.streams.attachments[0].data)
    got = streams_of(out)
    assert got["video"][0][1]["language"] == "jpn" and got["audio"][0][1]["language"] == "fra"
    (codec, tags, disposition), = got["subtitles"]  # fmt: skip
    assert codec in ("subrip", "srt") and tags["language"] == "eng" and tags["title"] == "English"
    assert disposition == av.stream.Disposition.default | av.stream.Disposition.forced
    assert cues(out) == cues(src) == [(Fraction(1, 10), b"Hello <i>there</i>"),
                                     (Fraction(4, 5), b"Second cue")]  # fmt: skip


def cover_of(path: Path) -> bytes | None:
    """The picture of ``path``'s attached picture stream (None: it has none)."""
    with av.open(str(path)) as c:
        covers = [s for s in c.streams.video if s.disposition & av.stream.Disposition.attached_pic]
        if not covers:
            return None
        return next(bytes(p) for p in c.demux(covers[0]) if p.size)


@pytest.mark.parametrize("given,codec", [(".mp4", "png"), (".mkv", "mjpeg"), (".mkv", "gif")])
def test_cover_art_is_kept_where_the_container_holds_it(clips, worker, tmp_path, given, codec):
    """A thumbnail a downloader embedded (an MP4's attached picture, a Matroska cover
    attachment) was dropped from every output. MP4 keeps it as an attached picture, Matroska
    as a cover attachment, MOV cannot hold it; the picture's bytes are unchanged, the main
    video stays the video. A video stored small keeps it in its copy (MP4). Matroska keeps
    any picture (a GIF too, which MP4 cannot hold), under its own name."""
    from carn_stream.pipeline.media.delivery import encode_copy
    from tests.media import with_cover_art

    source, picture = with_cover_art(clips["bunny"], tmp_path / f"cover{given}", codec)
    assert cover_of(source) == picture
    mp4 = codec != "gif"
    for suffix, kept in ((".mp4", mp4), (".mkv", True), (".mov", False)):
        out = make(source, tmp_path / f"out{suffix}", worker)
        assert cover_of(out) == (picture if kept else None), suffix
        with av.open(str(out)) as c:
            assert (c.streams.video[0].width, c.streams.video[0].height) == (320, 180)
            if suffix == ".mkv" and given == ".mkv":
                (cover,) = [s for s in c.streams.video if s.index]
                assert cover.metadata["filename"] == f"cover.{'jpeg' if mp4 else 'gif'}"
    stored = encode_copy(source, tmp_path / "stored.mp4", scale=2).path
    assert cover_of(stored) == (picture if mp4 else None)


def test_a_file_that_lists_its_cover_art_first_is_read_by_its_video(clips, worker, tmp_path):
    """An MP4 whose metadata comes before its tracks has its cover art as stream 0: the
    picture was taken for the video ("packets without timestamps: it cannot be segmented").
    The video is the first video stream that is not an attached picture, everywhere."""
    from carn_stream.pipeline.media.decode import main_video, open_input
    from tests.media import with_cover_art

    source, picture = with_cover_art(clips["bunny"], tmp_path / "cover.mp4", first=True)
    with open_input(source) as c:
        assert c.streams[0].disposition & av.stream.Disposition.attached_pic
        assert main_video(c).index == 1
    out = make(source, tmp_path / "out.mp4", worker)
    assert cover_of(out) == picture
    got = facts(out)
    assert (got.width, got.height, len(got.pts)) == (320, 180, len(facts(clips["bunny"]).pts))


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_mp4_and_mov_take_text_subtitles_as_mov_text(clips, worker, tmp_path, suffix):
    out = make(clips["rich"], tmp_path / f"out{suffix}", worker)
    with av.open(str(out)) as c:
        assert c.metadata["title"] == "A rich test clip"
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["Opening", "Ending"]
        assert c.streams.video[0].sample_aspect_ratio == Fraction(4, 3)
        assert not c.streams.attachments  # neither container holds attachments
    got = streams_of(out)
    assert got["video"][0][1]["language"] == "jpn" and got["audio"][0][1]["language"] == "fra"
    (codec, tags, _), = got["subtitles"]  # fmt: skip
    assert codec == "mov_text" and tags["language"] == "eng"
    assert cues(out) == [(Fraction(1, 10), b"\x00\x0bHello there"),
                         (Fraction(4, 5), b"\x00\x0aSecond cue")]  # fmt: skip


def test_an_hls_folder_keeps_the_aspect_ratio_audio_language_and_subtitles(
    clips, worker, tmp_path
):
    """Segments keep the aspect ratio and the audio's language; the finished folder gets a
    master playlist (its rendition's size, codecs and peak rate) with the input's text
    subtitles as a WebVTT subtitle rendition (subtitles were dropped from HLS before)."""
    out = make(clips["rich"], tmp_path / "hls", worker)
    for segment in sorted(out.glob("segment_*.ts")):
        with av.open(str(segment)) as c:
            assert c.streams.video[0].sample_aspect_ratio == Fraction(4, 3)
            assert c.streams.audio[0].metadata["language"] == "fra"
    master = (out / "master.m3u8").read_text().splitlines()
    assert master[3] == ('#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="English",'
                         'LANGUAGE="en",DEFAULT=YES,AUTOSELECT=YES,FORCED=YES,'
                         'URI="subtitles_0.m3u8"')  # fmt: skip
    variant = re.fullmatch(r'#EXT-X-STREAM-INF:BANDWIDTH=(\d+),RESOLUTION=640x360,'
                           r'CODECS="avc1\.[0-9a-f]{6},mp4a\.40\.2",FRAME-RATE=25\.000,'
                           r'SUBTITLES="subs"', master[4])  # fmt: skip
    assert variant is not None, master[4]
    durations = [float(line[8:-1]) for line in (out / "index.m3u8").read_text().splitlines()
                 if line.startswith("#EXTINF:")]  # fmt: skip
    sizes = [p.stat().st_size for p in sorted(out.glob("segment_*.ts"))]
    peak = max(8 * size / seconds for size, seconds in zip(sizes, durations, strict=True))
    assert abs(int(variant[1]) - peak) <= 1 and master[5:] == ["index.m3u8"]
    assert "#EXTINF:1.600000," in (out / "subtitles_0.m3u8").read_text()
    vtt = (out / "subtitles_0.vtt").read_text().split("\n\n")
    assert vtt[1:] == ["00:00:00.100 --> 00:00:00.500\nHello there",
                       "00:00:00.800 --> 00:00:01.200\nSecond cue\n"]  # fmt: skip
    plain = make(clips["bunny"], tmp_path / "plain", worker)
    assert "SUBTITLES" not in (plain / "master.m3u8").read_text()
    assert "TYPE=AUDIO" not in (plain / "master.m3u8").read_text()  # one audio stream
    assert not list(plain.glob("subtitles_*")) and not list(plain.glob("audio_*"))
    # Playlists are readable as the segments are (a web server serves the folder as it is).
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes


def audio_packets(media: Path | bytes, number: int) -> list[tuple[int, int, bytes]]:
    """Audio stream ``number``'s packets in a file (or in fragmented MP4's bytes): time and
    duration (in its time base), and bytes."""
    source = str(media) if isinstance(media, Path) else io.BytesIO(media)
    with av.open(source) as c:
        stream = c.streams.audio[number]
        return [(p.pts, p.duration, bytes(p)) for p in c.demux(stream) if p.size]


def fragmented(folder: Path, prefix: str = "") -> bytes:
    """A fragmented-MP4 folder's (or its audio rendition's) init.mp4 and media segments, in
    order: one file a demuxer reads."""
    parts = sorted(folder.glob(f"{prefix}segment_*.m4s"))
    return b"".join(p.read_bytes() for p in [folder / f"{prefix}init.mp4", *parts])


def media_lines(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


def extinf(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line.startswith("#EXTINF:")]


@pytest.mark.parametrize("fmp4", [False, True], ids=["mpeg-ts", "fmp4"])
def test_each_audio_stream_of_an_hls_folder_is_a_rendition_of_its_own(
    clips, worker, tmp_path, fmp4
):
    """A second audio stream (a language, a commentary) travelled in the segments, where a
    player plays the first only: no viewer could choose it. Now each audio stream is an audio
    rendition of the master playlist, its packets those of the segments bit for bit, at their
    times, with the folder's durations."""
    out = make(clips["two_audio"], tmp_path / "hls", worker, fmp4=fmp4)
    master = (out / "master.m3u8").read_text().splitlines()
    assert master[3:5] == [
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="Audio 1",DEFAULT=YES,AUTOSELECT=YES,'
        'CHANNELS="6",URI="audio_0.m3u8"',
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="Commentary",LANGUAGE="en",DEFAULT=NO,'
        'AUTOSELECT=YES,CHANNELS="2",URI="audio_1.m3u8"',
    ]  # fmt: skip
    assert master[5].endswith(',AUDIO="audio"') and master[6:] == ["index.m3u8"]
    index = (out / "index.m3u8").read_text()
    kind = "m4s" if fmp4 else "ts"
    # BANDWIDTH: the peak of what a player fetches, each segment with its rendition's
    fetched = [8 * ((out / f"segment_0000{i}.{kind}").stat().st_size
                    + max((out / f"audio_{n}_segment_0000{i}.{kind}").stat().st_size
                          for n in (0, 1))) / float(line[8:-1])
               for i, line in enumerate(extinf(index))]  # fmt: skip
    assert f"BANDWIDTH={round(max(fetched))}," in master[5], (master[5], fetched)
    for number in (0, 1):
        prefix = f"audio_{number}_"
        playlist = (out / f"audio_{number}.m3u8").read_text()
        assert extinf(playlist) == extinf(index) and len(extinf(index)) == 2
        assert media_lines(playlist) == [f"{prefix}segment_0000{i}.{kind}" for i in (0, 1)]
        if fmp4:
            assert f'#EXT-X-MAP:URI="{prefix}init.mp4"' in playlist
            with av.open(io.BytesIO(fragmented(out, prefix))) as c:
                assert [s.type for s in c.streams] == ["audio"]
            main = audio_packets(fragmented(out), number)
            own = audio_packets(fragmented(out, prefix), 0)
        else:
            main, own = [], []
            for i in (0, 1):
                main += audio_packets(out / f"segment_0000{i}.ts", number)
                with av.open(str(out / f"{prefix}segment_0000{i}.ts")) as c:
                    assert [s.type for s in c.streams] == ["audio"]
                own += audio_packets(out / f"{prefix}segment_0000{i}.ts", 0)
        assert len(own) > 80 and own == main, number


def test_an_audio_stream_with_a_hole_is_not_offered_on_its_own(clips, worker, tmp_path,
                                                               caplog):  # fmt: skip
    """A stream without a packet in some segment (here: from 1.2 s, none in the first) would
    stall a player in its rendition: it is left out with a warning, and with one stream left
    there is nothing to choose from: no group, the segments' audio plays."""
    late = with_second_audio(clips["bunny"], tmp_path / "late.mkv", 2.0, start=1.2)
    out = make(late, tmp_path / "hls", worker)
    assert "TYPE=AUDIO" not in (out / "master.m3u8").read_text()
    assert not list(out.glob("audio_*"))
    assert ("audio stream 1 (Commentary) of late.mkv is not offered on its own: segment 0 has "
            "none of its packets") in caplog.text  # fmt: skip


def test_a_transcoded_audio_rendition_plays_sample_after_sample(clips, worker, tmp_path):
    """Audio MPEG-TS cannot carry (5.1 FLAC) is transcoded to AAC segment by segment; its
    rendition has the segments' AAC frames, one after another across the segments, without a
    gap or an overlap, and the master playlist gives the channels the segments hold (the
    transcode mixes down to stereo), not the input's six."""
    flac = with_second_audio(clips["bunny"], tmp_path / "flac.mkv", 2.0, codec="flac",
                             layout="5.1")  # fmt: skip
    out = make(flac, tmp_path / "hls", worker)
    main = [p for i in (0, 1) for p in audio_packets(out / f"segment_0000{i}.ts", 1)]
    own = [p for i in (0, 1) for p in audio_packets(out / f"audio_1_segment_0000{i}.ts", 0)]
    steps = {b[0] - (a[0] + a[1]) for a, b in itertools.pairwise(own)}
    assert steps == {0}, steps  # (90 kHz: 1024 samples at 48 kHz are 1920 ticks)
    assert len(own) > 80 and own == main
    with av.open(str(out / "audio_1_segment_00000.ts")) as c:
        held = c.streams.audio[0].codec_context.channels
    master = (out / "master.m3u8").read_text()
    assert held == 2 and 'NAME="Commentary",LANGUAGE="en",DEFAULT=NO,AUTOSELECT=YES,CHANNELS="2"' \
        in master, master  # fmt: skip


def test_no_audio_group_where_the_first_stream_cannot_be_offered(data_dir, worker, tmp_path,
                                                                 caplog):  # fmt: skip
    """The first audio stream is what a player of the segments hears: where it has a hole (it
    starts at 1.2 s), a group of the other two would leave a player of the master playlist
    without it. So there is no group."""
    bunny = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 50), (96, 54))
    silent = write_clip(tmp_path / "silent.mp4", bunny, options=X264)
    late = with_second_audio(silent, tmp_path / "late.mkv", 2.0, start=1.2, title="Late")
    two = with_second_audio(late, tmp_path / "two.mkv", 2.0)
    source = with_second_audio(two, tmp_path / "three.mkv", 2.0, language="fra", title=None)
    out = make(source, tmp_path / "hls", worker)
    assert "TYPE=AUDIO" not in (out / "master.m3u8").read_text()
    assert not list(out.glob("audio_*"))
    assert "audio stream 0 (Late) of three.mkv is not offered on its own" in caplog.text


def test_the_peak_audio_rates_of_a_video_on_request_are_those_of_its_audio_segments(
    clips, tmp_path
):
    """A video on request offers the audio streams with a packet in every segment, and adds the
    busiest one's peak rate to its variants' BANDWIDTH, decided at ingest before any segment is
    made: each stream's peak as its rendition's segments will have it, MPEG-TS's overhead
    included, which the packets alone left out. Counted for each stream on its own."""
    from carn_stream.pipeline.media.remux import RemuxTask, audio_peak_rates, remux_audio
    from carn_stream.pipeline.media.segments import plan_segments

    late = with_second_audio(clips["two_audio"], tmp_path / "late.mkv", 2.0, start=1.2)
    plan = plan_segments(late, 1.0)
    assert [float(s.duration) for s in plan.segments] == [1.0, 1.0]
    from_packets = {}
    with av.open(str(late)) as c:
        for number, stream in enumerate(c.streams.audio):
            sizes = [0, 0]
            for packet in c.demux(stream):
                if packet.size:
                    sizes[min(1, max(0, int(packet.pts * packet.time_base)))] += packet.size
            from_packets[number] = 8 * max(sizes)
            c.seek(0)
    rates = audio_peak_rates(late, plan)
    assert sorted(rates) == [0, 1]  # the third starts in the second segment
    for number in (0, 1):
        made = {i: remux_audio(RemuxTask.of(late, plan, i, tmp_path / f"{number}_{i}.ts"), number)
                for i in (0, 1)}  # fmt: skip
        assert rates[number] == plan.peak_rate(made), number
        assert rates[number] > from_packets[number] + 10_000, number  # the muxer's share


def test_an_audio_stream_whose_segments_cannot_be_made_is_left_out(clips, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    """Its rate comes from segments made at ingest: where they cannot be made, that stream is
    not offered, and the others still are (a failure took every audio rendition away)."""
    from carn_stream.pipeline.errors import InputError
    from carn_stream.pipeline.media import remux
    from carn_stream.pipeline.media.segments import plan_segments

    source = with_second_audio(clips["two_audio"], tmp_path / "two.mkv", 2.0)
    made = remux.audio_segment_size

    def failing_second(task, number: int) -> int:
        if number == 1:
            raise InputError("audio stream 1 cannot be made AAC (decoder missing)")
        return made(task, number)

    monkeypatch.setattr(remux, "audio_segment_size", failing_second)
    rates = remux.audio_peak_rates(source, plan_segments(source, 1.0))
    assert sorted(rates) == [0, 2] and min(rates.values()) > 10_000


def test_audio_segments_transcode_is_described_and_rated_as_the_aac_they_hold(clips, tmp_path):
    """A stream MPEG-TS cannot carry (FLAC 5.1 here) is made stereo AAC in segments: its
    rendition says so (channels, codec string), and its rate is that of the AAC segments made
    of it, not its own packets' 5.1 FLAC rate."""
    from carn_stream.pipeline.media.hls_audio import audio_streams
    from carn_stream.pipeline.media.remux import RemuxTask, audio_peak_rates, remux_audio
    from carn_stream.pipeline.media.segments import plan_segments

    source = with_second_audio(clips["two_audio"], tmp_path / "flac.mkv", 2.0, codec="flac",
                               layout="5.1", title="Lossless")  # fmt: skip
    streams = audio_streams(source)
    assert [(s.name, s.channels, s.codec, s.copied) for s in streams] == [
        ("Audio 1", 6, "mp4a.40.2", True),  # 5.1 AAC, copied as it is
        ("Commentary", 2, "mp4a.40.2", True),
        ("Lossless", 2, "mp4a.40.2", False),  # 5.1 FLAC, made stereo AAC
    ]
    plan = plan_segments(source, 1.0)
    rates = audio_peak_rates(source, plan)
    made = {i: remux_audio(RemuxTask.of(source, plan, i, tmp_path / f"{i}.ts"), 2)
            for i in range(len(plan.segments))}  # fmt: skip
    assert sorted(rates) == [0, 1, 2] and rates[2] == plan.peak_rate(made)
    assert 100_000 < rates[2] < 300_000  # stereo AAC (5.1 FLAC is some 2 Mbit/s)


def test_a_player_chooses_on_its_own_among_the_first_stream_of_each_language():
    """Two English streams (the main one, a commentary) would be alike to a player choosing by
    language: only the first is AUTOSELECT."""
    from carn_stream.pipeline.media.hls import (
        AudioMedia,
        Variant,
        master_playlist_text,
        with_default_audio,
    )

    audio = [AudioMedia("audio_0.m3u8", "English", "eng", True, 2),
             AudioMedia("audio_1.m3u8", "Commentary", "eng", False, 2),
             AudioMedia("audio_2.m3u8", "Français", "fra", False, 6)]  # fmt: skip
    text = master_playlist_text([Variant("index.m3u8", 1000, 320, 180, "")], audio=audio)
    chosen = re.findall(r'NAME="([^"]+)",LANGUAGE="(\w+)",DEFAULT=(\w+),AUTOSELECT=(\w+)', text)
    assert chosen == [("English", "en", "YES", "YES"), ("Commentary", "en", "NO", "NO"),
                      ("Français", "fr", "NO", "YES")]  # fmt: skip
    # A viewer's choice made the default (what a player offering no choice plays), which a
    # player must also be free to choose on its own.
    commentary = with_default_audio(text, "audio_1.m3u8")
    assert re.findall(r'NAME="([^"]+)",LANGUAGE="(\w+)",DEFAULT=(\w+),AUTOSELECT=(\w+)',
                      commentary) == [("English", "en", "NO", "YES"),
                                      ("Commentary", "en", "YES", "YES"),
                                      ("Français", "fr", "NO", "YES")]  # fmt: skip
    with pytest.raises(LookupError):
        with_default_audio(text, "audio_3.m3u8")


@pytest.mark.slow
@pytest.mark.parametrize("fmp4", [False, True], ids=["mpeg-ts", "fmp4"])
def test_chromium_switches_to_the_second_audio_rendition_and_plays_on(
    data_dir, worker, tmp_path, fmp4
):
    """Chromium's own HLS player lists the master playlist's audio renditions by name and
    language; switched to the commentary, it fetches the rest of the audio from that rendition
    and plays to the end. (The default rendition's later segments come slowly, so that the
    player has not buffered them all before it is switched.)"""
    bunny = data_dir / "video" / "bigbuckbunny.mp4"
    frames = downscale_frames(decode_rgb(bunny, 100), (96, 54))
    clip = write_clip(tmp_path / "four.mp4", frames, audio_from=bunny, audio_seconds=4.0,
                      options=X264)  # fmt: skip
    source = with_second_audio(clip, tmp_path / "four.mkv", 4.0)
    out = make(source, tmp_path / "hls", worker, fmp4=fmp4)
    asked: list[str] = []

    class SlowFirstAudio(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path.startswith("/audio_0_segment_") and "00000" not in self.path:
                time.sleep(1.5)
            super().do_GET()

    with serve_directory(out, SlowFirstAudio) as base:
        listed, state = play_switched_to_second_audio(f"{base}/master.m3u8")
    assert listed == [["Audio 1", ""], ["Commentary", "en"]]
    played, error, enabled = state
    assert error is None and abs(played - 4.0) < 0.1 and enabled == [False, True]
    kind = "m4s" if fmp4 else "ts"
    assert f"/audio_1_segment_00003.{kind}" in asked, " ".join(asked)


def test_hevc_codec_strings_follow_the_profile_tier_and_level():
    """HEVC's codec string (hvc1.<profile>.<compatibility>.<tier><level>.<constraints>) from
    an hvcC record and from an Annex B SPS, whose zeros carry emulation prevention bytes."""
    from carn_stream.pipeline.media.renditions import hevc_tag, video_tag

    # Main profile (1), compatible with Main and Main 10 (flags 1 and 2), Main tier, level 3.1
    # (93), progressive and frame-only: the string ISO/IEC 14496-15 gives as its example.
    ptl = bytes([0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 93])
    hvcc = bytes([1]) + ptl + bytes(10)
    assert hevc_tag(hvcc) == "hvc1.1.6.L93.B0"
    # The same in an SPS: NAL header (type 33), sub-layer byte, then the PTL with ``03``
    # after every two zeros that come before a byte below 4 (emulation prevention).
    escaped, zeros = bytearray(), 0
    for byte in ptl:
        if zeros == 2 and byte < 4:
            escaped.append(3)
            zeros = 0
        escaped.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    assert escaped.count(3) == 3 and len(escaped) == len(ptl) + 3
    sps = b"\x00\x00\x00\x01" + bytes([33 << 1, 1, 0x01]) + bytes(escaped) + b"\xa0\x01"
    assert hevc_tag(b"\x00\x00\x01\x40\x01\x0c" + sps) == "hvc1.1.6.L93.B0"  # after a VPS
    assert hevc_tag(bytes([0]) + ptl + bytes(10)) == "hvc1.1.6.L93.B0"  # an hvcC of version 0
    # Main 10, High tier, level 5.1, profile space 1 (A), no constraint flag set.
    high = bytes([0x40 | 0x20 | 0x02, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 153])
    assert hevc_tag(bytes([1]) + high + bytes(10)) == "hvc1.A2.4.H153"
    assert video_tag("hevc", b"\x00\x00\x01\x40\x01") is None  # no SPS
    assert video_tag("vp9", hvcc) is None


@pytest.mark.parametrize("container_format", ["mp4", "mpegts", "matroska"])
def test_hevc_from_x265_has_the_same_codec_string_in_every_container(tmp_path,
                                                                     container_format):  # fmt: skip
    from carn_stream.pipeline.media.renditions import source_codecs
    from tests.media import write_clip

    frames = [np.full((64, 64, 3), 16 * i, np.uint8) for i in range(5)]
    clip = write_clip(tmp_path / "clip", frames, codec="libx265",
                      container_format=container_format)  # fmt: skip
    # x265: Main, Main tier, level 1 (30) for 64x64, progressive and frame-only (0x90)
    assert source_codecs(clip)[0] == "hvc1.1.6.L30.90"


class _MadeUpTimes:
    """A stand-in video stream whose encoder, flushed, gives packets at the (pts, dts) pairs it
    is given: libx265's made-up decode times come at random, and a test of their repair must
    meet them every time."""

    def __init__(self, encoder: str, times: list[tuple[int, int]]) -> None:
        self.codec_context = type("Context", (), {"name": encoder})()
        self.times = times

    def encode(self, frame: av.VideoFrame | None) -> list[av.Packet]:
        if frame is not None:
            return []
        packets = [av.Packet(b"\0") for _ in self.times]
        for packet, (pts, dts) in zip(packets, self.times, strict=True):
            packet.pts, packet.dts = pts, dts
        return packets


@pytest.mark.parametrize(
    ("encoder", "fed", "given", "kept"),
    [
        # x265's decode times for two frames, as it made them up in runs here
        ("libx265", 2, [(0, -1138166333704), (1, -1138166333703)], [0, 1]),
        ("libx265", 2, [(1750, -4611756388245322026), (1751, 1751)], [1750, 1751]),
        # ... or left over from an earlier encoder in the process: a few frames off
        ("libx265", 2, [(6300000, 6292800), (6303600, 6296400)], [6300000, 6303600]),
        ("libx265", 1, [(0, 7)], [0]),
        # B-frames: x265's own times for five frames (two frames' delay) are kept
        ("libx265", 5, [(0, -2), (4, -1), (2, 0), (1, 1), (3, 2)], [-2, -1, 0, 1, 2]),
        ("libx264", 2, [(0, -1138166333704), (1, -1138166333703)], [-1138166333704,
                                                                     -1138166333703]),
    ],
)
def test_the_encoder_puts_right_the_decode_times_libx265_makes_up(encoder, fed, given, kept):
    from carn_stream.pipeline.media.encode import CheckedEncoder

    checked = CheckedEncoder(_MadeUpTimes(encoder, given))
    for pts in range(fed):
        frame = av.VideoFrame(16, 16, "yuv420p")
        frame.pts = pts + given[0][0]
        assert checked.encode(frame) == []
    packets = checked.encode()
    assert [p.dts for p in packets] == kept
    assert [p.pts for p in packets] == [pts for pts, _ in given]


def test_two_frames_of_hevc_make_a_copy_every_time(data_dir, tmp_path):
    """libx265 makes up the decode times of a stream of fewer than three frames, in a third
    to a half of such runs here: MP4 refused the stored copy ("pts/dts pair unsupported",
    blamed on the source), and MPEG-TS segments came out minutes late. Eight copies of two
    frames in a row are all made, timed from 0 a frame apart (without the repair, 7 of 12
    failed at 640x360)."""
    from carn_stream.pipeline.media.delivery import encode_copy

    source = data_dir / "video" / "bigbuckbunny.mp4"
    with av.open(str(source)) as c:
        rate = c.streams.video[0].average_rate
    for n in range(8):
        copy = encode_copy(source, tmp_path / f"copy{n}.mp4", scale=2, codec="hevc", frames=2,
                           video_only=True)  # fmt: skip
        with av.open(str(copy.path)) as c:
            video = c.streams.video[0]
            times = [(p.pts, p.dts) for p in c.demux(video) if p.size]
            assert (video.width, video.height) == (640, 360)
            step = round(1 / (rate * video.time_base))  # (a closed file's streams are gone)
        assert times == [(0, 0), (step, step)], (n, times)


def test_hevc_refuses_pictures_below_its_least_size_in_words(worker, tmp_path):
    """x265 refuses pictures below 16 pixels a side: a job or command that upscaled a 4x4
    clip to HEVC failed with FFmpeg's "Invalid argument: avcodec_open2(...)". It says why
    and what to use instead; H.264 makes the same output."""
    from tests.media import write_clip

    frames = [np.full((4, 4, 3), 40 * i, np.uint8) for i in range(3)]
    clip = write_clip(tmp_path / "tiny.mkv", frames, codec="ffv1")
    with pytest.raises(SegmentFailed, match=r"hevc \(libx265\) encodes pictures of at least 16 "
                       r"pixels a side, and the output is 8x8; use h264"):  # fmt: skip
        make(clip, tmp_path / "tiny_hevc.mp4", worker, codec="hevc")
    assert not (tmp_path / "tiny_hevc.mp4").exists()
    out = make(clip, tmp_path / "tiny.mp4", worker)
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (8, 8)
        assert len(list(c.decode(video=0))) == 3


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_hevc_files_name_their_sample_entry_hvc1(clips, worker, tmp_path, suffix):
    """FFmpeg names HEVC in MP4 and QuickTime files hev1 unless told, and Apple's players do
    not play hev1: the joined file's sample entry is hvc1 (parameter sets in hvcC)."""
    out = make(clips["bunny"], tmp_path / f"out{suffix}", worker, codec="hevc")
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hvc1"
        assert len(list(c.decode(video=0))) == 50


def test_an_hevc_hls_folder_names_its_codecs(clips, worker, tmp_path):
    """A finished HEVC folder's master playlist listed no codec at all: its string was known
    for H.264 only."""
    out = make(clips["bunny"], tmp_path / "hls", worker, codec="hevc")
    master = (out / "master.m3u8").read_text()
    # x265 at 320x180, 25 fps: Main profile, level 2 (60)
    assert 'RESOLUTION=320x180,CODECS="hvc1.1.6.L60.90,mp4a.40.2"' in master, master

def test_an_hevc_hls_folder_is_fragmented_mp4_that_plays_through(clips, worker, tmp_path):
    """Apple's HLS authoring specification asks for HEVC in fragmented MP4; the folder was of
    MPEG-TS segments. Now it is init.mp4 and .m4s media segments, and FFmpeg's HLS reader plays
    every frame and all the audio through the playlist, without gaps."""
    from carn_stream.pipeline.media.isobmff import boxes

    out = make(clips["bunny"], tmp_path / "hls", worker, codec="hevc")
    assert sorted(p.name for p in out.iterdir()) == [
        "index.m3u8", "init.mp4", "master.m3u8", "segment_00000.m4s", "segment_00001.m4s",
    ]  # fmt: skip
    playlist = (out / "index.m3u8").read_text()
    assert "#EXT-X-VERSION:6" in playlist and '#EXT-X-MAP:URI="init.mp4"' in playlist
    assert playlist.rstrip().endswith("segment_00001.m4s\n#EXT-X-ENDLIST")
    init = (out / "init.mp4").read_bytes()
    assert [kind for kind, *_ in boxes(init, 0, len(init))] == [b"ftyp", b"moov"]
    assert b"hvc1" in init and b"hvcC" in init  # the parameter sets in the sample entry
    for number, name in enumerate(["segment_00000.m4s", "segment_00001.m4s"], 1):
        data = (out / name).read_bytes()
        assert [kind for kind, *_ in boxes(data, 0, len(data))] == [b"moof", b"mdat"]
        assert int.from_bytes(data[20:24], "big") == number  # moof/mfhd's sequence number
    with av.open(str(out / "index.m3u8")) as c:
        video = [f.pts * f.time_base for f in c.decode(video=0)]
    with av.open(str(out / "index.m3u8")) as c:
        audio = [(f.pts * f.time_base, f.samples, f.sample_rate) for f in c.decode(audio=0)]
    assert len(video) == 50  # every frame, in order, one 25 fps step apart
    assert {b - a for a, b in itertools.pairwise(video)} == {Fraction(1, 25)}
    rate = audio[0][2]
    gaps = {round((b[0] - a[0]) * rate) - a[1] for a, b in itertools.pairwise(audio)}
    assert gaps == {0}, gaps  # sample after sample across the segments
    assert audio[0][0] == video[0]  # the audio starts with the picture
    assert abs(sum(n for _, n, _ in audio) / rate - 2.0) < 0.03  # all of the input's 2 s


def test_a_resumed_hevc_hls_run_publishes_the_segments_it_had_made(clips, worker, tmp_path):
    """A run stopped after a segment was made (MPEG-TS, in the work folder) and before it was
    published as fragmented MP4: the resumed run publishes it without making it again."""
    from carn_stream.pipeline.execution.executors import SegmentTask

    source, out, work = clips["bunny"], tmp_path / "hls", tmp_path / ".hls.work"
    fmt = FORMATS["hls"].for_codec("hevc")
    assert fmt.fragmented and fmt.segment_dir(out, work) == work / "segments"
    options = PipelineOptions(scale=2, batch_size=2, encoder=EncoderOptions("hevc", 18))
    started: list[int] = []

    async def go() -> None:
        executor = InProcessExecutor(worker)
        try:
            plan = await executor.plan(PlanRequest(source, 1.0))
            made = fmt.prepare(out, work) / "segment_00000.ts"
            task = SegmentTask.of(source, plan, 0, made, options)
            done = {0: await executor.run(task, None)}
            run = SegmentedRun(source=source, plan=plan, fmt=fmt, output=out, work_dir=work,
                               options=options, executor=executor, done=done,
                               on_start=lambda index, attempt: started.append(index))  # fmt: skip
            await run.execute()
        finally:
            await executor.close()

    asyncio.run(go())
    assert started == [1]  # segment 0 was not made again
    assert {"init.mp4", "segment_00000.m4s", "segment_00001.m4s"} <= {p.name for p in out.iterdir()}
    with av.open(str(out / "index.m3u8")) as c:
        assert len(list(c.decode(video=0))) == 50


def test_a_segment_published_before_init_mp4_is_checked_once_it_is_there(tmp_path):
    """A segment without every stream (here, no packet of its audio stream) is published
    before init.mp4 exists; its header waits beside it and is checked when a segment with
    every stream writes init.mp4: one encoded otherwise is found then, not played."""
    from carn_stream.pipeline.media.fragment import publish_fragment, publish_init

    def ts(name: str, width: int, audio_packets: int) -> Path:
        path = tmp_path / name
        with av.open(str(path), "w", format="mpegts") as out:
            video = out.add_stream("libx265", rate=25, options={"x265-params": "log-level=none"})
            video.width, video.height, video.pix_fmt = width, 64, "yuv420p"
            audio = out.add_stream("aac", rate=48000)
            for i in range(3):
                frame = av.VideoFrame.from_ndarray(np.full((64, width, 3), 40 * i, np.uint8),
                                                   format="rgb24")  # fmt: skip
                frame.pts = i
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
            for i in range(audio_packets):
                silence = np.zeros((2, 1024), np.float32)
                sound = av.AudioFrame.from_ndarray(silence, format="fltp", layout="stereo")
                sound.sample_rate, sound.pts = 48000, i * 1024
                out.mux(audio.encode(sound))
            if audio_packets:
                out.mux(audio.encode(None))
        return path

    folder = tmp_path / "hls"
    folder.mkdir()
    publish_fragment(ts("a.ts", 96, audio_packets=0), folder, 0)  # no audio: waits
    assert not (folder / "init.mp4").exists() and (folder / ".segment_00000.m4s.init").is_file()
    assert publish_init(tmp_path) is None  # (a folder with neither)
    with pytest.raises(OutputError, match="segment 0 configures its decoders differently"):
        publish_fragment(ts("b.ts", 64, audio_packets=3), folder, 1)  # writes init.mp4
    assert (folder / "init.mp4").is_file()


def test_fmp4_hls_from_the_command_line_and_refused_for_files(clips, tmp_path):
    """``--fmp4`` (and a job's ``fmp4``) asks for fragmented MP4 for H.264 too; a file output
    cannot have it, and says so before any work."""
    from pydantic import ValidationError

    from carn_stream.server.jobs.params import JobParams

    out = tmp_path / "hls"
    made = cli("upscale", str(clips["bunny"]), str(out), "--scale", "2", "--precision", "fp32",
               "--segment-seconds", "1", "--fmp4")  # fmt: skip
    assert made.returncode == 0, made.stderr
    playlist = (out / "index.m3u8").read_text()
    assert '#EXT-X-MAP:URI="init.mp4"' in playlist and "segment_00001.m4s" in playlist
    assert b"avc1" in (out / "init.mp4").read_bytes()
    refused = cli("upscale", str(clips["bunny"]), str(tmp_path / "out.mp4"), "--scale", "2",
                  "--fmp4")  # fmt: skip
    assert refused.returncode == 1 and "--fmp4 is for HLS outputs" in refused.stderr
    assert not (tmp_path / "out.mp4").exists()
    assert JobParams(format="hls", fmp4=True).fmp4
    with pytest.raises(ValidationError, match="fmp4 is for HLS outputs"):
        JobParams(format="mp4", fmp4=True)


def test_a_segment_whose_header_differs_from_init_mp4_is_refused(tmp_path):
    """A folder has one init.mp4: a media segment encoded otherwise (here, another size) would
    be decoded with the wrong parameter sets, so it is refused and not published."""
    from carn_stream.pipeline.media.fragment import publish_fragment

    def ts(name: str, width: int) -> Path:
        frames = [np.full((64, width, 3), 40 * i, np.uint8) for i in range(3)]
        return write_clip(tmp_path / name, frames, codec="libx265", container_format="mpegts")

    folder = tmp_path / "hls"
    folder.mkdir()
    publish_fragment(ts("a.ts", 64), folder, 0)
    publish_fragment(ts("b.ts", 64), folder, 1)  # encoded the same way: accepted
    with pytest.raises(OutputError, match="configures its decoders differently"):
        publish_fragment(ts("c.ts", 96), folder, 2)
    assert sorted(p.name for p in folder.iterdir()) == [
        "init.mp4", "segment_00000.m4s", "segment_00001.m4s",
    ]  # fmt: skip


def test_subtitle_renditions_have_names_of_their_own_and_one_default(tmp_path):
    """Two untitled English streams, both flagged default (Matroska's default when unset):
    a master playlist's renditions need names of their own and at most one default; codec
    strings that are not known are left out rather than listed without the video."""
    from carn_stream.pipeline.media.hls import SubtitleMedia, Variant, master_playlist_text
    from carn_stream.pipeline.media.webvtt import text_subtitle_tracks

    path = tmp_path / "two.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for _ in range(2):
            subs = out.add_mux_stream("subrip")
            subs.metadata["language"] = "eng"
            subs.disposition = av.stream.Disposition.default
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    tracks = text_subtitle_tracks(path)
    # (untitled: named by their language, in itself)
    assert [(t.name, t.language, t.default) for t in tracks] == [("English", "eng", True),
                                                                 ("English (2)", "eng", False)]
    media = [SubtitleMedia(f"subtitles_{t.number}.m3u8", t.name, t.language, t.default)
             for t in tracks]  # fmt: skip
    text = master_playlist_text([Variant("index.m3u8", 1000, 64, 48, "")], media)
    assert 'NAME="English (2)",LANGUAGE="en",DEFAULT=NO' in text
    assert "#EXT-X-STREAM-INF:BANDWIDTH=1000,RESOLUTION=64x48,SUBTITLES=" in text


@pytest.mark.parametrize(
    "codec,data,text",
    [("mov_text", b"\x00\x05Hello\x00\x00", "Hello"),
     ("ass", b"0,0,Default,,0,0,0,,{\\i1}Two{\\i0}\\Nlines", "Two\nlines"),
     ("subrip", b"<b>Bold</b> move", "Bold move")],
)  # fmt: skip
def test_text_subtitles_convert_as_plain_text(codec, data, text):
    assert subtitle_text(codec, data) == text
    assert subtitle_text("mov_text", subtitle_payload("mov_text", text)) == text


# --------------------------------------------------------------------------- bit depth


def video_facts(path: Path) -> tuple[str, str, int, int, int, np.ndarray]:
    """(pix_fmt, profile, primaries, transfer, matrix, first frame's Y as stored)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frame = next(c.decode(video=0))
        dtype = np.uint8 if frame.format.name == "yuv420p" else np.dtype("<u2")
        plane = frame.planes[0]
        rows = np.frombuffer(plane, dtype).reshape(plane.height, -1)[:, : plane.width]
        return (frame.format.name, stream.codec_context.profile, int(frame.color_primaries),
                int(frame.color_trc), int(frame.colorspace), rows.astype(int))  # fmt: skip


@pytest.mark.parametrize(
    "clip,codec,profile,transfer",
    [("ten_pq", "h264", "High 10", 16), ("ten_hlg", "hevc", "Main 10", 18)],
)  # fmt: skip
def test_ten_bit_stays_ten_bit_with_its_colour(clips, worker, tmp_path, clip, codec, profile,
                                               transfer):  # fmt: skip
    out = make(clips[clip], tmp_path / "out.mkv", worker, codec=codec, crf=0)
    pix_fmt, got_profile, primaries, trc, matrix, y = video_facts(out)
    assert (pix_fmt, got_profile) == ("yuv420p10le", profile)
    assert (primaries, trc, matrix) == (9, transfer, 9)  # BT.2020, PQ or HLG, BT.2020 NCL
    # 10-bit limited-range codes ([64, 940], give or take the encoder: x264's CRF 0 is not
    # lossless at 10 bits; 63 was seen)
    assert y.min() >= 56 and y.max() <= 948 and y.max() > 255
    eight = make(clips["eight"], tmp_path / "eight.mkv", worker, codec=codec, crf=0)
    pix8, *_, y8 = video_facts(eight)
    assert pix8 == "yuv420p"  # 8-bit stays 8-bit
    # The same picture (the 8-bit clip came from the same RGB through BT.601): close in level.
    assert abs(y.mean() / 4 - y8.mean()) < 3


# --------------------------------------------------------------------------- HDR10


def hdr_at_keyframes(path: Path) -> list[tuple[float, object, int]]:
    """(time, HDR10 metadata, transfer) of each keyframe ``path`` (a file or a playlist) shows."""
    from carn_stream.pipeline.media.decode import static_hdr

    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), static_hdr(f), int(f.color_trc))
                for f in c.decode(video=0) if f.key_frame]  # fmt: skip


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_hdr10_metadata_is_written_by_every_segments_encoder(clips, worker, tmp_path, codec):
    """An HDR10 title's mastering display and light levels were dropped: its output was tagged
    PQ but carried no metadata, so a display tone-mapped it for a mastering display it never
    had. Now the plan reads them from the first frame and each segment's encoder writes them
    (SEI messages at every keyframe), whichever encoder makes that segment."""
    from carn_stream.pipeline.colour import StaticHdr

    hdr = StaticHdr(HDR10_MASTERING, HDR10_LIGHT_LEVEL)
    out = make(clips["hdr10"], tmp_path / "out.mkv", worker, codec=codec)
    keyframes = hdr_at_keyframes(out)
    assert [t for t, *_ in keyframes] == [0.0, 1.0]  # one per segment: two encoders
    assert {(meta, trc) for _, meta, trc in keyframes} == {(hdr, 16)}


def test_hdr10_plans_keep_the_titles_metadata_and_sdr_plans_none(clips, tmp_path):
    from carn_stream.pipeline.colour import StaticHdr
    from carn_stream.pipeline.media.segments import SegmentPlan, plan_segments

    plan = plan_segments(clips["hdr10"], 1.0)
    assert (plan.transfer, plan.hdr) == (16, StaticHdr(HDR10_MASTERING, HDR10_LIGHT_LEVEL))
    stored = SegmentPlan.from_dict(plan.to_dict())
    assert (stored.transfer, stored.hdr) == (16, plan.hdr)
    sdr = plan_segments(clips["bunny"], 1.0)
    assert (sdr.transfer, sdr.hdr) == (2, None)  # untagged, no metadata
    older = {k: v for k, v in sdr.to_dict().items() if k not in ("transfer", "hdr")}
    assert (SegmentPlan.from_dict(older).transfer, SegmentPlan.from_dict(older).hdr) == (2, None)
    # A mastering display outside CIE xy's [0, 1] (x = 1.2) is no metadata to write: left out,
    # the light levels kept.
    frames = decode_rgb(clips["bunny"], 2)
    params = ("log-level=error:master-display=G(60000,34500)B(7500,3000)R(34000,16000)"
              "WP(15635,16450)L(10000000,50):max-cll=1000,400")  # fmt: skip
    odd = write_clip(tmp_path / "odd.mp4", frames, codec="libx265", pix_fmt="yuv420p10le",
                     colorspace=9, primaries=9, transfer=16, options={"x265-params": params})
    assert plan_segments(odd, 1.0).hdr == StaticHdr(None, HDR10_LIGHT_LEVEL)
    for damaged in ({"mastering": [60000] * 10}, {"light_level": [1000]}):
        with pytest.raises(ValueError, match="out of range"):
            SegmentPlan.from_dict({**plan.to_dict(), "hdr": damaged})


def test_a_frame_with_side_data_pyav_does_not_know_is_planned(clips, tmp_path):
    """Reading a first frame's HDR10 metadata reads all its side data, and PyAV raises on a
    kind newer than its list (EXIF, from a camera's MJPEG): such an input must plan as
    before, without HDR10 metadata."""
    from carn_stream.pipeline.media.segments import plan_segments

    frames = [f[:48, :64] for f in decode_rgb(clips["bunny"], 3)]
    plan = plan_segments(write_exif_mjpeg(tmp_path / "camera.avi", frames), 1.0)
    assert (plan.frames, plan.hdr) == (3, None)


def hdr_payloads() -> tuple[bytes, bytes]:
    """The mastering display and light level payloads (SEI and MP4 boxes alike) of the HDR10
    clips: big-endian 16-bit chromaticities, 32-bit luminances, 16-bit light levels."""
    gx, gy, bx, by, rx, ry, wx, wy, high, low = HDR10_MASTERING
    mastering = np.array([gx, gy, bx, by, rx, ry, wx, wy], ">u2").tobytes() + np.array(
        [high, low], ">u4").tobytes()  # fmt: skip
    return mastering, np.array(HDR10_LIGHT_LEVEL, ">u2").tobytes()


def sample_entry_boxes(header: bytes, entry_type: bytes = b"hvc1") -> dict[bytes, bytes]:
    """The boxes of the (first) video sample entry in ``header``, by type: their payloads."""
    from carn_stream.pipeline.media.isobmff import boxes

    entry = header.index(entry_type) - 4  # the sample entry: its 78 bytes of fields, its boxes
    size = int.from_bytes(header[entry:entry + 4], "big")
    return {kind: header[at + head:end]
            for kind, at, end, head in boxes(header, entry + 8 + 78, entry + size)}  # fmt: skip


def hvcc_arrays(config: bytes) -> dict[int, list[bytes]]:
    """An hvcC's NAL unit arrays: NAL unit type -> its NAL units."""
    arrays, at = {}, 23
    for _ in range(config[22]):
        count = int.from_bytes(config[at + 1:at + 3], "big")
        nal_at, nals = at + 3, []
        for _ in range(count):
            length = int.from_bytes(config[nal_at:nal_at + 2], "big")
            nals.append(config[nal_at + 2:nal_at + 2 + length])
            nal_at += 2 + length
        arrays[config[at] & 0x3F] = nals
        at = nal_at
    return arrays


def assert_hdr10_header(header: bytes) -> None:
    """``header``'s HEVC sample entry carries the HDR10 clips' metadata: mdcv and clli boxes,
    and a prefix SEI with both messages in hvcC (beside the VPS, SPS and PPS)."""
    from carn_stream.pipeline.media.hdr_boxes import LIGHT_LEVEL, MASTERING_DISPLAY

    mastering, light = hdr_payloads()
    inner = sample_entry_boxes(header)
    assert (inner[b"mdcv"], inner[b"clli"]) == (mastering, light)
    arrays = hvcc_arrays(inner[b"hvcC"])
    assert sorted(arrays) == [32, 33, 34, 39]  # VPS, SPS, PPS and the prefix SEI
    (sei,) = arrays[39]  # one NAL unit: its header, then both messages (type, size, payload)
    messages = bytes([MASTERING_DISPLAY, 24]) + mastering + bytes([LIGHT_LEVEL, 4]) + light
    assert sei.replace(b"\0\0\3", b"\0\0") == b"\x4e\x01" + messages + b"\x80"
    assert b"\0\0\3" in sei  # (emulation prevention where the payload has 00 00 00)


def test_an_hdr10_hls_folder_has_its_metadata_in_init_mp4_and_says_pq(clips, worker, tmp_path):
    """Apple's players take HDR10's static metadata from the HEVC decoder configuration, and
    choose a variant by its VIDEO-RANGE: init.mp4 had neither the metadata nor the master
    playlist the range. Now hvcC holds a prefix SEI with both messages, the sample entry
    mdcv and clli boxes, and every variant says PQ."""
    from carn_stream.pipeline.colour import StaticHdr
    from carn_stream.pipeline.media.fragment import check_tracks
    from carn_stream.pipeline.media.hdr_boxes import with_hdr

    out = make(clips["hdr10"], tmp_path / "hls", worker, codec="hevc")
    master = (out / "master.m3u8").read_text()
    assert re.search(r"#EXT-X-STREAM-INF:.*,VIDEO-RANGE=PQ\n", master), master
    init = (out / "init.mp4").read_bytes()
    assert_hdr10_header(init)
    # HDR10 metadata configures no decoder: a header without it is not refused against one
    # with it (the header check compares decoder configurations).
    check_tracks(init, with_hdr(init, {}), "a segment without the SEI")
    # Played through the playlist, each segment's keyframe has the metadata and PQ.
    hdr = StaticHdr(HDR10_MASTERING, HDR10_LIGHT_LEVEL)
    assert [(m, t) for _, m, t in hdr_at_keyframes(out / "index.m3u8")] == [(hdr, 16)] * 2
    # An SDR folder says no range and has no HDR boxes.
    sdr = make(clips["bunny"], tmp_path / "sdr", worker, codec="hevc")
    assert "VIDEO-RANGE" not in (sdr / "master.m3u8").read_text()
    sdr_init = (sdr / "init.mp4").read_bytes()
    assert b"mdcv" not in sdr_init and b"clli" not in sdr_init


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_an_hdr10_mp4_or_mov_file_has_its_metadata_in_its_header(clips, worker, tmp_path,
                                                                 suffix):  # fmt: skip
    """The joined file had the metadata in its stream only (SEI at each keyframe); a player
    that reads the header first (Apple's) found none."""
    out = make(clips["hdr10"], tmp_path / f"out{suffix}", worker, codec="hevc")
    data = out.read_bytes()
    moov = data.index(b"moov") - 4
    assert moov < data.index(b"mdat") - 4  # still moov first (faststart)
    assert_hdr10_header(data[moov:moov + int.from_bytes(data[moov:moov + 4], "big")])
    with av.open(str(out)) as c:
        times = [f.pts * f.time_base for f in c.decode(video=0)]
    assert times == [Fraction(k, 25) for k in range(50)]  # every frame, where it was


@pytest.mark.parametrize("faststart", [True, False])
def test_hdr10_metadata_added_to_a_file_header_moves_no_sample(clips, tmp_path, faststart):
    """The moov grows: with it first, everything after it moves and every chunk offset must
    follow; with it last, nothing moves. The packets read back the same, byte for byte."""
    from carn_stream.pipeline.colour import StaticHdr
    from carn_stream.pipeline.media.hdr_boxes import add_to_file

    frames = decode_rgb(clips["bunny"], 30)
    original = write_clip(tmp_path / "a.mp4", frames, codec="libx265", audio_from=clips["bunny"],
                          options={"x265-params": "log-level=error:keyint=10"})  # fmt: skip
    if faststart:  # the same packets, the moov moved first
        moved = tmp_path / "fast.mp4"
        with (av.open(str(original)) as src,
              av.open(str(moved), "w", options={"movflags": "+faststart"}) as out):  # fmt: skip
            streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
            for packet in src.demux():
                if packet.dts is not None:
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
        original = moved
    data = original.read_bytes()
    assert (data.index(b"moov") < data.index(b"mdat")) == faststart
    copy = tmp_path / "b.mp4"
    copy.write_bytes(data)
    assert add_to_file(copy, StaticHdr(HDR10_MASTERING, HDR10_LIGHT_LEVEL))
    assert copy.stat().st_size > original.stat().st_size

    def packets(path: Path) -> list[tuple[int, int | None, int | None, bytes]]:
        with av.open(str(path)) as c:
            return [(p.stream.index, p.pts, p.dts, bytes(p)) for p in c.demux() if p.size]

    assert packets(copy) == packets(original) and len(packets(original)) > 30
    entry = sample_entry_boxes(copy.read_bytes(), b"hev1")
    assert entry[b"clli"] == hdr_payloads()[1]
    assert len(hvcc_arrays(entry[b"hvcC"])[39]) == 2  # x265's own SEI stays, beside ours


def test_hdr10_in_hvcc_replaces_only_hdr10_messages():
    """An hvcC's other NAL units and SEI messages stay as they were, in their order; HDR10
    messages, alone in a NAL unit or beside others, give way to the title's."""
    from carn_stream.pipeline.colour import StaticHdr
    from carn_stream.pipeline.media.hdr_boxes import (
        LIGHT_LEVEL,
        MASTERING_DISPLAY,
        sei_payloads,
        with_hdr,
    )
    from carn_stream.pipeline.media.isobmff import box

    def sei(*messages: tuple[int, bytes]) -> bytes:
        return b"\x4e\x01" + b"".join(bytes([k, len(p)]) + p for k, p in messages) + b"\x80"

    user = (5, b"u" * 20)
    old = (MASTERING_DISPLAY, bytes(range(1, 25)))
    arrays = [(0xA0, [b"\x40\x01vps"]), (0xA1, [b"\x42\x01sps-a"]), (0xA1, [b"\x42\x01sps-b"]),
              (0x27, [sei(user, old), sei(old)]), (0x28, [b"\x50\x01suffix"])]  # fmt: skip
    config = bytes(22) + bytes([len(arrays)]) + b"".join(
        bytes([kind]) + len(nals).to_bytes(2, "big")
        + b"".join(len(n).to_bytes(2, "big") + n for n in nals) for kind, nals in arrays)
    entry = box(b"hvc1", bytes(78) + box(b"hvcC", config))
    stsd = box(b"stsd", bytes(4) + (1).to_bytes(4, "big") + entry)
    moov = box(b"moov", box(b"trak", box(b"mdia", box(b"minf", box(b"stbl", stsd)))))
    hdr = StaticHdr(HDR10_MASTERING, HDR10_LIGHT_LEVEL)
    got = hvcc_arrays(sample_entry_boxes(with_hdr(moov, sei_payloads(hdr)))[b"hvcC"])
    assert list(got) == [32, 33, 39, 40]  # (by type: the two SPS arrays below)
    ours = sei((MASTERING_DISPLAY, hdr_payloads()[0]), (LIGHT_LEVEL, hdr_payloads()[1]))
    assert [n.replace(b"\0\0\3", b"\0\0") for n in got[39]] == [sei(user), ours]
    rebuilt = with_hdr(moov, sei_payloads(hdr))
    assert b"sps-a" in rebuilt and b"sps-b" in rebuilt and b"suffix" in rebuilt
    assert with_hdr(rebuilt, {}).count(b"\x4e\x01") == 1  # removed again: the user data stays


def test_an_hevc_file_whose_segments_differ_in_parameter_sets_is_hev1(clips, worker, tmp_path,
                                                                      monkeypatch, caplog):
    """hvc1 keeps one set of parameter sets (the muxer takes them out of the stream): a
    segment encoded otherwise (another x265 build or settings) would not decode. Such a file
    is made as hev1, every segment with its own."""
    from carn_stream.pipeline.media import encode

    made = encode.VideoSink.__init__

    def otherwise(self, target, *args, **kwargs) -> None:
        made(self, target, *args, **kwargs)
        if target.name == "segment_00001.ts":  # another PPS: no wavefront rows
            self.codec_options["x265-params"] += ":no-wpp=1"

    monkeypatch.setattr(encode.VideoSink, "__init__", otherwise)
    out = make(clips["bunny"], tmp_path / "out.mp4", worker, codec="hevc")
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hev1"
        assert len(list(c.decode(video=0))) == 50
    assert "segment 1 has other parameter sets; written as hev1" in caplog.text


def test_the_command_line_says_an_hdr_titles_range_and_metadata(clips, tmp_path):
    run = cli("upscale", str(clips["hdr10"]), str(tmp_path / "out.mp4"), "--scale", "2",
              "--codec", "hevc", "--precision", "fp32", "--segment-seconds", "1")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "50 frames in 2 segments, PQ with HDR10 metadata kept (" in run.stderr, run.stderr


def test_a_master_playlist_says_every_variants_range_once_one_is_hdr():
    from carn_stream.pipeline.media.hls import Variant, master_playlist_text

    sdr = Variant("sdr/index.m3u8", 1000, 64, 48, "")
    hlg = Variant("hlg/index.m3u8", 2000, 128, 96, "", video_range="HLG")
    both = master_playlist_text([hlg, sdr])
    assert re.findall(r"VIDEO-RANGE=(\w+)\n(\S+)", both) == [("HLG", "hlg/index.m3u8"),
                                                             ("SDR", "sdr/index.m3u8")]
    assert "VIDEO-RANGE" not in master_playlist_text([sdr])


# --------------------------------------------------------------------------- folders


@pytest.mark.slow
def test_a_folder_of_videos_at_once_skips_finished_outputs_on_rerun(clips, data_dir, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    frames = [f[:48, :64] for f in decode_rgb(data_dir / "video" / "carphone_pristine.mp4", 6)]
    write_clip(inputs / "a.mp4", frames)
    write_clip(inputs / "b.mkv", frames[:4], codec="ffv1", pix_fmt="yuv420p")
    (inputs / "broken.mov").write_text("not a video")
    (inputs / "notes.txt").write_text("not a video suffix: ignored")
    args = ("upscale", str(inputs), str(outputs), "--scale", "2", "--precision", "fp32")
    first = cli(*args)
    assert first.returncode == 1, first.stderr  # one input failed; the others were made
    assert sorted(p.name for p in outputs.iterdir()) == ["a.mp4", "b.mkv"]  # their containers
    assert len(facts(outputs / "a.mp4").pts) == 6 and len(facts(outputs / "b.mkv").pts) == 4
    assert "upscale x2 2 files" in first.stderr and "10/10" in first.stderr  # one overall line
    rows = first.stdout.strip().splitlines()
    assert rows[0].split() == ["file", "frames", "seconds", "fps", "result"]
    table = {row.split()[0]: row.split()[1:] for row in rows[1:]}
    assert table["a.mp4"][0] == "6" and table["a.mp4"][3] == "done"
    assert table["b.mkv"][0] == "4" and table["b.mkv"][3] == "done"
    assert table["broken.mov"][3] == "failed:" and "not a video file" in rows[3]
    stamps = {p.name: p.stat().st_mtime_ns for p in outputs.iterdir()}
    again = cli(*args)
    assert again.returncode == 1  # the broken input still fails
    rows = again.stdout.strip().splitlines()
    assert [row.split()[-2:] for row in rows[1:3]] == [["skipped", "(exists)"]] * 2
    assert stamps == {p.name: p.stat().st_mtime_ns for p in outputs.iterdir()}


# --------------------------------------------------------------------------- the service


@pytest.mark.slow
def test_a_job_serves_its_own_container_to_get_and_head(clips, tmp_path):
    from tests.service import ServerProcess, media_server

    with media_server(clips["rich"].parent) as base:
        server = ServerProcess(tmp_path / "data").start()
        try:
            job = server.call("POST", "/jobs", {"url": f"{base}/rich.mkv", "format": "mkv"})
            assert job.status == 201, job.body
            done = server.wait_job(job.json()["id"], ("succeeded", "failed"))
            assert done["state"] == "succeeded", done["error"]
            url = done["links"]["mkv"]
            assert url == f"/jobs/{done['id']}/output.mkv"
            head = server.call("HEAD", url)
            assert head.status == 200 and head.body == b""
            assert head.headers["content-type"] == "video/x-matroska"
            whole = server.call("GET", url)
            assert int(head.headers["content-length"]) == len(whole.body) > 0
            assert server.call("GET", f"/jobs/{done['id']}/output.mp4").status == 404
            assert server.call("HEAD", f"/jobs/{done['id']}/output.mp4").status == 404
        finally:
            server.stop()
    (tmp_path / "out.mkv").write_bytes(whole.body)
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.format.name == "matroska,webm" and c.metadata["title"] == "A rich test clip"
        assert len(c.streams.subtitles) == 1 and len(c.streams.attachments) == 1


def test_webvtt_cues_are_plain_text_timed_from_the_first_segment(tmp_path):
    """Cue text that WebVTT reads as markup (``<``, ``&``, an arrow, a blank line: the end of a
    cue) is escaped; a cue before the first segment's start is left out; the clock map names
    the segments' MPEG-TS time of that start (the plan's origin plus the segment offset)."""
    from carn_stream.pipeline.media.webvtt import MPEG_TS_CLOCK, Clock, Cue, webvtt_lines

    clock = Clock(zero=Fraction(3, 2), mpeg_ts=round((Fraction(3, 2) + 70) * MPEG_TS_CLOCK))
    found = [Cue(Fraction(-2), Fraction(-1), "before the start"),
             Cue(Fraction(1, 4), Fraction(2), "a < b && c --> d\n\nsecond line"),
             Cue(Fraction(3661), Fraction(3662), "an hour on")]  # fmt: skip
    assert "\n".join(webvtt_lines(found, clock)) == (
        "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:6435000,LOCAL:00:00:00.000\n"
        "\n00:00:00.250 --> 00:00:02.000\na &lt; b &amp;&amp; c --&gt; d\nsecond line\n"
        "\n01:01:01.000 --> 01:01:02.000\nan hour on"
    )


def test_a_stored_copy_keeps_a_full_range_sources_levels_and_an_hdr_sources_tags(
    data_dir, tmp_path
):
    """A full-range source's codes went into the copy unconverted, tagged limited (crushed
    blacks, clipped whites in every rendition made from it); a PQ source's copy was tagged
    SDR (its primaries and transfer dropped)."""
    from carn_stream.pipeline.media.delivery import encode_copy
    from tests.media import decode_rgb, downscale_frames

    frames = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 6), (160, 96))
    source = tmp_path / "full.mkv"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        ctx = stream.codec_context
        ctx.color_range, ctx.colorspace = 2, 1  # full range, BT.709
        ctx.color_primaries, ctx.color_trc = 9, 16  # BT.2020, PQ (as tags)
        ctx.options = {"crf": "8"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range="JPEG")  # fmt: skip
            frame.color_range, frame.pts = 2, i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    copy = encode_copy(source, tmp_path / "copy.mp4", scale=2, crf=8)
    with av.open(str(copy.path)) as container:
        first = next(container.decode(video=0))
        ctx = container.streams.video[0].codec_context
        tags = (int(ctx.color_range), int(ctx.color_primaries), int(ctx.color_trc))
        shown = first.to_ndarray(format="rgb24").astype(float)
    assert tags == (1, 9, 16)  # limited, as its levels are; the source's primaries, transfer
    small = downscale_frames([frames[0]], (80, 48))[0].astype(float)
    assert abs(shown.mean() - small.mean()) < 2.5, (shown.mean(), small.mean())  # was 7 off


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_an_untagged_sources_output_says_its_colour_in_the_container(worker, tmp_path, suffix):
    """An untagged source gave an MP4 or MOV without a ``colr`` box (the muxer writes one only
    with matrix, primaries and transfer all set): its guessed BT.601 matrix was in the H.264
    stream alone, and a player guessing by the upscaled size (BT.709) shifted its colours."""
    frames = [np.full((48, 64, 3), (40 + 8 * i, 120, 200), np.uint8) for i in range(10)]
    source = write_clip(tmp_path / "untagged.mp4", frames, options={"preset": "ultrafast"})
    with av.open(str(source)) as container:
        ctx = container.streams.video[0].codec_context
        assert (int(ctx.colorspace), int(ctx.color_primaries)) == (2, 2)  # (untagged)
    output = make(source, tmp_path / f"out{suffix}", worker)
    with av.open(str(output)) as container:
        ctx = container.streams.video[0].codec_context
        tags = (int(ctx.colorspace), int(ctx.color_primaries), int(ctx.color_trc))
    assert tags == (6, 6, 6)  # BT.601 (SMPTE 170M) throughout, as the matrix was guessed
    assert b"colr" in output.read_bytes()[:200_000]
