"""The service end to end: a real ``carn-stream serve`` and a real media server, on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from carn_stream.model.metrics import psnr
from carn_stream.pipeline.media.images import read_rgb
from carn_stream.server.inputs.fetch import FetchError, FetchPolicy, check_address, validate_url
from tests.helpers import (
    HLS_JS_MIRRORED,
    chromium_page,
    launch_chromium,
    mirror_hls_js,
    official_weights_path,
    play_past_a_signed_link,
    player_subtitles,
    pressed_play,
    serve_directory,
)
from tests.media import (
    decode_rgb,
    decode_y,
    downscale_frames,
    facts,
    raw_stream,
    write_clip,
    write_hls,
)
from tests.service import ServerProcess, free_port, media_server, request, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def media(data_dir, tmp_path_factory):
    """A file server on 127.0.0.1 with small real clips (and one non-video)."""
    root = tmp_path_factory.mktemp("media")
    video = data_dir / "video"
    frames = downscale_frames(decode_rgb(video / "bigbuckbunny.mp4", 125), (160, 90))
    gop = {"crf": "12", "preset": "veryfast", "g": "25"}
    # A keyframe each second: two segments of 1 s (the tests' segment duration) ...
    write_clip(root / "bunny.mp4", frames[:50], audio_from=video / "bigbuckbunny.mp4",
               audio_seconds=2.0, options=gop)  # fmt: skip
    # ... and five, more than the executor works on at once.
    write_clip(root / "long.mp4", frames, audio_from=video / "bigbuckbunny.mp4",
               audio_seconds=5.0, options=gop)  # fmt: skip
    carphone = decode_rgb(video / "carphone_pristine.mp4", 90)
    write_clip(root / "carphone.mp4", [f[:72, :88] for f in carphone], rate=Fraction(30000, 1001))
    # Odd sides (35x27, lossless 4:4:4): x3 is 105x81, encoded as 104x80 (4:2:0 needs even).
    write_clip(root / "odd.mkv", [f[:27, :35] for f in carphone[:8]], codec="ffv1",
               pix_fmt="yuv444p")  # fmt: skip
    raw_stream(root / "carphone.mp4", root / "carphone.h264")  # as a camera writes it
    (root / "notes.mp4").write_text("this is not a video")
    with media_server(root) as base:
        yield base, root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, weights_path) -> Path:
    """A models folder holding ``bright.pth``: CARN-M whose output is 0.1 brighter."""
    import torch

    from carn_stream.model import carn_m, load_weights

    folder = tmp_path_factory.mktemp("models")
    model = carn_m()
    load_weights(model, weights_path)
    state = model.state_dict()
    state["exit.bias"] = state["exit.bias"] + 0.1
    torch.save(state, folder / "bright.pth")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir, media):
    proc = ServerProcess(tmp_path_factory.mktemp("service") / "data",
                         CARN_STREAM_HLS_JS_URL=f"{media[0]}/{HLS_JS_MIRRORED}",
                         CARN_STREAM_ALLOW_DOWNLOAD="1",  # (from there only)
                         CARN_STREAM_MAX_CONCURRENT_JOBS="3",
                         CARN_STREAM_MODELS_DIR=str(models_dir),
                         CARN_STREAM_MAX_INPUT_BYTES=str(20 * 1024**2))  # fmt: skip
    proc.start()
    yield proc
    proc.stop()


def submit(server: ServerProcess, url: str, **fields) -> dict:
    response = server.call("POST", "/jobs", {"url": url, **fields})
    assert response.status == 201, response.body
    return response.json()


# --------------------------------------------------------------------------- happy paths


def test_health_and_readiness(server):
    assert server.call("GET", "/healthz").json() == {"status": "ok"}
    ready = server.call("GET", "/readyz").json()
    assert ready.pop("precision") == "fp32"  # the mode the tests' servers are given
    engines = ready.pop("engines")
    assert list(engines.values()) == [1] and next(iter(engines)).startswith("process:")
    # The sizes upscaled so far by this server (tests/test_speed.py and test_vod.py check them).
    speed = ready.pop("speed")
    assert isinstance(speed, list)
    assert all({"where", "scale", "input", "fps", "keeps_up", "text"} <= set(size)
               for size in speed)  # fmt: skip
    assert ready == {"ready": True, "model_loaded": True, "store_writable": True,
                     "executor": "process", "executor_ready": True, "job_runner": True,
                     "data_dir_writable": True,
                     "weights": official_weights_path().name}  # fmt: skip
    assert server.call("GET", "/openapi.json").json()["paths"]["/jobs"]


def test_head_is_answered_wherever_get_is(server):
    """Uptime checkers and some players ask with HEAD first: it was 405 on the pages, health,
    metrics and the API's GET routes."""
    for path in ("/", "/live", "/watch", "/healthz", "/readyz", "/jobs", "/docs",
                 "/static/app.js"):  # fmt: skip
        got, head = server.call("GET", path), server.call("HEAD", path)
        assert head.status == got.status == 200, (path, head.status)
        assert head.body == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if path in ("/", "/live", "/watch", "/docs", "/static/app.js"):  # the same bytes
            assert head.headers["content-length"] == got.headers["content-length"], path
    metrics = server.call("HEAD", "/metrics")
    assert metrics.status == 200 and metrics.body == b""
    assert server.call("HEAD", "/webrtc/offer").status == 405  # POST only: still not allowed
    assert server.call("HEAD", "/no/such/page").status == 404
    assert server.call("HEAD", f"/jobs/{'0' * 32}").status == 404
    metrics = server.call("GET", "/metrics").body.decode()
    assert 'carn_stream_http_requests_total{method="HEAD",route="/jobs",status="2xx"}' in metrics


def test_every_page_names_an_icon_that_is_served(server):
    """Browsers asked for /favicon.ico (404, a console error on every page load)."""
    for path in ("/", "/live", "/watch"):
        page = server.call("GET", path).body.decode()
        icon = re.search(r'<link rel="icon" href="([^"]+)"', page)
        assert icon, path
        served = server.call("GET", icon[1])
        assert served.status == 200 and served.headers["content-type"].startswith("image/svg")


def test_the_api_schema_builds_without_warnings():
    import warnings

    from carn_stream.server.app import create_app
    from carn_stream.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. two operations under one id
        schema = create_app(Settings(), lambda: None).openapi()
    assert set(schema["paths"]["/jobs/{job_id}/output.{ext}"]) == {"get"}


def test_hls_job_plays_before_it_finishes_and_keeps_everything(server, media, tmp_path):
    base, _ = media
    job = submit(server, f"{base}/long.mp4", scale=2, output="hls")
    assert job["state"] == "queued" and job["links"]["playlist"].endswith("/hls/index.m3u8")
    playlist_url = job["links"]["playlist"]

    def early_playlist():
        state = server.job(job["id"])["state"]
        response = server.call("GET", playlist_url)
        listed = response.status == 200 and b"segment_" in response.body
        return listed and state == "running" and response

    early = wait_for(early_playlist, 60, "a playlist listing a segment while the job runs")
    assert b"#EXT-X-ENDLIST" not in early.body  # still growing
    assert early.headers["content-type"] == "application/vnd.apple.mpegurl"
    # The page plays what exists so far as a finished playlist, segments under hls/.
    preview = server.call("GET", f"/jobs/{job['id']}/preview.m3u8")
    assert preview.status == 200 and preview.headers["cache-control"] == "no-store"
    text = preview.body.decode()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
    uris = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert uris and all(u.startswith("hls/segment_") for u in uris)

    done = server.wait_job(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["error"]
    assert done["progress"]["frames_done"] == done["progress"]["frames_total"] == 125
    playlist = server.call("GET", playlist_url).body.decode()
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    joined = tmp_path / "all.ts"
    with open(joined, "wb") as out:
        for name in segments:
            response = server.call("GET", f"/jobs/{job['id']}/hls/{name}")
            assert response.status == 200 and response.headers["content-type"] == "video/mp2t"
            out.write(response.body)
    with av.open(str(joined)) as c:
        assert c.streams.audio, "audio kept"
        decoded = list(c.decode(video=0))
    frames = len(decoded)
    assert (decoded[0].width, decoded[0].height) == (320, 180) and frames == 125
    # An HLS job has no MP4: the 404 says what the job is and where its output is.
    wrong = server.call("GET", f"/jobs/{job['id']}/output.mp4")
    assert wrong.status == 404
    assert wrong.json()["detail"].endswith(f"it is a hls job; its output is {playlist_url}")


def test_an_hevc_hls_job_serves_fragmented_mp4(server, media, tmp_path):
    """An HEVC job's HLS folder is init.mp4 and .m4s segments (the form Apple's players take
    HEVC in), each served with its media type; the preview names init.mp4 under hls/."""
    base, _ = media
    job = submit(server, f"{base}/bunny.mp4", scale=2, output="hls", codec="hevc")
    done = server.wait_job(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["error"]
    folder = f"/jobs/{job['id']}/hls"
    playlist = server.call("GET", done["links"]["playlist"]).body.decode()
    assert '#EXT-X-MAP:URI="init.mp4"' in playlist
    preview = server.call("GET", f"/jobs/{job['id']}/preview.m3u8").body.decode()
    assert '#EXT-X-MAP:URI="hls/init.mp4"' in preview
    init = server.call("GET", f"{folder}/init.mp4")
    assert init.status == 200 and init.headers["content-type"] == "video/mp4"
    data = init.body
    names = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    assert names == ["segment_00000.m4s", "segment_00001.m4s"]
    for name in names:
        response = server.call("GET", f"{folder}/{name}")
        assert response.status == 200
        assert response.headers["content-type"] == "video/iso.segment"
        data += response.body
    joined = tmp_path / "joined.mp4"
    joined.write_bytes(data)
    with av.open(str(joined)) as c:
        assert c.streams.audio, "audio kept"
        frames = list(c.decode(video=0))
    assert len(frames) == 50 and (frames[0].width, frames[0].height) == (320, 180)
    assert server.call("GET", f"{folder}/segment_00000.ts").status == 404  # no MPEG-TS form
    # Frames kept to compare with bicubic: read from the media segments after init.mp4
    compared = server.call("GET", f"/jobs/{job['id']}/compare").json()
    assert len(compared["frames"]) == 4, compared


def test_an_odd_sized_input_at_x3_is_encoded_at_even_sides(server, media, tmp_path):
    base, _ = media
    job = submit(server, f"{base}/odd.mkv", scale=3, format="mp4")
    done = server.wait_job(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["error"]
    out = tmp_path / "odd.mp4"
    out.write_bytes(server.call("GET", done["links"]["mp4"]).body)
    got = facts(out)
    assert (got.width, got.height) == (104, 80) and len(got.pts) == 8


def test_a_raw_h264_stream_is_upscaled_at_the_rate_asked_for(server, media, tmp_path):
    """A raw stream (.h264: no container, no timestamps, as cameras write) failed its job
    ("packets without timestamps"). It is timed at ``input_fps``: every picture, in order."""
    base, root = media
    job = submit(server, f"{base}/carphone.h264", scale=2, format="mp4", input_fps=25)
    assert job["input_fps"] == 25
    done = server.wait_job(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["error"]
    out = tmp_path / "out.mp4"
    out.write_bytes(server.call("GET", done["links"]["mp4"]).body)
    got = facts(out)
    assert (got.width, got.height) == (176, 144)
    assert [p * got.time_base for p in got.pts] == [Fraction(n, 25) for n in range(90)]
    made = downscale_frames(decode_rgb(out), (88, 72))
    src = decode_rgb(root / "carphone.mp4")
    assert min(psnr(a, b) for a, b in zip(made, src, strict=True)) > 30  # each at its place
    for fps in (0, -1, 5000, "fast"):
        response = server.call("POST", "/jobs", {"url": f"{base}/carphone.h264", "input_fps": fps})
        assert response.status == 422 and "input_fps" in response.body.decode(), fps


def test_a_job_deinterlaces_an_interlaced_input_unless_asked_not_to(
    server, media, data_dir, tmp_path
):
    """Each job records whether it deinterlaces (the service's setting when the request does
    not say), so that a restart with another setting cannot mix its segments; false upscales
    the frames as coded, combed."""
    from tests.test_interlaced import FRAMES, comb, luma, panned, woven, write_interlaced

    base, root = media
    write_interlaced(root / "interlaced.ts", woven(panned(data_dir)), "libx264")
    combs = {}
    for asked in (None, False):
        fields = {} if asked is None else {"deinterlace": asked}
        job = submit(server, f"{base}/interlaced.ts", scale=2, format="mp4", **fields)
        assert job["deinterlace"] is (asked is None)  # the service's default: on
        done = server.wait_job(job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        out = tmp_path / f"{asked}.mp4"
        out.write_bytes(server.call("GET", done["links"]["mp4"]).body)
        frames = decode_rgb(out)
        assert len(frames) == FRAMES
        combs[asked] = np.mean([comb(luma(f)) for f in frames])
    assert combs[None] < 0.6 * combs[False], combs


@pytest.mark.slow
def test_a_finished_hls_job_has_a_master_playlist_with_the_inputs_subtitles(
    server, media, data_dir, hls_js
):
    """Subtitles were dropped from HLS jobs: a finished one links its master playlist, which
    names the input's text subtitles as a WebVTT subtitle rendition served beside the
    segments (``text/vtt``), and its two audio streams as audio renditions; no other names
    are served. The jobs page shows the subtitles and offers the audio renditions (Chromium's
    own player does neither): a choice plays the master playlist with that one as its
    default (``?audio=``); through hls.js (a browser without HLS of its own), hls.js's audio
    track of that rendition, switched in place."""
    from tests.media import with_second_audio, write_rich_mkv

    base, root = media
    video = data_dir / "video" / "bigbuckbunny.mp4"
    frames = downscale_frames(decode_rgb(video, 25), (96, 54))
    rich = write_rich_mkv(root / "one.mkv", frames, audio_from=video, audio_seconds=1.0)
    with_second_audio(rich, root / "rich.mkv", 1.0)
    job = submit(server, f"{base}/rich.mkv", scale=2, format="hls")
    assert "master" not in job["links"]  # written when the job ends
    done = server.wait_job(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["error"]
    master = server.call("GET", done["links"]["master"])
    assert master.status == 200
    assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert 'URI="subtitles_0.m3u8"' in master.body.decode()
    folder = f"/jobs/{job['id']}/hls"
    assert server.call("GET", f"{folder}/subtitles_0.m3u8").status == 200
    vtt = server.call("GET", f"{folder}/subtitles_0.vtt")
    assert vtt.status == 200 and vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.body.decode().split("\n\n")[1] == "00:00:00.100 --> 00:00:00.500\nHello there"
    assert 'NAME="Commentary",LANGUAGE="en"' in master.body.decode()
    for name, kind in (("audio_1.m3u8", "application/vnd.apple.mpegurl"),
                       ("audio_1_segment_00000.ts", "video/mp2t")):  # fmt: skip
        served = server.call("GET", f"{folder}/{name}")
        assert served.status == 200 and served.headers["content-type"] == kind, name
    names = ("subtitles_1.vtt", "subtitles_0.srt", "input.mkv", "..%2Finput.mkv",
             "audio_2.m3u8", "audio_1_segment_0.ts", "audio_1.ts")  # fmt: skip
    for name in names:
        assert server.call("GET", f"{folder}/{name}").status == 404, name
    chosen = server.call("GET", f"{folder}/master.m3u8?audio=1").body.decode()
    assert re.findall(r'NAME="([^"]+)".*?DEFAULT=(\w+),AUTOSELECT=(\w+)', chosen) == [
        ("Français", "NO", "YES"), ("Commentary", "YES", "YES"), ("English", "YES", "YES")]
    refused = server.call("GET", f"{folder}/master.m3u8?audio=2")
    assert refused.status == 422 and refused.json()["detail"] == "the job has no audio rendition 2"
    player = "document.getElementById('player')"
    with pressed_play(f"http://127.0.0.1:{server.port}/", job["id"], "Play") as page:
        cues, label = player_subtitles(page, 2)
        page.wait_for_selector("#audio-choice:not([hidden])")
        offered = page.evaluate("Array.from(document.querySelectorAll('#audio option'))"
                                ".map(o => [o.value, o.textContent, o.selected])")
        page.select_option("#audio", "1")
        page.wait_for_function(f"{player}.src.includes('master.m3u8?audio=1') && "
                               f"{player}.currentTime > 0.5", timeout=60_000)  # fmt: skip
        error = page.evaluate(f"{player}.error")
    assert cues == [[0.1, "Hello there"], [0.5, "Second cue"]]
    assert label == ["English", "en", "showing"]
    assert offered == [["0", "Français (fr)", True], ["1", "Commentary (en)", False]]
    assert error is None
    # Through hls.js: the first choice plays the master playlist (the job played its
    # index.m3u8, which has no audio group); a choice after that switches hls.js's track.
    with pressed_play(f"http://127.0.0.1:{server.port}/", job["id"], "Play", False) as page:
        page.wait_for_function(f"{player}.currentTime > 0", timeout=60_000)
        page.select_option("#audio", "1")
        page.wait_for_function(f"{player}.hls && {player}.hls.audioTracks.length == 2 && "
                               f"{player}.dataset.source.endsWith('?audio=1')",
                               timeout=60_000)  # fmt: skip
        page.evaluate(f"{player}.pause(); {player}.currentTime = 0.2")
        asked: list[str] = []
        page.on("request", lambda request: asked.append(urllib.parse.urlsplit(request.url).path))
        first = "/audio_0_segment_00000.ts"
        with page.expect_request(lambda r: urllib.parse.urlsplit(r.url).path.endswith(first),
                                 timeout=60_000):  # fmt: skip
            page.select_option("#audio", "0")
        page.wait_for_function(f"{player}.hls.audioTracks[{player}.hls.audioTrack].url"
                               ".includes('/audio_0.m3u8')", timeout=60_000)  # fmt: skip
        state = page.evaluate(f"[{player}.error, {player}.hlsFailure, {player}.dataset.source]")
    assert not any(p.endswith("master.m3u8") for p in asked), asked  # in place
    assert state[:2] == [None, None] and state[2].endswith("master.m3u8?audio=0"), state


def test_a_job_from_an_hls_master_playlist_upscales_its_best_variant_with_its_audio(
    server, media, tmp_path
):
    """A video URL is often an HLS playlist: the job fetches the variant with the most pixels
    and its audio renditions, and upscales them as one input (tests/test_hls_input.py has the
    forms and refusals)."""
    base, root = media
    write_hls(root / "bunny.mp4", root / "bunny_hls", renditions=True)
    (root / "bunny_master.m3u8").write_text(
        "#EXTM3U\n"
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="English",LANGUAGE="eng",DEFAULT=YES,'
        'URI="bunny_hls/audio0.m3u8"\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=1000,RESOLUTION=160x90,AUDIO="a"\nbunny_hls/video.m3u8\n'
    )  # fmt: skip
    job = submit(server, f"{base}/bunny_master.m3u8", output="mp4")
    done = server.wait_job(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["error"]  # was: not a video file FFmpeg can read
    (tmp_path / "out.mp4").write_bytes(server.call("GET", done["links"]["mp4"]).body)
    got, src = facts(tmp_path / "out.mp4"), facts(root / "bunny.mp4")
    assert (got.width, got.height) == (320, 180)
    seconds = [round(float(p * got.time_base), 3) for p in got.pts]
    assert seconds == [round(float(p * src.time_base), 3) for p in src.pts]  # every frame
    assert got.audio_packets == src.audio_packets  # the audio, bit for bit
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert container.streams.audio[0].metadata.get("language") == "eng"


def test_mp4_job_serves_range_requests(server, media, tmp_path):
    base, root = media
    job = submit(server, f"{base}/bunny.mp4", scale=3, output="mp4")
    assert server.call("GET", f"/jobs/{job['id']}/output.mp4").status == 404  # not yet
    done = server.wait_job(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["error"]
    url = done["links"]["mp4"]
    part = server.call("GET", url, headers={"Range": "bytes=100-199"})
    assert part.status == 206 and len(part.body) == 100
    whole = server.call("GET", url)
    assert whole.status == 200 and whole.body[100:200] == part.body
    head = server.call("HEAD", url)  # players and download managers ask first
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) == len(whole.body)
    assert head.headers["accept-ranges"] == "bytes"
    # Frames kept to compare: CARN-M from the output, bicubic made from the kept source frame.
    compare = server.call("GET", f"/jobs/{job['id']}/compare").json()
    assert compare["frames"] == [6, 18, 31, 43]  # 4 spread over the 50 frames
    for n in compare["frames"][:2]:
        link = compare["links"][str(n)]
        carn = server.call("GET", f"{link}?kind=carn")
        bicubic = server.call("GET", f"{link}?kind=bicubic")
        assert carn.headers["content-type"] == bicubic.headers["content-type"] == "image/png"
        (tmp_path / "carn.png").write_bytes(carn.body)
        (tmp_path / "bicubic.png").write_bytes(bicubic.body)
        a, b = read_rgb(tmp_path / "carn.png"), read_rgb(tmp_path / "bicubic.png")
        assert a.shape == b.shape == (270, 480, 3)
        # The same picture (bunny at x3), upscaled two ways: close, but not identical.
        difference = np.abs(a.astype(int) - b.astype(int)).mean()
        assert 0.5 < difference < 20, difference
    assert server.call("GET", f"{compare['links']['6']}?kind=nearest").status == 422
    assert server.call("GET", f"/jobs/{job['id']}/compare/7.png").status == 404
    (tmp_path / "out.mp4").write_bytes(whole.body)
    got, src = facts(tmp_path / "out.mp4"), facts(root / "bunny.mp4")
    assert (got.width, got.height) == (480, 270)
    assert got.pts == src.pts and got.audio_packets == src.audio_packets


def test_a_job_can_name_a_model_from_the_models_folder(server, media, tmp_path):
    base, _ = media
    plain = submit(server, f"{base}/carphone.mp4", scale=2, output="mp4")
    bright = submit(server, f"{base}/carphone.mp4", scale=2, output="mp4", weights="bright.pth")
    assert (plain["weights"], bright["weights"]) == (None, "bright.pth")
    means = []
    for job in (plain, bright):
        done = server.wait_job(job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        path = tmp_path / f"{job['id']}.mp4"
        path.write_bytes(server.call("GET", done["links"]["mp4"]).body)
        means.append(np.mean([y.mean() for y in decode_y(path)]))
    # +0.1 on every RGB channel is +0.1 * 219 = 22 luma codes (limited range).
    assert means[1] - means[0] == pytest.approx(22, abs=3)


def test_cancel_stops_a_running_job_and_frees_its_files(server, media):
    base, _ = media
    job = submit(server, f"{base}/bunny.mp4", scale=4, output="hls")
    wait_for(lambda: server.job(job["id"])["progress"]["frames_done"] > 0, 60, "progress")
    started = time.monotonic()
    response = server.call("DELETE", f"/jobs/{job['id']}")
    assert response.status == 200
    assert response.json()["state"] == "cancelled"
    assert time.monotonic() - started < 1.0  # the running pipeline stopped within a second
    assert set(response.json()["links"]) == {"self", "segments"}  # no playlist advertised
    assert server.call("GET", job["links"]["playlist"]).status == 404
    assert server.call("GET", job["links"]["preview"]).status == 404
    assert not (server.data_dir / "jobs" / job["id"] / "hls").exists()
    assert server.call("DELETE", f"/jobs/{job['id']}").status == 409


def test_three_concurrent_jobs_all_succeed(server, media):
    base, _ = media
    jobs = [submit(server, f"{base}/carphone.mp4", scale=2, output="mp4") for _ in range(3)]

    def running_together():
        running = server.call("GET", "/jobs?state=running&limit=100").json()["items"]
        return {j["id"] for j in running} >= {j["id"] for j in jobs}

    wait_for(running_together, 60, "three jobs running at once", interval=0.05)
    for job in jobs:
        done = server.wait_job(job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        assert done["progress"]["frames_done"] == 90


def test_jobs_are_listed_newest_first_with_pagination(server, media):
    """(Its own jobs, which fail at once: it passes alone, as after the others.)"""
    url = f"http://127.0.0.1:{free_port()}/x.mp4"  # (nothing listens: refused)
    made = [submit(server, url)["id"] for _ in range(5)]
    page = server.call("GET", "/jobs?limit=2").json()
    assert len(page["items"]) == 2 and page["total"] >= 5
    assert [j["id"] for j in page["items"]] == made[:-3:-1]  # the newest first
    assert page["items"][0]["created_at"] >= page["items"][1]["created_at"]
    second = server.call("GET", "/jobs?limit=2&offset=2").json()
    assert [j["id"] for j in second["items"]] == made[-3:-5:-1]
    assert server.call("GET", "/jobs?limit=0").status == 422


def scrape(server: ServerProcess) -> dict:
    text = server.call("GET", "/metrics").body.decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict, family: str, name: str, **labels) -> float:
    """The sum of ``name`` samples of ``family`` whose labels include ``labels`` (0 if none)."""
    return sum(s.value for s in families[family].samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip


def test_metrics_count_every_frame(server, media):
    def idle() -> bool:  # (no other test's job counted here)
        return all(server.call("GET", f"/jobs?state={state}").json()["total"] == 0
                   for state in ("queued", "running"))  # fmt: skip

    wait_for(idle, 120, "earlier jobs to end")
    before = scrape(server)
    base, _ = media
    job = submit(server, f"{base}/bunny.mp4", scale=2, format="mp4")
    assert server.wait_job(job["id"], ("succeeded", "failed"))["state"] == "succeeded"
    after = scrape(server)

    def grew(family: str, name: str, **labels) -> float:
        return sample(after, family, name, **labels) - sample(before, family, name, **labels)

    assert grew("carn_stream_frames", "carn_stream_frames_total") == 50  # this job's frames
    for stage in ("decode", "wait", "inference", "encode"):
        assert grew("carn_stream_stage_seconds", "carn_stream_stage_seconds_count",
                    stage=stage, mode="job") == 50  # fmt: skip
    assert grew("carn_stream_frame_seconds", "carn_stream_frame_seconds_count") == 50
    # A frame's latency is exactly its four stages: no read-ahead buffer hidden in it.
    stage_sum = sum(grew("carn_stream_stage_seconds", "carn_stream_stage_seconds_sum",
                         stage=stage, mode="job")
                    for stage in ("decode", "wait", "inference", "encode"))  # fmt: skip
    e2e_sum = grew("carn_stream_frame_seconds", "carn_stream_frame_seconds_sum")
    assert e2e_sum == pytest.approx(stage_sum, rel=1e-6)
    assert not [s.name for f in after.values() for s in f.samples if s.name.endswith("_created")]
    assert "carn_stream_http_request_duration_seconds" in after
    assert sample(after, "carn_stream_jobs", "carn_stream_jobs", state="succeeded") >= 1
    routes = {s.labels["route"] for s in after["carn_stream_http_requests"].samples}
    assert "/jobs/{job_id}" in routes
    assert not any(re.search(r"[0-9a-f]{32}", r) for r in routes)  # no ids in labels
    assert "carn_stream_queue_depth" in after and "carn_stream_fps" in after
    assert "carn_stream_inference_batch_frames" in after


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "path,reason",
    [
        ("/notes.mp4", "not a video file"),
        ("/missing.mp4", "HTTP 404"),
        ("/slow/bunny.mp4", "timed out"),
        ("/big", "over the limit"),
        ("/redirect?to=http://127.0.0.2:9/x.mp4", "127.0.0.2 is not public"),
    ],
)
def test_inputs_that_cannot_be_used_fail_the_job_with_a_reason(server, media, path, reason):
    base, _ = media
    job = submit(server, base + path)
    done = server.wait_job(job["id"], ("succeeded", "failed"), timeout=60)
    assert done["state"] == "failed" and reason in done["error"], done


def test_connection_refused_fails_the_job(server):
    port = free_port()
    job = submit(server, f"http://127.0.0.1:{port}/clip.mp4")
    done = server.wait_job(job["id"], ("succeeded", "failed"), timeout=60)
    assert done["state"] == "failed", done
    # Said once, of the address the user gave, without errno numbers or server paths.
    assert done["error"] == f"cannot connect to 127.0.0.1:{port}: connection refused", done


@pytest.mark.parametrize(
    "body,message",
    [
        ({"url": "http://127.0.0.2/clip.mp4"}, "127.0.0.2 is not public"),
        ({"url": "http://[::1]/clip.mp4"}, "::1 is not public"),
        ({"url": "file:///etc/passwd"}, "unsupported URL scheme 'file'"),
        ({"url": "ftp://127.0.0.1/x"}, "unsupported URL scheme"),
        ({"url": "http://user:pw@127.0.0.1/x"}, "credentials"),
        ({"url": "http://127.0.0.1/x", "scale": 5}, "scale"),
        ({"url": "http://127.0.0.1/x", "crf": 99}, "crf"),
        ({"url": "http://127.0.0.1/x", "colour": "blue"}, "colour"),
        ({"scale": 2}, "url"),
        ({"url": "http://127.0.0.1/x", "weights": "missing.pth"}, "no weights file 'missing.pth'"),
        ({"url": "http://127.0.0.1/x", "weights": "../bright.pth"}, "weights"),
    ],
)
def test_requests_that_can_be_judged_at_once_get_422(server, body, message):
    response = server.call("POST", "/jobs", body)
    assert response.status == 422
    assert message in response.body.decode()


def test_a_scale_sent_as_text_as_forms_do_is_read_as_a_number(server):
    response = server.call("POST", "/jobs", {"url": f"http://127.0.0.1:{free_port()}/x.mp4",
                                             "scale": "4", "format": "mp4"})  # fmt: skip
    assert response.status == 201, response.body
    assert response.json()["scale"] == 4
    words = server.call("POST", "/jobs", {"url": "http://127.0.0.1/x", "scale": "four"})
    assert words.status == 422


def test_malformed_json_gets_422(server):
    response = server.call("POST", "/jobs", raw=b'{"url": "http://127.0.0.1/x", ')
    assert response.status == 422 and "JSON" in response.body.decode()


def test_ids_and_segment_names_cannot_escape_the_job_folder(server, media):
    for path in (
        "/jobs/..%2F..%2Fjobs.sqlite3",
        "/jobs/0123/hls/index.m3u8",
        f"/jobs/{'a' * 32}/hls/..%2F..%2Fjobs.sqlite3",
        f"/jobs/{'a' * 32}/hls/segment_1.ts",
    ):
        response = server.call("GET", path)
        assert response.status == 404, path
        assert b"SQLite" not in response.body


# --------------------------------------------------------------------------- address checks


@pytest.mark.parametrize(
    "address",
    ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
     "127.0.0.2", "0.0.0.0", "224.0.0.1", "fc00::1", "fd12:3456::1", "fe80::1", "::1",
     "::ffff:10.0.0.1", "::ffff:127.0.0.1"],
)  # fmt: skip
def test_non_public_addresses_are_refused_without_connecting(address):
    with pytest.raises(FetchError, match="not public"):
        check_address(address, FetchPolicy(allowed_hosts=frozenset({"127.0.0.1"})))


def test_public_and_allow_listed_addresses_pass_the_check():
    policy = FetchPolicy(allowed_hosts=frozenset({"127.0.0.1"}))
    for address in ("8.8.8.8", "2001:4860:4860::8888", "127.0.0.1"):
        check_address(address, policy)  # no exception, and no connection is made
    assert validate_url("http://127.0.0.1:1/x.mp4", policy)
    with pytest.raises(FetchError):
        validate_url("http://localhost:1/x.mp4", FetchPolicy())  # resolves to loopback


# --------------------------------------------------------------------------- settings


def test_token_limits_and_local_files(tmp_path, media, data_dir):
    base, root = media
    proc = ServerProcess(tmp_path / "data", CARN_STREAM_API_TOKEN="s3cret",
                         CARN_STREAM_MAX_OUTPUT_PIXELS="50000",
                         CARN_STREAM_ALLOW_LOCAL_FILES="1").start()  # fmt: skip
    try:
        body = {"url": f"{base}/bunny.mp4"}
        assert proc.call("POST", "/jobs", body).status == 401
        wrong = proc.call("POST", "/jobs", body, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401 and "API token" in wrong.body.decode()
        auth = {"Authorization": "Bearer s3cret"}
        job = proc.call("POST", "/jobs", body, headers=auth).json()
        assert proc.call("GET", f"/jobs/{job['id']}").status == 401  # reads need it too
        assert proc.call("DELETE", f"/jobs/{job['id']}").status == 401
        proc.headers = auth
        done = proc.wait_job(job["id"], ("succeeded", "failed"))
        assert done["state"] == "failed" and "over the limit of 50000 pixels" in done["error"]
        local = proc.call("POST", "/jobs", {"url": f"file://{root / 'carphone.mp4'}",
                                            "output": "mp4"}, headers=auth).json()  # fmt: skip
        done = proc.wait_job(local["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        assert (root / "carphone.mp4").exists()  # a local input is read, never removed
        assert done["url"] == "carphone.mp4"  # a local path is shown by its name only
        signed = next(link for link in done["links"].values() if link.startswith("/media/"))
        assert proc.call("GET", signed, headers={}).status == 200
        signature = signed.split("/")[3]
        # A local raw stream is copied with timestamps into the job's folder: it was
        # rewritten in place, as an MP4.
        raw = root / "carphone.h264"
        before = raw.read_bytes()
        local = proc.call("POST", "/jobs", {"url": f"file://{raw}", "output": "mp4"},
                          headers=auth).json()  # fmt: skip
        done = proc.wait_job(local["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        assert raw.read_bytes() == before
        assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    finally:
        proc.stop()
    # The access log shows the link without its signature (a credential for its life).
    log = proc.log.read_text()
    assert signed.split("/", 4)[4] in log and signature not in log, log


def test_readyz_needs_no_token_and_so_names_no_server_path(tmp_path):
    """A model that failed to load was reported with the weights file's full path to anyone."""
    secret = tmp_path / "secret-folder"
    secret.mkdir()
    (secret / "w.pth").write_text("not a checkpoint")
    server = ServerProcess(tmp_path / "data", CARN_WEIGHTS=str(secret / "w.pth"),
                           CARN_STREAM_API_TOKEN="s3cret").launch()  # fmt: skip

    def failed():
        try:
            body = server.call("GET", "/readyz", timeout=2).json()
        except OSError:
            return None
        return "model_error" in body and body

    try:
        body = wait_for(failed, 60, "the model to fail to load")
    finally:
        server.stop()
    assert body["model_error"].startswith("WeightsError: weights file w.pth is not ")
    assert str(tmp_path) not in json.dumps(body)
    assert str(secret / "w.pth") in server.log.read_text()  # (the operator's log has it)


def test_a_device_that_is_not_there_is_one_line_each_and_the_reason_in_readyz(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    server = ServerProcess(tmp_path / "data", CARN_STREAM_DEVICE="cuda").launch()

    def both_failed():
        try:
            response = server.call("GET", "/readyz", timeout=2)
        except OSError:
            return None
        body = response.json()
        return {"model_error", "executor_error"} <= set(body) and (response.status, body)

    try:
        status, body = wait_for(both_failed, 60, "the model and the worker process to fail")
    finally:
        server.stop()
    assert status == 503 and body["ready"] is False
    for check in ("model_error", "executor_error"):
        assert body[check] == "RuntimeError: CUDA was asked for but no CUDA device is available"
    log = server.log.read_text()
    # Was two full tracebacks; now one line for the service's worker, one for the worker
    # process, each with the reason.
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert [e.split(" ERROR ", 1)[1] for e in errors] == [
        "carn_stream.server.workers: loading the model failed: RuntimeError: CUDA was asked "
        "for but no CUDA device is available; not ready (GET /readyz says why)",
        "carn_stream.server.workers: starting the segment executor failed: RuntimeError: CUDA "
        "was asked for but no CUDA device is available; not ready (GET /readyz says why)",
    ], log


def test_the_first_start_offline_says_the_bundled_weights_once(tmp_path):
    refused = f"http://127.0.0.1:{free_port()}/carn_m.pth"  # nothing listens: offline
    server = ServerProcess(tmp_path / "data", CARN_WEIGHTS="", CARN_STREAM_ALLOW_DOWNLOAD="1",
                           CARN_STREAM_WEIGHTS_URL=refused).start()  # fmt: skip
    try:
        ready = server.call("GET", "/readyz").json()
        engines = ready["engines"]
    finally:
        server.stop()
    assert ready["weights"] == "carn_m_sunhays80.pth" and len(engines) == 1  # both loaded
    assert "Connection refused" in ready["weights_warning"]
    log = server.log.read_text()
    # Was said twice (by the service's worker and by the worker process, whose copy was
    # glued to its progress line: "... 0.0 MBcarn-stream: warning: ...").
    warnings = [line for line in log.splitlines() if "using the bundled CARN-M" in line]
    assert len(warnings) == 1, log
    assert " WARNING carn_stream.loading: using the bundled CARN-M weights" in warnings[0]
    assert "\r" not in log and "carn-stream: warning" not in log, log
    progress = [line for line in log.splitlines() if "downloading the official" in line]
    assert len(progress) == 1 and progress[0].endswith(
        "INFO carn_stream.loading: downloading the official CARN-M weights: 0.0 MB"
    ), log


def test_a_killed_server_resumes_its_jobs_after_restart(tmp_path, media):
    base, _ = media
    data = tmp_path / "data"
    first = ServerProcess(data, CARN_STREAM_MAX_CONCURRENT_JOBS="1").start()
    job = submit(first, f"{base}/bunny.mp4", scale=2, output="mp4")
    queued = submit(first, f"{base}/carphone.mp4", scale=2, output="mp4")
    wait_for(lambda: first.job(job["id"])["progress"]["frames_done"] > 0, 60, "progress")
    first.kill()  # kill -9 in the middle of the job
    second = ServerProcess(data, CARN_STREAM_MAX_CONCURRENT_JOBS="1")
    second.port = first.port
    second.start()
    try:
        done = second.wait_job(job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded" and done["attempts"] == 2
        other = second.wait_job(queued["id"], ("succeeded", "failed"))
        assert other["state"] == "succeeded" and other["attempts"] == 1
        assert second.call("GET", done["links"]["mp4"]).status == 200
        leftovers = [p.name for p in (data / "jobs" / job["id"]).iterdir()]
        # The input and partial files are gone; frames kept to compare remain.
        assert sorted(leftovers) == ["compare", "output.mp4"]
    finally:
        second.stop()


@pytest.mark.slow
def test_a_job_failed_at_start_up_keeps_and_serves_nothing(tmp_path):
    from carn_stream.server.jobs.params import JobParams
    from carn_stream.server.jobs.store import JobStore

    data = tmp_path / "data"
    data.mkdir()
    store = JobStore(data / "jobs.sqlite3")
    job = store.create("http://127.0.0.1/a.mp4", JobParams(format="hls"))
    for _ in range(2):  # two runs cut short by crashes: the default max_attempts
        assert store.claim_next().id == job.id
        store.recover(max_attempts=99)
    assert store.claim_next().id == job.id
    store.close()
    folder = data / "jobs" / job.id
    (folder / "hls").mkdir(parents=True)
    (folder / "hls" / "index.m3u8").write_text("#EXTM3U\n")  # what the last run left
    (folder / "hls" / "segment_00000.ts").write_bytes(b"G" * 188)
    (folder / "input").write_bytes(b"partial download")
    server = ServerProcess(data).start()
    try:
        done = server.job(job.id)
        assert done["state"] == "failed" and "restart" in done["error"]
        assert set(done["links"]) == {"self", "segments"}
        for path in ("hls/index.m3u8", "hls/segment_00000.ts", "preview.m3u8"):
            assert server.call("GET", f"/jobs/{job.id}/{path}").status == 404, path
    finally:
        server.stop()
    assert not (folder / "hls").exists() and not (folder / "input").exists()


def test_retention_removes_old_jobs_and_their_files(tmp_path):
    from carn_stream.server.jobs.params import JobParams
    from carn_stream.server.jobs.runner import JobRunner
    from carn_stream.server.jobs.store import JobStore
    from carn_stream.server.metrics import Metrics
    from carn_stream.settings import Settings

    store = JobStore(tmp_path / "jobs.sqlite3")
    settings = Settings(data_dir=tmp_path, retention_hours=1)
    runner = JobRunner(store, settings, Metrics(), lambda: None)
    old, fresh = store.create("http://x/a", JobParams()), store.create("http://x/b", JobParams())
    for job, age in ((old, 3700), (fresh, 60)):
        runner.media(job).folder.mkdir(parents=True)
        store.finish(job.id, "succeeded", at=time.time() - age)
    runner.remove_expired()
    assert store.get(old.id) is None and not runner.media(old).folder.exists()
    assert store.get(fresh.id) is not None and runner.media(fresh).folder.exists()
    store.close()


def test_store_recovery_after_a_crash(tmp_path):
    from carn_stream.server.jobs.params import JobParams
    from carn_stream.server.jobs.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    a, b = store.create("http://x/a", JobParams()), store.create("http://x/b", JobParams())
    assert store.claim_next().id == a.id  # first in, first out
    assert store.claim_next().id == b.id
    store.requeue(b.id)  # a graceful stop: not an attempt
    assert store.get(b.id).attempts == 0
    assert store.claim_next().id == b.id and store.get(b.id).attempts == 1
    store.close()  # as after kill -9: both still "running"
    store = JobStore(tmp_path / "jobs.sqlite3")
    requeued, failed = store.recover(max_attempts=2)
    assert requeued == [a.id, b.id] and failed == []
    assert store.claim_next().id == a.id and store.claim_next().id == b.id  # attempt 2 each
    store.close()
    store = JobStore(tmp_path / "jobs.sqlite3")
    requeued, failed = store.recover(max_attempts=2)
    assert requeued == [] and failed == [a.id, b.id]
    assert store.get(a.id).state == "failed" and "restart" in store.get(b.id).error
    store.close()


# --------------------------------------------------------------------------- the page


@pytest.fixture
def hls_js(media) -> None:
    """hls.js's tarball on the media server, where this module's services take it from."""
    mirror_hls_js(media[1])


@pytest.mark.slow
@pytest.mark.parametrize("native_hls", [True, False], ids=["native", "hls.js"])
def test_jobs_page_renews_a_signed_link_while_paused(media, tmp_path, hls_js, native_hls):
    """With a token, a job's playlist link expires after CARN_STREAM_MEDIA_LINK_SECONDS: the
    page swaps in a fresh one past half its life, where the paused player is, and plays on;
    through hls.js too."""
    base, _ = media
    token = "s3cret"
    proc = ServerProcess(tmp_path / "data", CARN_STREAM_API_TOKEN=token,
                         CARN_STREAM_MEDIA_LINK_SECONDS="8",
                         CARN_STREAM_HLS_JS_URL=f"{base}/{HLS_JS_MIRRORED}",
                         CARN_STREAM_ALLOW_DOWNLOAD="1").start()  # fmt: skip
    proc.headers = {"Authorization": f"Bearer {token}"}
    try:
        job = proc.call("POST", "/jobs", {"url": f"{base}/long.mp4", "scale": 2}).json()
        assert proc.wait_job(job["id"], ("succeeded", "failed"))["state"] == "succeeded"
        play = f"#jobs tr[data-id='{job['id']}'] button.play"
        play_past_a_signed_link(f"http://127.0.0.1:{proc.port}/", token,
                                lambda page: page.locator(play).click(timeout=15_000),
                                native_hls)  # fmt: skip
    finally:
        proc.stop()


#: A page of another site: hls.js (from the service) plays ``source`` in ``#v``; ``window.failed``
#: holds hls.js's fatal error, if any.
EMBEDDING_PAGE = """<!doctype html><video id="v" muted autoplay></video>
<script src="{service}/player/hls.js"></script>
<script>
const hls = new Hls();
hls.on(Hls.Events.ERROR, (_, data) => {{ if (data.fatal) window.failed = data.details; }});
hls.loadSource({source!r});
hls.attachMedia(document.getElementById("v"));
</script>"""

#: ``[status, state]`` of a job read with the token from the page's origin, or the error
#: that stopped the read.
READ_JOB = """async ([url, token]) => {
  try {
    const response = await fetch(url, {headers: {Authorization: `Bearer ${token}`}});
    return [response.status, (await response.json()).state];
  } catch (error) { return String(error); }
}"""


def test_another_site_plays_a_signed_link_and_listed_origins_call_the_api(media, tmp_path,
                                                                          hls_js):
    """A site that embeds a player gets a job's signed HLS link from the API (server side) and
    plays it in its page through hls.js: a cross-origin read, which a signed link allows from
    any origin. The API itself answers pages of the origins CARN_STREAM_CORS_ORIGINS lists,
    and no other."""
    base, _ = media
    token = "s3cret"
    proc = ServerProcess(tmp_path / "data", CARN_STREAM_API_TOKEN=token,
                         CARN_STREAM_CORS_ORIGINS=base,
                         CARN_STREAM_HLS_JS_URL=f"{base}/{HLS_JS_MIRRORED}",
                         CARN_STREAM_ALLOW_DOWNLOAD="1").start()  # fmt: skip
    proc.headers = {"Authorization": f"Bearer {token}"}
    site = tmp_path / "site"
    site.mkdir()
    try:
        job = proc.call("POST", "/jobs", {"url": f"{base}/bunny.mp4", "scale": 2}).json()
        done = proc.wait_job(job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        service = f"http://127.0.0.1:{proc.port}"
        (site / "embed.html").write_text(
            EMBEDDING_PAGE.format(service=service, source=service + done["links"]["master"])
        )
        api = [f"{service}/jobs/{job['id']}", token]
        with (
            serve_directory(site) as other,  # an origin the service does not list
            chromium_page(f"{other}/embed.html", native_hls=False) as page,
        ):
            player = "document.getElementById('v')"
            page.wait_for_function(f"window.failed || {player}.currentTime > 0.5",
                                   timeout=60_000)  # fmt: skip
            assert page.evaluate("window.failed") is None  # was manifestLoadError
            assert page.evaluate(READ_JOB, api) == "TypeError: Failed to fetch"
            page.goto(f"{base}/")  # a page of the listed origin (the folder's listing)
            assert page.evaluate(READ_JOB, api) == [200, "succeeded"]
        # What a browser's preflight from an unlisted origin is told, and a listed one's.
        asked = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
        refused = proc.call("OPTIONS", "/jobs", headers={"Origin": other, **asked})
        assert refused.status == 403 and other in refused.json()["detail"]
        assert "CARN_STREAM_CORS_ORIGINS" in refused.json()["detail"]
        allowed = proc.call("OPTIONS", "/jobs", headers={"Origin": base, **asked})
        assert allowed.status == 204
        assert allowed.headers["access-control-allow-origin"] == base
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        # Caches keep the answers of different origins apart (they depend on the origin); a
        # signed link's answer is the same for every origin, asked with one or not.
        assert proc.call("GET", "/healthz").headers["vary"] == "Origin"
        assert proc.call("GET", "/healthz", headers={"Origin": other}).headers["vary"] == "Origin"
        link = proc.call("GET", done["links"]["master"], headers={})
        assert link.status == 200 and link.headers["access-control-allow-origin"] == "*"
        assert "vary" not in link.headers
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "listed,origin,allowed",
    [("https://app.example:443", "https://app.example", True),
     ("http://app.example:80", "http://app.example", True),
     ("http://app.example:8080", "http://app.example", False)],
)  # fmt: skip
def test_a_listed_origin_matches_as_browsers_send_it(listed, origin, allowed):
    """Browsers leave a scheme's own port out of ``Origin``: a listed ``:443`` still matches."""
    from carn_stream.server.middleware import CrossOrigin

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    messages: list[dict] = []

    async def send(message) -> None:
        messages.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/jobs",
             "headers": [(b"origin", origin.encode())]}  # fmt: skip
    asyncio.run(CrossOrigin(app, (listed,), lambda: False)(scope, receive, send))
    headers = dict(messages[0]["headers"])
    assert headers.get(b"access-control-allow-origin") == (origin.encode() if allowed else None)
    assert headers[b"vary"] == b"Origin"


def test_jobs_page_in_chromium_submits_plays_and_compares(server, media, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, _ = media
    artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{server.port}/")
            assert page.title() == "carn-stream"
            expect(page.locator("#live-link")).to_have_attribute("href", "/live")
            page.fill("#url", f"{base}/bunny.mp4?signature=secret")
            page.select_option("#scale", "2")
            page.click("#submit")
            row = page.locator("#jobs tr").first
            expect(row.locator("td.input")).to_have_text("bunny.mp4")  # no query string
            expect(row.locator("td.output")).to_have_text("HLS")
            expect(row.locator("td.created")).not_to_be_empty()
            # Plays from the first segment (the clip is 2 s: one segment while it runs).
            page.wait_for_function(
                "document.getElementById('player').currentTime > 0.5", timeout=90_000
            )
            assert page.evaluate("document.getElementById('player').videoWidth") == 320
            expect(page.locator("#player-status")).to_contain_text("bunny.mp4 x2")
            page.screenshot(path=str(artifacts / "jobs-playing.png"), full_page=True)
            # The status follows the player: not "Playing" once the video has ended.
            page.wait_for_function("document.getElementById('player').ended", timeout=60_000)
            expect(page.locator("#player-status")).to_have_text(
                "Finished playing bunny.mp4 x2", timeout=20_000
            )
            page.wait_for_selector("#jobs tr:first-child td.state-succeeded", timeout=90_000)
            # 50 frames with a keyframe each second, 1 s segments: two of them
            expect(page.locator("#jobs tr:first-child td.progress")).to_contain_text(
                "segments 2 / 2"
            )
            assert "secret" not in page.locator("#jobs").inner_html()
            page.screenshot(path=str(artifacts / "jobs-finished.png"), full_page=True)
            # Compare: bicubic and CARN-M of one frame, one above the other, at the same size.
            page.locator("#jobs tr:first-child button.compare").click()
            expect(page.locator("#compare")).to_be_visible()
            expect(page.locator("#compare-frames button")).to_have_count(4)
            page.wait_for_function(
                "['wipe-bicubic', 'wipe-carn'].every(id => "
                "document.getElementById(id).complete && "
                "document.getElementById(id).naturalWidth === 320)",
                timeout=30_000,
            )
            boxes = [page.locator(f"#{i}").bounding_box() for i in ("wipe-bicubic", "wipe-carn")]
            assert boxes[0] == boxes[1] and boxes[0]["width"] > 300
            page.fill("#wipe-position", "30")
            clip = page.evaluate("getComputedStyle(document.getElementById('wipe-carn')).clipPath")
            assert clip == "inset(0px 0px 0px 30%)"
            page.locator("#compare").screenshot(path=str(artifacts / "jobs-compare.png"))
            # A queued job offers no Play button.
            page.route("**/jobs?limit=50", lambda route: route.fulfill(
                json={"items": [{**server.job(_first_job_id(server)), "state": "queued"}],
                      "total": 1}))  # fmt: skip
            page.wait_for_selector("#jobs td.state-queued", timeout=5_000)
            expect(page.locator("#jobs button.play")).to_have_count(0)
            page.unroute("**/jobs?limit=50")
            # The API docs render without a CDN (this test's network has only loopback).
            page.goto(f"http://127.0.0.1:{server.port}/docs")
            page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
            page.screenshot(path=str(artifacts / "docs.png"))
            page.goto(f"http://127.0.0.1:{server.port}/redoc")
            page.wait_for_selector("redoc [role=menuitem], .menu-content", timeout=30_000)
        finally:
            browser.close()
    assert request(server.port, "GET", "/jobs?limit=1").json()["items"][0]["state"] == "succeeded"


def test_jobs_page_plays_through_hls_js_where_the_browser_cannot_play_hls(server, media, hls_js):
    """A browser without HLS of its own (Firefox) was told to download MP4 output instead. The
    page plays through hls.js, loaded from the service: from the first segment of a job still
    running (its growing playlist's snapshots) to the end, waiting for a segment that comes
    late (hls.js gives up after 10 s of its own accord, and a video on request's segment may
    take minutes to make). Where the service cannot give hls.js, the page says why."""
    from playwright.sync_api import expect

    base, _ = media
    player = "document.getElementById('player')"
    late: list[str] = []

    def answer_late(route) -> None:  # the second segment: its first byte after 12 s
        late.append(route.request.url)
        time.sleep(12)
        route.continue_()

    with chromium_page(f"http://127.0.0.1:{server.port}/", native_hls=False) as page:
        page.route("**/hls/segment_00001.ts*", answer_late)
        page.fill("#url", f"{base}/bunny.mp4")
        page.select_option("#scale", "2")
        page.click("#submit")
        page.wait_for_function(f"{player}.currentTime > 0.5", timeout=90_000)
        through = page.evaluate(f"[typeof Hls, {player}.currentSrc.startsWith('blob:'), "
                                f"{player}.videoWidth]")  # fmt: skip
        page.wait_for_function(f"{player}.ended", timeout=90_000)
        expect(page.locator("#player-status")).to_have_text(
            "Finished playing bunny.mp4 x2", timeout=20_000)  # fmt: skip
        assert through == ["function", True, 320]
        played = page.evaluate(f"[{player}.currentTime, {player}.hlsFailure]")
        assert played[0] == pytest.approx(2.0, abs=0.1) and played[1] is None  # both
        assert len(late) == 1  # asked once, and waited for
        # A service that cannot give hls.js: the page says so, with the service's reason.
        fresh = page.context.new_page()  # (no HLS of its own either)
        fresh.route("**/player/hls.js", lambda route: route.fulfill(
            status=503, json={"detail": "hls.js 1.7.4 is not cached"}))  # fmt: skip
        fresh.goto(f"http://127.0.0.1:{server.port}/")
        fresh.locator("#jobs tr:first-child button.play").click(timeout=15_000)
        expect(fresh.locator("#player-status")).to_have_text(
            "This browser cannot play HLS itself, and its player library is unavailable: "
            "hls.js 1.7.4 is not cached; choose MP4 output and download it instead.")


def test_jobs_page_reports_a_job_that_failed_before_its_first_segment(server, media):
    from playwright.sync_api import expect, sync_playwright

    base, _ = media
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            asked: list[tuple[float, str]] = []  # every request the page makes, and when
            page.on("request", lambda r: asked.append((time.monotonic(), r.url)))
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.fill("#url", f"{base}/missing.mp4")  # HTTP 404: fails while fetching
            page.select_option("#output", "hls")
            page.click("#submit")
            status = page.locator("#player-status")
            expect(status).to_contain_text("Cannot play missing.mp4 x2: the job failed: ",
                                           timeout=60_000)  # fmt: skip
            expect(status).to_contain_text("HTTP 404")
            reported = time.monotonic()
            page.wait_for_timeout(3_000)  # three refreshes of the job list
        finally:
            browser.close()
    paths = [urllib.parse.urlsplit(url).path for _, url in asked]
    # Was "Waiting for the first segment…" forever, and a request for /undefined every second.
    assert "/undefined" not in paths
    later = [url for at, url in asked if at > reported]
    assert later and all(urllib.parse.urlsplit(u).path == "/jobs" for u in later), later


def _first_job_id(server: ServerProcess) -> str:
    return server.call("GET", "/jobs?limit=1").json()["items"][0]["id"]
