"""HLS playlists and DASH manifests as input URLs: what of them is chosen, fetched and joined
into one input, and what is refused, with the reason. The playlists, manifests and segments are
FFmpeg's own HLS and DASH muxers', served on loopback."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from carn_stream.pipeline.execution.executors import PlanRequest, plan_for
from carn_stream.pipeline.media.dash_input import dash_listing
from carn_stream.pipeline.media.hls_input import (
    MasterPlaylist,
    MediaPlaylist,
    Part,
    parse_playlist,
)
from carn_stream.pipeline.media.keep import TEXT_SUBTITLES
from carn_stream.pipeline.media.listing import (
    Listed,
    ListedAudio,
    ListingError,
    PartKey,
    has_audio_apart,
    join_apart,
)
from carn_stream.server.inputs.fetch import FetchError, FetchPolicy, fetch
from carn_stream.server.inputs.listed_fetch import join_local_listing
from tests.helpers import QuietHandler, serve_directory
from tests.media import (
    decode_rgb,
    downscale_frames,
    with_second_audio,
    write_clip,
    write_dash,
    write_hls,
    write_hls_subtitled,
)
from tests.service import media_server

POLICY = FetchPolicy(allowed_hosts=frozenset({"127.0.0.1"}))
FRAMES = 50  #: of the clip: 2 s at 25 fps, a keyframe each second

MASTER = """#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="English",LANGUAGE="eng",URI="{form}/audio0.m3u8"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="Deutsch",LANGUAGE="deu",DEFAULT=YES,URI="{form}/audio1.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=200000,RESOLUTION=80x46,CODECS="avc1.64000c,mp4a.40.2",AUDIO="aac"
low/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=90000,CODECS="mp4a.40.2",AUDIO="aac"
{form}/audio0.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=160x90,CODECS="avc1.64000c,mp4a.40.2",AUDIO="aac"
{form}/video.m3u8
"""
#: A group whose default rendition is the audio in the variant's own segments (no URI), and
#: one more with a playlist of its own.
MASTER_INSIDE = """#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="Commentary",LANGUAGE="fra",URI="ts_renditions/audio1.m3u8"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="Main",LANGUAGE="eng",DEFAULT=YES
#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=160x90,AUDIO="a"
ts/index.m3u8
"""
#: A group of one rendition, the audio in the variant's own segments, named.
MASTER_OWN = """#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="Main",LANGUAGE="eng",DEFAULT=YES
#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=160x90,AUDIO="a"
ts/index.m3u8
"""
#: The same variant (its segments carry audio), but every rendition has a playlist of its own:
#: players play those, not the segments' own audio.
MASTER_UNNAMED = """#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="Tone",LANGUAGE="zxx",URI="ts_renditions/audio1.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=160x90,AUDIO="a"
ts/index.m3u8
"""


@pytest.fixture(scope="module")
def site(data_dir, tmp_path_factory):
    """Loopback: ``clip.mp4`` (160x90, its audio) as HLS and DASH in every form read, and
    master playlists of a lower variant, an audio-only one and the clip's, with two audio
    renditions: the clip's audio and a tone (``two.mp4`` has both)."""
    root = tmp_path_factory.mktemp("hls")
    video = data_dir / "video" / "bigbuckbunny.mp4"
    frames = decode_rgb(video, FRAMES)
    gop = {"g": "25", "preset": "veryfast"}
    clip = write_clip(root / "clip.mp4", downscale_frames(frames, (160, 90)), options=gop,
                      audio_from=video, audio_seconds=2.0)  # fmt: skip
    two = with_second_audio(clip, root / "two.mp4", 2.0)
    low = write_clip(root / "low.mp4", downscale_frames(frames, (80, 46)), options=gop)
    write_hls(clip, root / "ts")
    write_hls(clip, root / "ts_single", single_file=True)
    write_hls(clip, root / "fmp4", fmp4=True)
    write_hls(clip, root / "fmp4_single", fmp4=True, single_file=True)
    write_hls(low, root / "low", kinds="v")
    write_hls(clip, root / "ts_aes", encrypt=True)
    _subtitled(two, root)
    _wrapped(root)
    _aes_variants(root)
    write_dash(clip, root / "dash_timeline", language="deu")
    write_dash(clip, root / "dash_numbered", timeline=False, language="deu")
    write_dash(clip, root / "dash_single", single_file=True, language="deu")
    for fmp4, name in ((False, "ts"), (True, "fmp4")):
        write_hls(two, root / f"{name}_renditions", fmp4=fmp4, renditions=True)
        (root / f"master_{name}.m3u8").write_text(MASTER.format(form=f"{name}_renditions"))
    (root / "master_inside.m3u8").write_text(MASTER_INSIDE)
    (root / "master_own.m3u8").write_text(MASTER_OWN)
    (root / "master_unnamed.m3u8").write_text(MASTER_UNNAMED)
    # A single file with bytes after its last listed range (a trailer the playlist leaves out).
    (root / "ts_tail").mkdir()
    (root / "ts_tail" / "index.m3u8").write_text((root / "ts_single" / "index.m3u8").read_text())
    (root / "ts_tail" / "index.ts").write_bytes((root / "ts_single" / "index.ts").read_bytes()
                                                + b"\x47" + bytes(187) * 3)  # fmt: skip
    with media_server(root) as base:
        yield base, root


#: The key and IV the fragmented MP4 form is encrypted with here (FFmpeg's muxer encrypts
#: only MPEG-TS).
AES_KEY, AES_IV = bytes(range(16)), bytes(range(100, 116))


def _aes_variants(root: Path) -> None:
    """Beside FFmpeg's encrypted MPEG-TS form (``ts_aes``, two keys, IVs from 7): the same
    with its IVs left to the media sequence numbers (``ts_aes_iv_unlisted``), and the
    fragmented MP4 form, its initialization section included, encrypted with one key and IV
    (``fmp4_aes``), as packagers encrypt it."""
    listed = (root / "ts_aes" / "index.m3u8").read_text()
    assert listed.count("#EXT-X-KEY") == 2 and 'URI="key1.bin"' in listed  # two keys
    (root / "ts_aes_iv_unlisted").mkdir()
    unlisted = re.sub(r'URI="(key\d\.bin)",IV=0x[0-9a-fA-F]+', r'URI="../ts_aes/\1"', listed)
    unlisted = re.sub(r"^(index\d+\.ts)$", r"../ts_aes/\1", unlisted, flags=re.M)
    assert "IV=" not in unlisted and "#EXT-X-MEDIA-SEQUENCE:7" in unlisted
    (root / "ts_aes_iv_unlisted" / "index.m3u8").write_text(unlisted)
    (root / "fmp4_aes").mkdir()
    (root / "fmp4_aes" / "aes.key").write_bytes(AES_KEY)
    for part in (root / "fmp4").iterdir():
        if part.suffix in (".mp4", ".m4s"):
            padder = padding.PKCS7(128).padder()
            encryptor = Cipher(algorithms.AES(AES_KEY), modes.CBC(AES_IV)).encryptor()
            plain = padder.update(part.read_bytes()) + padder.finalize()
            (root / "fmp4_aes" / part.name).write_bytes(encryptor.update(plain)
                                                        + encryptor.finalize())  # fmt: skip
    key = f'#EXT-X-KEY:METHOD=AES-128,URI="aes.key",IV=0x{AES_IV.hex()}\n'
    text = (root / "fmp4" / "index.m3u8").read_text()
    (root / "fmp4_aes" / "index.m3u8").write_text(text.replace("#EXT-X-MAP", key + "#EXT-X-MAP"))
    (root / "long.key").write_bytes(bytes(32))


#: The cues of the subtitled forms: (time on the clip's clock, text as written).
CUES = [(Fraction(1, 10), "Hello <v Ann>&amp; <i>welcome</i></v>"), (Fraction(3, 2), "Second")]


def _subtitled(two: Path, root: Path) -> None:
    """``subs/master.m3u8``: ``two`` (the clip with two audio streams) in the variant's own
    segments and a WebVTT rendition of :data:`CUES` (FFmpeg's own, with no X-TIMESTAMP-MAP:
    cue time 0 is MPEG-TS time 0), named in the master as a packager names it;
    ``subs_mapped``: the same cues written 4 s later, with X-TIMESTAMP-MAPs that map them back
    (LOCAL 5 s to MPEGTS 1 s; the two in either order), and the first cue repeated in the next
    segment, as a cue shown across segments is."""
    master = write_hls_subtitled(two, root / "subs", CUES)
    text = master.read_text().replace('NAME="subtitle_0"', 'NAME="English",LANGUAGE="en"')
    master.write_text(text)
    mapped = root / "subs_mapped"
    shutil.copytree(root / "subs", mapped)
    maps = ["LOCAL:00:00:05.000,MPEGTS:90000", "MPEGTS:90000,LOCAL:00:00:05.000"]
    first_cue = ""
    for number, vtt in enumerate(sorted(mapped.glob("*.vtt"))):
        later = re.sub(r"(\d\d):(\d\d)\.(\d{3})",
                       lambda m: f"{m[1]}:{int(m[2]) + 4:02d}.{m[3]}", vtt.read_text())
        header = f"WEBVTT\nX-TIMESTAMP-MAP={maps[number % 2]}\n"
        body = later.removeprefix("WEBVTT\n")
        if number == 1:
            body = first_cue + body
        first_cue = first_cue or body
        vtt.write_text(header + body)


def _wrapped(root: Path) -> None:
    """``subs_wrapped``: ``subs`` with every time moved to start 1 s before MPEG-TS time's 33-bit
    wrap (so its second segment is after it), and each WebVTT segment mapped to its video
    segment's start, as packagers map them (the second's ``MPEGTS`` is small again)."""
    wrapped = root / "subs_wrapped"
    shutil.copytree(root / "subs", wrapped)
    segments = sorted(wrapped.glob("*.ts"))
    with av.open(str(segments[0])) as container:
        shift = 2**33 - 90_000 - min(p.pts for p in container.demux() if p.pts is not None)
    starts = []
    for segment in segments:
        moved = segment.with_name("moved.ts")
        with (av.open(str(segment)) as source,
              av.open(str(moved), "w", format="mpegts", options={"mpegts_copyts": "1"}) as out):
            streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
            first = None
            for packet in source.demux():
                if packet.dts is None:
                    continue
                if first is None and packet.stream.type == "video":
                    first = packet.pts
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift  # (33 bits kept)
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
        moved.replace(segment)
        starts.append(first)
    for start, vtt in zip(starts, sorted(wrapped.glob("*.vtt")), strict=True):
        local = f"00:00:{start // 90_000:02d}.{start % 90_000 // 90:03d}"
        mapping = f"X-TIMESTAMP-MAP=MPEGTS:{(start + shift) % 2**33},LOCAL:{local}"
        vtt.write_text(vtt.read_text().replace("WEBVTT\n", f"WEBVTT\n{mapping}\n", 1))


def fetched(url: str, dest: Path, policy: FetchPolicy = POLICY) -> Path:
    """``url`` fetched into ``dest`` and planned as a job's input is (its audio delivered apart
    joined with it there, in the planning worker's place)."""
    fetch(url, dest, policy)
    plan_for(PlanRequest(dest, 1.0, timed_copy=dest))
    return dest


def audio_packets(path: Path) -> list[list[bytes]]:
    """Each audio stream's packets, in order."""
    with av.open(str(path)) as container:
        return [[bytes(p) for p in container.demux(s) if p.size]
                for s in container.streams.audio if not container.seek(0)]  # fmt: skip


def times(path: Path) -> dict[str, list[float]]:
    """Each stream's packet times (pts, seconds from the video's first), by kind and number."""
    with av.open(str(path)) as container:
        packets = [(p.stream.type, p.stream.index, float(p.pts * p.time_base))
                   for p in container.demux() if p.size and p.pts is not None]  # fmt: skip
    start = min(t for kind, _, t in packets if kind == "video")
    found: dict[str, list[float]] = {}
    for kind, index, t in packets:
        found.setdefault(f"{kind}{index}", []).append(round(t - start, 3))
    return {key: sorted(values) for key, values in found.items()}


def audio_tags(path: Path) -> list[tuple[str | None, str | None]]:
    with av.open(str(path)) as container:
        return [(s.metadata.get("language"), s.metadata.get("title"))
                for s in container.streams.audio]  # fmt: skip


def assert_the_whole_clip(dest: Path, root: Path) -> None:
    """``dest`` holds every frame and audio packet of the clip, in step."""
    got = times(dest)
    want = times(root / "clip.mp4")
    assert len(got["video0"]) == FRAMES and got["video0"] == want["video0"]
    assert got["audio1"] == want["audio1"]  # every audio packet, in step with the video
    with av.open(str(dest)) as container:
        assert sum(1 for _ in container.decode(video=0)) == FRAMES


@pytest.mark.parametrize("form", ["ts", "ts_single", "fmp4", "fmp4_single"])
def test_a_media_playlist_becomes_its_whole_stream(site, form, tmp_path):
    base, root = site
    dest = fetch(f"{base}/{form}/index.m3u8", tmp_path / "input", POLICY)
    assert_the_whole_clip(dest, root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]  # no work files left


@pytest.mark.parametrize("form", ["ts_aes", "ts_aes_iv_unlisted", "fmp4_aes"])
def test_an_aes_128_playlist_is_decrypted_as_its_parts_join(site, form, tmp_path):
    base, root = site
    dest = fetch(f"{base}/{form}/index.m3u8", tmp_path / "input", POLICY)
    assert_the_whole_clip(dest, root)
    # Byte for byte the unencrypted form's parts (FFmpeg muxes both alike): a wrong IV would
    # garble only the first 16 bytes of each segment, which a decoder may shrug off.
    assert dest.read_bytes() == plain_parts(root, "fmp4" if form == "fmp4_aes" else "ts")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]  # no keys or parts left


def plain_parts(root: Path, form: str) -> bytes:
    """The parts of an unencrypted form, joined: its initialization section, its segments."""
    folder = root / form
    return b"".join(p.read_bytes() for p in (*folder.glob("init.mp4"),
                                             *sorted(folder.glob("index*.*s"))))  # fmt: skip


def test_a_local_aes_128_playlist_is_decrypted_with_its_local_keys(site, tmp_path):
    _, root = site
    join_local_listing("HLS", root / "ts_aes" / "index.m3u8", tmp_path / "joined")
    assert (tmp_path / "joined").read_bytes() == plain_parts(root, "ts")


@pytest.mark.parametrize("form", ["ts", "fmp4"])
def test_a_master_playlist_gives_its_best_variant_with_every_audio_rendition(site, form, tmp_path):
    base, root = site
    dest = fetch(f"{base}/master_{form}.m3u8", tmp_path / "input", POLICY)
    # Fetched: the video, and beside it the audio to join with it where it is first planned.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".input.apart.json", ".input.audio0", ".input.audio1", "input"]
    with av.open(str(dest)) as container:
        assert not container.streams.audio
    plan_for(PlanRequest(dest, 1.0, timed_copy=dest))
    with av.open(str(dest)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (160, 90)  # not 80x46
        assert container.format.name.startswith("matroska")
    assert audio_tags(dest) == [("deu", "Deutsch"), ("eng", "English")]  # the default first
    clip, tone = audio_packets(root / "two.mp4")
    assert audio_packets(dest) == [tone, clip]  # each rendition's own audio, bit for bit
    got, want = times(dest), times(root / "two.mp4")
    assert got["video0"] == want["video0"]
    for joined, source in (("audio1", "audio2"), ("audio2", "audio1")):  # in step (to 1 ms)
        assert got[joined] == pytest.approx(want[source], abs=0.0015)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]  # the audio's files went


def test_audio_in_the_variants_segments_that_no_rendition_names_is_left_out(site, tmp_path):
    base, root = site
    dest = fetched(f"{base}/master_unnamed.m3u8", tmp_path / "input")
    assert audio_tags(dest) == [("zxx", "Tone")]  # as a player plays it
    _, tone = audio_packets(root / "two.mp4")
    assert audio_packets(dest) == [tone]


def test_byte_ranges_are_read_up_to_the_end_of_the_last(site, tmp_path):
    base, root = site
    dest = fetch(f"{base}/ts_tail/index.m3u8", tmp_path / "input", POLICY)
    assert dest.read_bytes() == (root / "ts_single" / "index.ts").read_bytes()  # no trailer


def test_a_stopped_join_leaves_the_input_as_it_was(site, tmp_path):
    base, _ = site
    dest = fetch(f"{base}/master_ts.m3u8", tmp_path / "input", POLICY)
    before = dest.read_bytes()
    stop = threading.Event()
    stop.set()  # (its job was cancelled)
    with pytest.raises(ListingError, match="the join was stopped"):
        join_apart(dest, dest, stop)
    assert dest.read_bytes() == before and has_audio_apart(dest)
    assert ".input.part" not in [p.name for p in tmp_path.iterdir()]  # (its partial join)
    # Not a fetched input (a local file beside which such files lie): never joined.
    local = tmp_path / "local"
    local.mkdir()
    for path in tmp_path.glob("*input*"):
        (local / path.name).write_bytes(path.read_bytes())
    plan_for(PlanRequest(local / "input", 1.0, timed_copy=tmp_path / "copy"))
    assert has_audio_apart(local / "input") and not (tmp_path / "copy").exists()
    # A join cut short after its result was in place is not made again.
    plan_for(PlanRequest(dest, 1.0, timed_copy=dest))
    joined = dest.read_bytes()
    (tmp_path / ".input.apart.json").write_text((local / ".input.apart.json").read_text())
    plan_for(PlanRequest(dest, 1.0, timed_copy=dest))
    assert dest.read_bytes() == joined and not has_audio_apart(dest)


def test_the_audio_in_the_variants_own_segments_is_kept_first(site, tmp_path):
    base, root = site
    dest = fetched(f"{base}/master_inside.m3u8", tmp_path / "input")
    # Was: the variant's own audio ("Main", no URI) dropped, only the Commentary kept.
    assert audio_tags(dest) == [("eng", "Main"), ("fra", "Commentary")]
    clip, tone = audio_packets(root / "two.mp4")
    assert audio_packets(dest) == [clip, tone]


@pytest.mark.parametrize("form", ["subs", "subs_mapped"])
def test_a_variants_webvtt_subtitles_are_joined_in_step_with_its_video(site, form, tmp_path):
    """A master playlist's WebVTT subtitle rendition was left out. Its cues (each once, though
    a cue shown across segments may be repeated in each) join the video as a SubRip stream,
    on the video's clock, tagged as the master names them."""
    base, root = site
    dest = fetched(f"{base}/{form}/master.m3u8", tmp_path / "input")
    with av.open(str(dest)) as container:
        video = container.streams.video[0]
        first = min(p.pts * p.time_base for p in container.demux(video) if p.pts is not None)
        container.seek(0)
        (text,) = container.streams.subtitles
        assert text.codec_context.name in TEXT_SUBTITLES  # (SubRip: kept by every output)
        assert (text.metadata.get("language"), text.metadata.get("title")) == ("en", "English")
        cues = [(p.pts * p.time_base - first, bytes(p).decode())
                for p in container.demux(text) if p.size]  # fmt: skip
    assert [t for _, t in cues] == ["Hello & <i>welcome</i>", "Second"]  # (voices dropped)
    assert [float(at) for at, _ in cues] == pytest.approx([float(at) for at, _ in CUES],
                                                          abs=0.002)  # fmt: skip
    assert audio_packets(dest) == audio_packets(root / "two.mp4")  # its own audio, all of it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]


def test_webvtt_cues_stay_with_the_video_across_mpeg_ts_times_wrap(site, tmp_path):
    """Cues mapped to MPEG-TS times just before the 33-bit wrap (26.5 h) were put a day late,
    and those just after it, at the video's start: they are counted on past the wrap as the
    video's times are."""
    base, root = site
    dest = fetched(f"{base}/subs_wrapped/master.m3u8", tmp_path / "input")
    got = times(dest)
    assert got["video0"] == times(root / "two.mp4")["video0"]
    with av.open(str(dest)) as container:
        (text,) = container.streams.subtitles
        first = min(p.pts * p.time_base for p in container.demux(container.streams.video[0])
                    if p.pts is not None)  # fmt: skip
        container.seek(0)
        cues = [(float(p.pts * p.time_base - first), bytes(p).decode())
                for p in container.demux(text) if p.size]  # fmt: skip
    assert [t for _, t in cues] == ["Hello & <i>welcome</i>", "Second"]
    assert [at for at, _ in cues] == pytest.approx([float(at) for at, _ in CUES], abs=0.002)


def test_mpeg_ts_times_are_counted_on_past_the_wrap_as_ffmpeg_counts_them():
    from carn_stream.pipeline.media.webvtt_input import MPEGTS_WRAP, MpegtsClock

    minute = 60 * 90_000
    clock = MpegtsClock()  # starting 2 minutes before the wrap: later times move on
    assert [clock.unwrap(t) for t in (MPEGTS_WRAP - 2 * minute, MPEGTS_WRAP - 1, 5, 0)] == [
        MPEGTS_WRAP - 2 * minute, MPEGTS_WRAP - 1, MPEGTS_WRAP + 5, MPEGTS_WRAP]  # fmt: skip
    assert clock.earliest == 0
    clock = MpegtsClock()  # within a minute of it: earlier times move back, before 0
    assert [clock.unwrap(t) for t in (MPEGTS_WRAP - 90_000, 5, MPEGTS_WRAP - 2 * 90_000)] == [
        -90_000, 5, -2 * 90_000]  # fmt: skip
    assert clock.earliest == Fraction(-minute - 90_000, 90_000)
    clock = MpegtsClock()  # far from it: as they are
    assert [clock.unwrap(t) for t in (10 * minute, 10 * minute - 90_000, 30 * minute)] == [
        10 * minute, 10 * minute - 90_000, 30 * minute]  # fmt: skip


def test_the_variants_own_audio_alone_is_named_as_its_listing_names_it(site, tmp_path):
    """Where no audio came apart, the variant's own audio kept no name and language."""
    base, root = site
    dest = fetched(f"{base}/master_own.m3u8", tmp_path / "input")
    assert audio_tags(dest) == [("eng", "Main")]
    assert audio_packets(dest) == audio_packets(root / "clip.mp4")  # copied as it was
    assert len(times(dest)["video0"]) == FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]


@pytest.mark.parametrize("form", ["timeline", "numbered", "single"])
def test_a_dash_manifest_gives_its_video_with_its_audio(site, form, tmp_path):
    base, root = site
    dest = fetched(f"{base}/dash_{form}/manifest.mpd", tmp_path / "input")
    got, want = times(dest), times(root / "clip.mp4")
    assert len(got["video0"]) == FRAMES and got["video0"] == want["video0"]
    assert got["audio1"] == want["audio1"]  # in step with the video
    assert audio_tags(dest) == [("deu", "deu")]  # (named by its language: it has no label)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]


def _playlist(root: Path, name: str, text: str) -> str:
    (root / name).write_text(text)
    return name


SEGMENT = "#EXTINF:1.0,\nts/index0.ts\n"


@pytest.mark.parametrize(
    "text,reason",
    [
        (f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n{SEGMENT}",
         "is live (it has no #EXT-X-ENDLIST yet)"),
        (f"#EXTM3U\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"k.bin\"\n{SEGMENT}#EXT-X-ENDLIST\n",
         "is encrypted (METHOD=SAMPLE-AES); of encrypted HLS, only METHOD=AES-128 with its "
         "key at a URI is read"),
        ("#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"skd://k\",KEYFORMAT=\"com.apple.streaming"
         f"keydelivery\"\n{SEGMENT}#EXT-X-ENDLIST\n",
         "is encrypted (KEYFORMAT=com.apple.streamingkeydelivery)"),
        (f"#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"file:///etc/hostname\"\n{SEGMENT}"
         "#EXT-X-ENDLIST\n", "it names a file: URI; only http(s) URIs are followed"),
        ("#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"ts_aes/key1.bin\",IV=0x7\n#EXTINF:1,\n"
         "ts_aes/index7.ts\n#EXT-X-ENDLIST\n", "ts_aes/index7.ts does not decrypt with its key"),
        (f"#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"long.key\"\n{SEGMENT}#EXT-X-ENDLIST\n",
         "long.key is 32 bytes; an AES-128 key is 16"),
        (f"#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"two.mp4\"\n{SEGMENT}#EXT-X-ENDLIST\n",
         "over the limit of 1024 for a playlist, manifest, key or subtitle segment"),
        ("#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k.bin\"\n#EXT-X-BYTERANGE:100@0\n"
         "#EXTINF:1,\nts/index0.ts\n#EXT-X-ENDLIST\n", "lists encrypted byte ranges"),
        (f"#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k.bin\",IV=0xZZ\n{SEGMENT}"
         "#EXT-X-ENDLIST\n", "malformed IV: '0xZZ'"),
        (f"#EXTM3U\n#EXT-X-KEY:METHOD=AES-128\n{SEGMENT}#EXT-X-ENDLIST\n", "names no URI"),
        (f"#EXTM3U\n{SEGMENT}#EXT-X-DISCONTINUITY\n{SEGMENT}#EXT-X-ENDLIST\n",
         "splices separate streams (1 #EXT-X-DISCONTINUITY)"),
        ("#EXTM3U\n#EXT-X-MAP:URI=\"a.mp4\"\n#EXTINF:1,\nx.m4s\n#EXT-X-MAP:URI=\"b.mp4\"\n"
         "#EXTINF:1,\ny.m4s\n#EXT-X-ENDLIST\n", "changes its initialization section"),
        ("#EXTM3U\n#EXT-X-ENDLIST\n", "lists no segments"),
        ("#EXTM3U\n#EXT-X-BYTERANGE:10@0\n#EXTINF:1,\na.ts\n#EXT-X-BYTERANGE:10@0\n"
         "#EXTINF:1,\nb.ts\n#EXT-X-ENDLIST\n", "byte ranges of several files"),
        ("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
         "it names a file: URI; only http(s) URIs are followed"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nnested.m3u8\n",
         "a variant's playlist is itself a master playlist"),
        ("#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"Packed\",URI=\"packed.m3u8\"\n"
         "#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO=\"a\"\nts_renditions/video.m3u8\n",
         "audio rendition Packed's segments are packed audio"),
        ("#EXTM3U\n" + "".join(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="{n}",URI="no{n}.m3u8"\n'
                               for n in range(17))
         + '#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO="a"\nts/index.m3u8\n',
         "the variant's group has 17 audio renditions, over the limit of 16"),
        ("#EXTM3U\n#EXT-X-BYTERANGE:100@50\n#EXTINF:1,\nts/index0.ts\n#EXT-X-ENDLIST\n",
         "lists byte ranges that skip part of their file"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nfile:///etc/hosts\n",
         "it names a file: URI; only http(s) URIs are followed"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhuge.m3u8\n",
         "huge.m3u8 is 5242880 bytes, over the limit of 4194304 for a playlist, manifest, key "
         "or subtitle segment"),
    ],
    ids=["live", "sample-aes", "key-system", "file-key", "wrong-key", "key-not-16-bytes",
         "huge-key", "encrypted-ranges", "malformed-iv", "key-without-uri", "discontinuity",
         "two-maps", "empty", "ranges-of-two-files",
         "file-uri", "nested-master", "packed-audio", "too-many-renditions",
         "ranges-that-skip", "file-variant", "huge-playlist"],
)  # fmt: skip
def test_what_cannot_be_joined_is_refused_with_the_reason(site, text, reason, tmp_path):
    base, root = site
    _playlist(root, "nested.m3u8", "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nts/index.m3u8\n")
    _playlist(root, "packed.m3u8", "#EXTM3U\n#EXTINF:1,\na.aac\n#EXT-X-ENDLIST\n")
    _playlist(root, "huge.m3u8", "#EXTM3U\n" + "#" * (5 * 2**20 - 9) + "\n")
    name = _playlist(root, f"refused-{abs(hash(text))}.m3u8", text)
    with pytest.raises(FetchError) as caught:
        fetch(f"{base}/{name}", tmp_path / "input", POLICY)
    assert str(caught.value).startswith(f"{base}/{name}: ")
    assert reason in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # neither the playlist nor work files are left


def test_the_size_cap_counts_every_segment_of_the_input(site, tmp_path):
    base, root = site
    segments = sorted((root / "ts").glob("*.ts"))
    largest = max(p.stat().st_size for p in segments)
    total = sum(p.stat().st_size for p in segments)
    assert len(segments) == 2 and largest < total - 1000
    capped = FetchPolicy(allowed_hosts=POLICY.allowed_hosts, max_bytes=largest + 1000)
    with pytest.raises(FetchError, match=f"over the limit of {largest + 1000}"):
        fetch(f"{base}/ts/index.m3u8", tmp_path / "input", capped)  # each fits; not all
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("server_closes", [False, True], ids=["kept", "closed-while-idle"])
def test_a_listings_parts_come_over_one_kept_connection(site, server_closes, tmp_path):
    """A master playlist's playlists and parts (11 requests) over one connection where the
    server keeps it open (HTTP/1.1), as players fetch them; where it closes a connection
    without saying so, the next request goes over a new one, and nothing is lost."""
    base, root = site
    connections, requests = [], []

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            connections.append(self.client_address)
            super().setup()

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()
            if server_closes:
                self.close_connection = True  # (no "Connection: close" said)

    dest = fetch(f"{base}/master_ts.m3u8", tmp_path / "plain", POLICY)
    with serve_directory(root, Handler) as kept_base:
        fetch(f"{kept_base}/master_ts.m3u8", tmp_path / "input", POLICY)
    assert len(requests) == 11  # the master, 3 media playlists, 7 segments
    assert len(connections) == (len(requests) if server_closes else 1)
    assert (tmp_path / "input").read_bytes() == dest.read_bytes()
    for number in (0, 1):
        assert (tmp_path / f".input.audio{number}").read_bytes() == (
            tmp_path / f".plain.audio{number}").read_bytes()  # fmt: skip


def test_a_segment_on_a_private_address_is_refused_before_it_is_asked_for(site, tmp_path):
    base, root = site
    port = base.rsplit(":", 1)[1]
    # 127.0.0.2 is loopback (nothing leaves the machine), and not among the allowed hosts.
    name = _playlist(root, "elsewhere.m3u8", "#EXTM3U\n#EXTINF:1,\n"
                     f"http://127.0.0.2:{port}/ts/index0.ts\n#EXT-X-ENDLIST\n")  # fmt: skip
    with pytest.raises(FetchError, match=r"127\.0\.0\.2 is not public"):
        fetch(f"{base}/{name}", tmp_path / "input", POLICY)


def test_playlists_parse_as_the_rfc_writes_them():
    master = parse_playlist(
        '#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=5,CODECS="avc1.4d401f,mp4a.40.2",'
        'RESOLUTION=640x360\nhttps://cdn.example/a/v.m3u8?t=1\n'
        "#EXT-X-STREAM-INF:BANDWIDTH=9,RESOLUTION=640x360\nv2.m3u8\n",
        "https://site.example/p/master.m3u8",
    )  # fmt: skip
    assert isinstance(master, MasterPlaylist)
    best = master.best()  # equal pictures: the higher bandwidth
    assert best.uri == "https://site.example/p/v2.m3u8" and best.bandwidth == 9
    assert master.variants[0].codecs == "avc1.4d401f,mp4a.40.2"  # a quoted comma kept
    media = parse_playlist(
        "\ufeff#EXTM3U\n#EXT-X-MAP:URI=\"f.mp4\",BYTERANGE=\"100@0\"\n#EXTINF:2.5,\n"
        "#EXT-X-BYTERANGE:400\nf.mp4\n#EXTINF:2.5,\n#EXT-X-BYTERANGE:300\nf.mp4\n"
        "#EXT-X-ENDLIST\n", "http://h.example/x/index.m3u8",
    )  # fmt: skip
    assert isinstance(media, MediaPlaylist) and media.ended
    url = "http://h.example/x/f.mp4"
    assert media.maps == (Part(url, (100, 0)),)
    assert media.segments == (Part(url, (400, 100)), Part(url, (300, 500)))
    assert media.parts("media") == Listed((url,), end=800)  # the file, up to the last range
    with pytest.raises(ListingError, match="does not start with #EXTM3U"):
        parse_playlist("<html>", "http://h.example/")
    # A key applies from its tag on; without an IV, a segment's media sequence number is its.
    text = ("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:41\n#EXT-X-KEY:METHOD=AES-128,URI=\"k0\",IV=0x1\n"
            "#EXT-X-MAP:URI=\"i.mp4\"\n#EXT-X-KEY:METHOD=AES-128,URI=\"k1\"\n"
            "#EXTINF:2,\na.m4s\n#EXTINF:2,\nb.m4s\n"
            "#EXT-X-KEY:METHOD=AES-128,URI=\"/k2\",IV=0X00ff\n#EXTINF:2,\nc.m4s\n"
            "#EXT-X-KEY:METHOD=NONE\n#EXTINF:2,\nd.m4s\n#EXT-X-ENDLIST\n")  # fmt: skip
    encrypted = parse_playlist(text, "http://h.example/x/index.m3u8")
    k0, k1, k2 = "http://h.example/x/k0", "http://h.example/x/k1", "http://h.example/k2"
    assert encrypted.parts("media").keys == (
        PartKey(k0, (1).to_bytes(16, "big")), PartKey(k1, (41).to_bytes(16, "big")),
        PartKey(k1, (42).to_bytes(16, "big")), PartKey(k2, (255).to_bytes(16, "big")), None,
    )  # fmt: skip
    # The IV an encrypted initialization section needs (RFC 8216 4.3.2.4), and the media
    # sequence a key without one takes it from: refused where missing; a malformed media
    # sequence that no key needs is no matter.
    for changed, reason in ((("k0\",IV=0x1", "k0\""), "encrypted #EXT-X-MAP has no IV"),
                            (("SEQUENCE:41", "SEQUENCE:-1"), "no valid #EXT-X-MEDIA-SEQUENCE")):
        with pytest.raises(ListingError, match=reason):
            parse_playlist(text.replace(*changed), "http://h.example/x/index.m3u8")
    plain = parse_playlist(f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:x\n{SEGMENT}#EXT-X-ENDLIST\n",
                           "http://h.example/")  # fmt: skip
    assert plain.parts("media").keys == ()


MPD = """<?xml version="1.0"?>
<!-- a packager's comment -->
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT9.5S">
 <BaseURL>https://cdn.example/title/</BaseURL>
 <Period>
  <AdaptationSet contentType="video" mimeType="video/mp4">
   <SegmentTemplate timescale="1000" duration="4000" startNumber="0"
      initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$Number%03d$.m4s"/>
   <Representation id="v360" bandwidth="800000" width="640" height="360"/>
   <Representation id="v720" bandwidth="2400000" width="1280" height="720"/>
   <Representation id="v720lo" bandwidth="1200000" width="1280" height="720"/>
  </AdaptationSet>
  <AdaptationSet contentType="audio" lang="en">
   <Representation id="a64" bandwidth="64000" codecs="mp4a.40.2">
    <BaseURL>en-64.mp4</BaseURL>
   </Representation>
   <Representation id="a128" bandwidth="128000" codecs="mp4a.40.2">
    <BaseURL>en-128.mp4</BaseURL>
   </Representation>
  </AdaptationSet>
  <AdaptationSet mimeType="audio/mp4" lang="fr">
   <Role schemeIdUri="urn:mpeg:dash:role:2011" value="main"/>
   <Label>Français</Label>
   <Representation id="fr" bandwidth="96000">
    <SegmentTemplate timescale="10" initialization="fr/i.mp4" media="fr/$Time$.m4s">
     <SegmentTimeline><S t="5" d="40" r="1"/><S d="15"/></SegmentTimeline>
    </SegmentTemplate>
   </Representation>
  </AdaptationSet>
  <AdaptationSet contentType="text" lang="en">
   <Representation id="subs" bandwidth="1000"><BaseURL>en.vtt</BaseURL></Representation>
  </AdaptationSet>
 </Period>
</MPD>"""


def test_a_dash_manifest_is_read_as_the_standard_writes_it():
    listing = dash_listing(MPD, "https://site.example/watch/manifest.mpd")
    cdn = "https://cdn.example/title/"
    # The most pixels, then the highest bandwidth; 9.5 s in segments of 4 s: 3, from 0.
    assert listing.video == Listed((f"{cdn}v720/init.mp4", f"{cdn}v720/000.m4s",
                                    f"{cdn}v720/001.m4s", f"{cdn}v720/002.m4s"))  # fmt: skip
    # Each audio adaptation set's best representation, the main one first; text left out.
    french = (f"{cdn}fr/i.mp4", f"{cdn}fr/5.m4s", f"{cdn}fr/45.m4s", f"{cdn}fr/85.m4s")
    assert listing.audio == (ListedAudio(Listed(french), "Français", "fr"),
                             ListedAudio(Listed((f"{cdn}en-128.mp4",)), "en", "en"))  # fmt: skip


@pytest.mark.parametrize(
    "change,reason",
    [
        (('type="static"', 'type="dynamic"'), 'is live (type="dynamic")'),
        (("</Period>", "</Period><Period/>"), "has 2 periods"),
        (('<Representation id="v720" ', '<ContentProtection/><Representation id="v720" '),
         "representation 'v720' is protected (DRM)"),
        (('contentType="video" mimeType="video/mp4"', 'contentType="image"'),
         "lists no video"),
        (('duration="4000"', ""), "neither a SegmentTimeline nor a segment duration"),
        (('timescale="1000" duration="4000"', 'timescale="10000" duration="1"'),
         "95000 segments, over the limit of 20000"),
        (("$Number%03d$", "$SubNumber$"), "names $SubNumber$, which is not read"),
        (("</MPD>", ""), "not well-formed XML"),
        (('mediaPresentationDuration="PT9.5S"', 'mediaPresentationDuration="9.5s"'),
         "malformed duration: '9.5s'"),
        (("<BaseURL>en-128.mp4</BaseURL>", '<BaseURL>en-128.mp4</BaseURL><SegmentList>'
          '<Initialization range="0-99"/><SegmentURL mediaRange="200-299"/></SegmentList>'),
         "lists byte ranges that skip part of their file"),
    ],
    ids=["live", "two-periods", "drm", "no-video", "no-count", "too-many", "unknown-name",
         "not-xml", "bad-duration", "ranges-that-skip"],
)  # fmt: skip
def test_what_a_manifest_cannot_give_is_refused_with_the_reason(change, reason):
    with pytest.raises(ListingError) as caught:
        dash_listing(MPD.replace(*change), "https://site.example/manifest.mpd")
    assert reason in str(caught.value)


def test_the_cli_upscales_a_local_master_playlist_with_its_audio(site, weights_path, tmp_path):
    _, root = site
    out = tmp_path / "up.mkv"
    result = subprocess.run(
        [sys.executable, "-m", "carn_stream.cli", "upscale", str(root / "master_ts.m3u8"),
         str(out), "--scale", "2", "--precision", "fp32", "--weights", str(weights_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "master_ts.m3u8 is an HLS playlist: joining what it lists into" in result.stderr
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (320, 180)
        assert sum(1 for _ in container.decode(video=0)) == FRAMES
    assert audio_tags(out) == [("deu", "Deutsch"), ("eng", "English")]
    clip, tone = audio_packets(root / "two.mp4")
    assert audio_packets(out) == [tone, clip]


def test_the_service_reads_a_listing_from_a_url_only(site, tmp_path):
    _, root = site
    local = FetchPolicy(allow_local_files=True)
    with pytest.raises(FetchError, match="an HLS playlist is read from an http"):
        fetch(f"file://{root / 'master_ts.m3u8'}", tmp_path / "input", local)
    with pytest.raises(FetchError, match="a DASH manifest is read from an http"):
        fetch(str(root / "dash_single" / "manifest.mpd"), tmp_path / "input", local)


class _Unsized(http.server.SimpleHTTPRequestHandler):
    """``/master.m3u8`` names ``/endless.m3u8``: a playlist sent without a length, 64 MiB
    (``sent`` counts the bytes written before the client hung up)."""

    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()  # no length: the body ends when the connection does
        if self.path == "/master.m3u8":
            self.wfile.write(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nendless.m3u8\n")
            return
        try:
            self.wfile.write(b"#EXTM3U\n")
            for _ in range(512):  # 64 MiB at most
                self.wfile.write(b"#" * (1 << 17) + b"\n")
                type(self).sent += (1 << 17) + 1
        except OSError:
            pass  # the client stopped reading

    def log_message(self, *args) -> None:
        pass


def test_a_playlist_without_a_length_is_cut_off_as_it_passes_the_limit(tmp_path):
    _Unsized.sent = 0  # (a class's count: this run's only)
    with serve_directory(tmp_path, _Unsized) as base, pytest.raises(FetchError) as caught:
        fetch(f"{base}/master.m3u8", tmp_path / "input", POLICY)
    said = "a playlist, manifest, key or subtitle segment is over the limit of 4194304 bytes"
    assert said in str(caught.value)
    assert _Unsized.sent < 32 * 2**20  # not read to its end (64 MiB)


def test_the_cli_refuses_a_local_listing_that_names_its_output(site, weights_path, tmp_path):
    _, root = site
    folder = tmp_path / "title"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes((root / "clip.mp4").read_bytes())
    manifest = folder / "manifest.mpd"
    manifest.write_text(
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period><AdaptationSet '
        'contentType="video"><Representation id="v" bandwidth="1"><BaseURL>clip.mp4</BaseURL>'
        "</Representation></AdaptationSet></Period></MPD>"
    )
    before = (folder / "clip.mp4").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "carn_stream.cli", "upscale", str(manifest),
         str(folder / "clip.mp4"), "--scale", "2", "--overwrite", "--precision", "fp32",
         "--weights", str(weights_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"{manifest}: it names {folder / 'clip.mp4'}, which its output would replace; choose "
        "another output"
    ), result.stderr
    assert (folder / "clip.mp4").read_bytes() == before


def test_webvtt_segments_read_as_the_standard_writes_them():
    from carn_stream.pipeline.media.webvtt_input import Cue, Cues, read_segment

    text = ("\ufeffWEBVTT - a title\r\nX-TIMESTAMP-MAP=MPEGTS:180000,LOCAL:01:00:00.000\r\n\r\n"
            "STYLE\r\n::cue { color: yellow }\r\n\r\nNOTE a note --> not a cue\r\n\r\n"
            "cue-1\r\n01:00:01.500 --> 01:00:02.000 align:start line:0\r\n"
            "<v.loud Ann>Hi</v> <i.x>there</i> &lt;3\r\n\r\n"
            "01:00:02.000-->01:00:03.000\r\nno spaces\r\n\r\n"
            "1:00:03 --> 1:00:04\r\nunreadable timing: skipped\r\n\r\n"
            "00:59:00.000 --> 00:59:01.000\r\nbefore time 0: dropped\r\n")  # fmt: skip
    cues = read_segment(text, "s.vtt")
    assert cues == [Cue(Fraction(7, 2), Fraction(4), "Hi <i>there</i> <3"),
                    Cue(Fraction(4), Fraction(5), "no spaces")]  # fmt: skip
    gathered = Cues("the subtitle stream 'en'")
    gathered.add(cues)
    gathered.add(cues[1:])  # a cue shown across segments, repeated in the next
    assert gathered.in_order() == cues
    # Markup that never closes is read in linear time (a 1 MiB segment of it took minutes).
    assert read_segment("WEBVTT\n\n00:00.000 --> 00:01.000\n" + "<a" * 200_000, "x") == [
        Cue(Fraction(0), Fraction(1), "<a" * 200_000)]  # fmt: skip
    with pytest.raises(ListingError, match="is not WebVTT"):
        read_segment("<html>", "page.vtt")


def test_a_master_with_more_subtitles_than_the_limit_gives_the_first_of_them():
    """Subtitles are not worth refusing a video for: past the limit they are left out."""
    from carn_stream.pipeline.media.hls_input import hls_listing
    from carn_stream.pipeline.media.listing import MAX_SUBTITLES

    names = [f"t{n}" for n in range(MAX_SUBTITLES + 1)]
    master = "#EXTM3U\n" + "".join(
        f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="s",NAME="{n}",URI="{n}.m3u8"\n' for n in names
    ) + '#EXT-X-STREAM-INF:BANDWIDTH=1,RESOLUTION=8x8,SUBTITLES="s"\nv.m3u8\n'
    read: list[str] = []

    def reader(uri: str) -> tuple[str, str]:
        read.append(uri.rsplit("/", 1)[1])
        segment = "v.ts" if uri.endswith("/v.m3u8") else "a.vtt"
        return (f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{segment}\n#EXT-X-ENDLIST\n",
                uri)  # fmt: skip

    listing = hls_listing(master, "http://127.0.0.1/m.m3u8", reader)
    assert [t.name for t in listing.subtitles] == names[:MAX_SUBTITLES]
    assert read == ["v.m3u8"] + [f"{n}.m3u8" for n in names[:MAX_SUBTITLES]]  # (the rest unread)
