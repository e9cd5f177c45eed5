"""Test media made from the real clips with PyAV: trims, small versions, VFR, 10-bit, rotated."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from carn_stream.pipeline.media.encode import CheckedEncoder


def decode_rgb(path: Path, limit: int | None = None) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        out = []
        for frame in c.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if limit and len(out) >= limit:
                break
        return out


def decode_y(path: Path, bits: int = 8) -> list[np.ndarray]:
    """The luma plane of every YUV frame of ``bits`` (8, or 10 for 16-bit samples), as stored
    (no range conversion)."""
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    with av.open(str(path)) as c:
        out = []
        for f in c.decode(video=0):
            plane = f.planes[0]
            assert (f.format.name == "yuv420p") == (bits == 8), f.format.name
            rows = np.frombuffer(plane, dtype).reshape(plane.height, -1)
            out.append(rows[:, : plane.width].astype(int))
        return out


@dataclass
class VideoFacts:
    width: int
    height: int
    time_base: Fraction
    pts: list[int]
    rotation: int
    colorspace: int
    color_range: int
    audio_packets: list[bytes]
    audio_codec: str | None
    duration: float


def facts(path: Path) -> VideoFacts:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        tb, width, height = v.time_base, v.codec_context.width, v.codec_context.height
        frames = list(c.decode(video=0))
        pts = [f.pts for f in frames]
    with av.open(str(path)) as c:
        audio = c.streams.audio[0] if c.streams.audio else None
        packets = [bytes(p) for p in c.demux(audio) if p.size] if audio is not None else []
        codec = audio.codec_context.name if audio is not None else None
    last = frames[-1]
    duration = float((last.pts + (last.duration or 0)) * tb)
    return VideoFacts(
        width,
        height,
        tb,
        pts,
        int(frames[0].rotation),
        int(frames[0].colorspace),
        int(frames[0].color_range),
        packets,
        codec,
        duration,
    )


def write_clip(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    rate: Fraction = Fraction(25),
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    rotation: int = 0,
    colorspace: int | None = None,
    primaries: int | None = None,
    transfer: int | None = None,
    audio_from: Path | None = None,
    audio_seconds: float | None = None,
    container_format: str | None = None,
) -> Path:
    """Encode RGB frames (HxWx3 uint8) into ``path``; optionally copy the audio of another file."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    src = av.open(str(audio_from)) if audio_from else None
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        tb = time_base or 1 / rate
        stream.time_base = tb
        stream.codec_context.time_base = tb
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if primaries is not None:
            stream.codec_context.color_primaries = primaries
        if transfer is not None:
            stream.codec_context.color_trc = transfer
        stream.codec_context.options = options or {"crf": "12", "preset": "veryfast"}
        if codec in ("ffv1", "libx264rgb", "png"):
            stream.codec_context.options = options or {}
        if rotation:
            stream.set_display_rotation(rotation)
        video = CheckedEncoder(stream)  # (libx265's times for two frames)
        a_in = a_out = None
        if src is not None and src.streams.audio:
            a_in = src.streams.audio[0]
            a_out = out.add_stream_from_template(a_in)
        step = round(1 / (rate * tb))
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if colorspace is not None:
                vf = vf.reformat(format=pix_fmt, dst_colorspace=colorspace)
            vf.pts = pts[i] if pts is not None else i * step
            vf.time_base = tb
            out.mux(video.encode(vf))
        out.mux(video.encode(None))
        if a_in is not None:
            for packet in src.demux(a_in):
                if packet.dts is None:
                    continue
                if audio_seconds is not None and packet.pts * a_in.time_base > audio_seconds:
                    break
                packet.stream = a_out
                out.mux(packet)
    if src is not None:
        src.close()
    return path


def downscale_frames(frames: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Resize RGB frames to (w, h) with FFmpeg's area filter (for small test clips)."""
    out = []
    for rgb in frames:
        vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        out.append(vf.reformat(width=size[0], height=size[1], interpolation="AREA").to_ndarray())
    return out


#: The HDR10 metadata of :func:`write_hdr10_clip`'s clips: a P3 (D65) mastering display of
#: 1000 to 0.005 cd/m2, MaxCLL 1000 and MaxFALL 400 cd/m2; as libx265 takes it, and as
#: ``StaticHdr`` holds it (green, blue, red, white point, then luminance, high and low).
HDR10_X265 = "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)" \
    "L(10000000,50):max-cll=1000,400"
HDR10_MASTERING = (13250, 34500, 7500, 3000, 34000, 16000, 15635, 16450, 10000000, 50)
HDR10_LIGHT_LEVEL = (1000, 400)


def write_hdr10_clip(path: Path, frames: list[np.ndarray], keyint: int = 25,
                     audio_from: Path | None = None, audio_seconds: float | None = None) -> Path:
    """An HDR10 clip as a camera or a studio delivers one: HEVC Main 10, BT.2020 primaries and
    matrix, PQ transfer, with mastering display and light level SEI messages at every
    keyframe (:data:`HDR10_X265`), from RGB frames (their picture, not an HDR grade)."""
    options = {"crf": "20", "preset": "ultrafast",
               "x265-params": f"log-level=error:keyint={keyint}:min-keyint={keyint}:{HDR10_X265}"}
    write_clip(path, frames, codec="libx265", pix_fmt="yuv420p10le", colorspace=9,
               primaries=9, transfer=16, options=options, audio_from=audio_from,
               audio_seconds=audio_seconds)  # fmt: skip
    return path


def write_exif_mjpeg(path: Path, frames: list[np.ndarray]) -> Path:
    """An MJPEG AVI as some cameras write it: each JPEG with an EXIF block (orientation 1),
    which FFmpeg hands on as side data of a kind PyAV's list may not know."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, 1, 0)  # Orientation (SHORT, 1 value): 1
    tiff = b"II*\0\x08\0\0\0" + struct.pack("<H", 1) + entry + b"\0\0\0\0"
    app1 = b"\xff\xe1" + struct.pack(">H", 8 + len(tiff)) + b"Exif\0\0" + tiff
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuvj420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                data = bytes(packet)
                with_exif = av.Packet(data[:2] + app1 + data[2:])  # after the JPEG's SOI
                with_exif.pts, with_exif.dts = packet.pts, packet.dts
                with_exif.time_base, with_exif.is_keyframe = packet.time_base, True
                with_exif.stream = stream
                out.mux(with_exif)
    return path


def write_audio_only(source: Path, dest: Path) -> Path:
    """Copy the first audio stream of ``source`` into ``dest`` (a file with no video)."""
    with av.open(str(source)) as src, av.open(str(dest), "w") as out:
        stream = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dest


def write_rich_mkv(
    path: Path,
    frames: list[np.ndarray],
    *,
    audio_from: Path,
    audio_seconds: float,
    sample_aspect_ratio: Fraction = Fraction(4, 3),
    rate: Fraction = Fraction(25),
    audio_encoder: str | None = None,
    audio_layout: str = "stereo",
) -> Path:
    """An MKV holding more than video and audio: a title, a SubRip subtitle stream (English,
    default and forced) with two cues, two chapters, a font attachment, language tags (video
    ``jpn``, audio ``fra``) and an anamorphic sample aspect ratio. The audio is
    ``audio_from``'s, copied, or encoded with ``audio_encoder`` (48 kHz, 16 bits, in
    ``audio_layout``)."""
    h, w = frames[0].shape[:2]
    seconds = Fraction(len(frames)) / rate
    with av.open(str(audio_from)) as src, av.open(str(path), "w", format="matroska") as out:
        out.metadata["title"] = "A rich test clip"
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.codec_context.sample_aspect_ratio = sample_aspect_ratio
        video.codec_context.options = {"crf": "12", "preset": "veryfast", "g": "10"}
        video.metadata["language"] = "jpn"
        a_in = src.streams.audio[0]
        if audio_encoder is None:
            audio = out.add_stream_from_template(a_in)
        else:
            audio = out.add_stream(audio_encoder, rate=48000)
            audio.layout = audio_layout
            resampler = av.AudioResampler(format="s16", layout=audio_layout, rate=48000)
        audio.metadata["language"] = "fra"
        subs = out.add_mux_stream("subrip")
        subs.metadata.update({"language": "eng", "title": "English"})
        subs.disposition = av.stream.Disposition.default | av.stream.Disposition.forced
        out.add_attachment("font.ttf", "application/x-truetype-font", b"\x00\x01\x00\x00" * 64)
        half = seconds / 2
        out.set_chapters([
            {"id": 1, "start": 0, "end": int(half * 1000), "time_base": Fraction(1, 1000),
             "metadata": {"title": "Opening"}},
            {"id": 2, "start": int(half * 1000), "end": int(seconds * 1000),
             "time_base": Fraction(1, 1000), "metadata": {"title": "Ending"}},
        ])  # fmt: skip
        cues = [(Fraction(1, 10), "Hello <i>there</i>"), (half, "Second cue")]
        pending = list(cues)
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = i
            vf.time_base = 1 / rate
            out.mux(video.encode(vf))
            while pending and pending[0][0] <= i / rate:
                at, text = pending.pop(0)
                packet = av.Packet(text.encode())
                packet.pts = packet.dts = int(at * 1000)
                packet.duration = 400
                packet.time_base = Fraction(1, 1000)
                packet.stream = subs
                out.mux(packet)
        out.mux(video.encode(None))
        for packet in src.demux(a_in):
            if packet.dts is None:
                continue
            if packet.pts * a_in.time_base > audio_seconds:
                break
            if audio_encoder is None:
                packet.stream = audio
                out.mux(packet)
                continue
            for frame in packet.decode():
                for chunk in resampler.resample(frame):
                    out.mux(audio.encode(chunk))
        if audio_encoder is not None:
            out.mux(audio.encode(None))
    return path


def with_cover_art(
    source: Path, path: Path, codec: str = "png", first: bool = False
) -> tuple[Path, bytes]:
    """``source``'s streams and a 32x32 picture (``codec``: png, mjpeg, gif) as cover art in
    ``path`` (its suffix names the container): an attached picture, or in Matroska a
    ``cover.*`` attachment (which FFmpeg reads back as one); returns the picture too. ``first``
    (MP4): the metadata that holds it comes before the tracks, as some writers put it, and
    FFmpeg then lists the picture as the first stream."""
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16] = (200, 40, 40)
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.time_base = 32, 32, Fraction(1, 25)
    encoder.pix_fmt = {"png": "rgb24", "gif": "rgb8"}.get(codec, "yuvj420p")
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=encoder.pix_fmt)
    picture = b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        if path.suffix == ".mkv":
            kind = {"png": "image/png", "gif": "image/gif"}.get(codec, "image/jpeg")
            out.add_attachment(f"cover.{kind.split('/')[1]}", kind, picture)
        else:
            cover = out.add_stream(codec)
            cover.width, cover.height, cover.pix_fmt = 32, 32, encoder.pix_fmt
            cover.disposition = av.stream.Disposition.attached_pic
            packet = av.Packet(picture)
            packet.stream = cover
            out.mux(packet)
        for packet in src.demux():
            if packet.dts is not None and packet.size:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    if first:
        _metadata_first(path)
    return path, picture


def _metadata_first(path: Path) -> None:
    """Move the ``udta`` box before the tracks inside ``moov`` (same size: no offset moves)."""
    from carn_stream.pipeline.media.isobmff import boxes

    data = path.read_bytes()
    _, start, end, header = next(b for b in boxes(data, 0, len(data)) if b[0] == b"moov")
    inner = sorted(boxes(data, start + header, end), key=lambda box: box[0] != b"udta")
    path.write_bytes(data[: start + header] + b"".join(data[a:z] for _, a, z, _ in inner)
                     + data[end:])  # fmt: skip


def with_pcm_audio(source: Path, path: Path) -> Path:
    """``source``'s video packets and its audio as 16-bit PCM (a codec MPEG-TS segments and MP4
    cannot carry, so the pipeline transcodes it) in a Matroska file."""
    return with_audio_encoded(source, path, "pcm_s16le", "s16")


def with_mp3_audio(source: Path, path: Path, rate: int = 48000) -> Path:
    """``source``'s video packets and its audio encoded as MP3 (stereo at ``rate``), in
    ``path`` (its suffix names the container)."""
    return with_audio_encoded(source, path, "libmp3lame", "s16p", rate)


def with_audio_encoded(
    source: Path, path: Path, encoder: str, sample_format: str, rate: int = 48000
) -> Path:
    """``source``'s video packets, and its audio decoded and encoded with ``encoder`` (stereo
    at ``rate``), in ``path`` (its suffix names the container)."""
    with av.open(str(source)) as c, av.open(str(path), "w") as out:
        v_out = out.add_stream_from_template(c.streams.video[0])
        a_out = out.add_stream(encoder, rate=rate)
        a_out.layout = "stereo"
        resampler = av.AudioResampler(format=sample_format, layout="stereo", rate=rate)
        for packet in c.demux():
            if packet.stream.type == "video" and packet.dts is not None:
                packet.stream = v_out
                out.mux(packet)
            elif packet.stream.type == "audio":
                for frame in packet.decode():
                    for chunk in resampler.resample(frame):
                        out.mux(a_out.encode(chunk))
        out.mux(a_out.encode(None))
    return path


def with_tone(
    source: Path, path: Path, lead: float = 0.0, tail: float = 5.0, codec: str = "aac"
) -> Path:
    """``source``'s video packets moved ``lead`` seconds later, and a 440 Hz tone (48 kHz
    stereo, encoded with ``codec``) from 0 to ``lead + tail`` s: with a lead, a recording
    whose audio starts long before its picture."""
    rate, step = 48000, 1024
    with av.open(str(source)) as c, av.open(str(path), "w") as out:
        video = out.add_stream_from_template(c.streams.video[0])
        audio = out.add_stream(codec, rate=rate)
        audio.layout = "stereo"
        planar = codec == "aac"
        for start in range(0, round((lead + tail) * rate), step):
            tone = 0.5 * np.sin(np.arange(start, start + step) * 2 * np.pi * 440 / rate)
            if planar:
                samples, fmt = np.stack([tone, tone]).astype(np.float32), "fltp"
            else:
                samples, fmt = (np.repeat(tone, 2)[None] * 32767).astype(np.int16), "s16"
            frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
        for packet in c.demux(video=0):
            if packet.dts is not None:
                later = round(lead / packet.time_base)
                packet.pts, packet.dts = packet.pts + later, packet.dts + later
                packet.stream = video
                out.mux(packet)
    return path


def with_second_audio(
    source: Path, path: Path, seconds: float, *, codec: str = "aac", language: str = "eng",
    title: str | None = "Commentary", start: float = 0.0, layout: str = "stereo",
) -> Path:
    """``source``'s video, audio and subtitle streams copied (with their tags), and one more
    audio stream after them: a 660 Hz tone (48 kHz, in ``layout``, encoded with ``codec``)
    from ``start`` to ``seconds``, tagged ``language`` and ``title`` (``path``'s suffix names
    the container)."""
    rate, step = 48000, 1024
    with av.open(str(source)) as c, av.open(str(path), "w") as out:
        copies = {}
        for stream in c.streams:
            if stream.type in ("video", "audio", "subtitle"):
                copies[stream.index] = out.add_stream_from_template(stream)
                copies[stream.index].metadata.update(
                    {k: v for k, v in stream.metadata.items() if k in ("language", "title")})
                copies[stream.index].disposition = stream.disposition
        tone = out.add_stream(codec, rate=rate)
        tone.layout = layout
        tone.metadata["language"] = language
        if title:
            tone.metadata["title"] = title
        for packet in c.demux(list(c.streams)):
            if packet.size and packet.stream.index in copies:  # (no flush packets)
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
        resampler = av.AudioResampler(format=tone.codec_context.format.name, layout=layout,
                                      rate=rate)  # fmt: skip
        for at in range(round(start * rate), round(seconds * rate), step):
            wave = 0.4 * np.sin(np.arange(at, at + step) * 2 * np.pi * 660 / rate)
            frame = av.AudioFrame.from_ndarray(np.stack([wave, wave]).astype(np.float32),
                                               format="fltp", layout="stereo")  # fmt: skip
            frame.sample_rate, frame.pts = rate, at
            for chunk in resampler.resample(frame):
                out.mux(tone.encode(chunk))
        out.mux(tone.encode(None))
    return path


def concat_h264(path: Path, parts: Sequence[Path], container_format: str = "mpegts") -> Path:
    """The H.264 video of ``parts`` one after the other in one stream, packets copied (each part
    with its own parameter sets, in-band): a stream whose header gives the first part's size
    and whose pictures change size where the next part starts."""
    from av.bitstream import BitStreamFilterContext

    with av.open(str(path), "w", format=container_format) as out:
        stream = None
        offset = 0
        for part in parts:
            with av.open(str(part)) as c:
                video = c.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(video)
                annexb = BitStreamFilterContext("h264_mp4toannexb", video)
                packets = [p for p in c.demux(video) if p.dts is not None]
                end = offset
                for packet in [*(q for p in packets for q in annexb.filter(p)),
                               *annexb.filter(None)]:  # fmt: skip
                    packet.pts += offset
                    packet.dts += offset
                    end = max(end, packet.pts + (packet.duration or 0))
                    packet.stream = stream
                    out.mux(packet)
                offset = end
    return path


def write_endless_mkv(path: Path, packets: int, step_ms: int = 40) -> Path:
    """A Matroska file of ``packets`` tiny H.264 packets ``step_ms`` apart, written as a live
    stream: its header gives no duration (nothing says how long it is until it is read)."""
    tiny = write_clip(path.with_suffix(".seed.mp4"), [np.zeros((16, 16, 3), np.uint8)] * 2,
                      options={"preset": "ultrafast", "g": "250"})  # fmt: skip
    with av.open(str(tiny)) as seed, av.open(str(path), "w", format="matroska",
                                             options={"live": "1"}) as out:  # fmt: skip
        video = seed.streams.video[0]
        key, delta = (bytes(p) for p in list(seed.demux(video))[:2])
        stream = out.add_stream_from_template(video)
        stream.time_base = Fraction(1, 1000)
        for i in range(packets):
            packet = av.Packet(key if i % 250 == 0 else delta)
            packet.pts = packet.dts = i * step_ms
            packet.time_base = Fraction(1, 1000)
            packet.is_keyframe = i % 250 == 0
            packet.stream = stream
            out.mux(packet)
    tiny.unlink()
    return path


def remux_across_the_wrap(source: Path, path: Path, seconds_before: float) -> Path:
    """``source`` (H.264 and AAC) remuxed to MPEG-TS with its timestamps moved so that the
    33-bit clock wraps ``seconds_before`` in: FFmpeg reads the part before the wrap as
    negative times, as it does for a broadcast recording cut there."""
    from av.bitstream import BitStreamFilterContext

    shift = 2**33 - round(seconds_before * 90000)
    with av.open(str(source)) as c, av.open(str(path), "w", format="mpegts") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in (*c.streams.video,
                                                                       *c.streams.audio)}
        annexb = BitStreamFilterContext("h264_mp4toannexb", c.streams.video[0])
        for packet in c.demux(list(c.streams.video) + list(c.streams.audio)):
            if packet.dts is None:
                continue
            stream = packet.stream
            moved = annexb.filter(packet) if stream.type == "video" else [packet]
            for p in moved:
                p.pts = round(p.pts * stream.time_base * 90000) + shift
                p.dts = round(p.dts * stream.time_base * 90000) + shift
                p.time_base = Fraction(1, 90000)
                p.stream = streams[stream.index]
                out.mux(p)
    return path


def remux_cut(
    source: Path, path: Path, *, start: float = 0.0, drop_video: int = 0,
    chapters: list[dict] | None = None,
) -> Path:  # fmt: skip
    """``source``'s packets copied into ``path``: timestamps moved ``start`` seconds earlier
    (an MP4 then gets an edit list that starts mid-GOP, as ``ffmpeg -ss START -c copy``
    makes), and the first ``drop_video`` video packets left out (a recording cut mid-GOP);
    with ``chapters`` (PyAV's chapter dicts)."""
    with av.open(str(source)) as c, av.open(str(path), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in (*c.streams.video,
                                                                       *c.streams.audio)}
        if chapters:
            out.set_chapters(chapters)
        video = 0
        for packet in c.demux(list(c.streams.video) + list(c.streams.audio)):
            if packet.dts is None:
                continue
            if packet.stream.type == "video":
                video += 1
                if video <= drop_video:
                    continue
            shift = round(start / packet.time_base)
            packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return path



def raw_stream(source: Path, path: Path) -> Path:
    """The video packets of ``source`` (H.264 or HEVC in MP4/MKV) copied as they are into a raw
    Annex B stream, as cameras write them: no container, no timestamps."""
    with av.open(str(source)) as src:
        video = src.streams.video[0]
        codec = video.codec_context.name
        with av.open(str(path), "w", format=codec) as out:
            stream = out.add_stream_from_template(video)
            annexb = av.bitstream.BitStreamFilterContext(f"{codec}_mp4toannexb", video, stream)
            for packet in src.demux(video):
                for filtered in annexb.filter(packet if packet.size else None):
                    filtered.stream = stream
                    out.mux(filtered)
    return path


def raw_stream_from(raw: Path, path: Path, packet: int) -> Path:
    """A raw Annex B stream cut at its ``packet``-th packet, its parameter sets first: a
    recording joined mid-stream."""
    with av.open(str(raw)) as src:
        video = src.streams.video[0]
        head = bytes(video.codec_context.extradata or b"")
        packets = [bytes(p) for p in src.demux(video) if p.size]
    path.write_bytes(head + b"".join(packets[packet:]))
    return path


def write_hls(
    source: Path, folder: Path, *, kinds: str = "va", fmp4: bool = False,
    single_file: bool = False, renditions: bool = False, segment_seconds: float = 1.0,
    encrypt: bool = False,
) -> Path:  # fmt: skip
    """``source``'s video (``v`` in ``kinds``) and first audio stream (``a``) copied by FFmpeg's
    own HLS muxer into ``folder`` as a finished (VOD) media playlist, ``index.m3u8``, which it
    returns: MPEG-TS segments, or fragmented MP4 ones after an initialization section
    (``fmp4``); with ``single_file``, byte ranges of one file. With ``renditions``, the video
    and each audio stream as media playlists of their own on one clock, as packagers make
    them: ``video.m3u8``, ``audio0.m3u8``, ... (returns the folder). With ``encrypt``, each
    segment is encrypted with AES-128 (FFmpeg's muxer does so for MPEG-TS only): the first with
    the key ``key0.bin`` (16 bytes of 0), the rest with ``key1.bin`` (16 bytes of 1), media
    sequence numbers counted from 7, each segment's number its IV."""
    folder.mkdir(parents=True, exist_ok=True)
    options = {"hls_time": f"{segment_seconds:g}", "hls_playlist_type": "vod",
               "hls_segment_type": "fmp4" if fmp4 else "mpegts"}  # fmt: skip
    if single_file:
        options["hls_flags"] = "single_file"
    if encrypt:
        _key_info(folder, 0)
        options.update({"hls_key_info_file": str(folder / "keyinfo"), "start_number": "7",
                        "hls_flags": "periodic_rekey"})  # (reads the key file each segment)
    playlist = folder / "index.m3u8"
    with av.open(str(source)) as c:
        audio = len(c.streams.audio) if renditions else 1
    if renditions:
        suffix = "m4s" if fmp4 else "ts"
        names = " ".join(f"a:{n},name:audio{n}" for n in range(audio))
        options.update({"var_stream_map": f"v:0,name:video {names}",
                        "hls_segment_filename": f"{folder}/%v_%03d.{suffix}",
                        "hls_fmp4_init_filename": "%v_init.mp4"})  # fmt: skip
        playlist = folder / "%v.m3u8"
    with av.open(str(source)) as c, av.open(str(playlist), "w", format="hls",
                                            options=options) as out:  # fmt: skip
        taken = [*c.streams.video[:1]] * ("v" in kinds) + [*c.streams.audio[:audio]] * (
            "a" in kinds)
        streams = {s.index: out.add_stream_from_template(s) for s in taken}
        rekeyed = False
        for packet in c.demux(taken):
            if packet.dts is None:
                continue
            if (encrypt and not rekeyed and packet.stream.type == "video" and packet.is_keyframe
                    and packet.pts * packet.time_base >= segment_seconds):  # fmt: skip
                _key_info(folder, 1)  # (for the segment this keyframe starts, and after)
                rekeyed = True
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    if encrypt:
        (folder / "keyinfo").unlink()
    return folder if renditions else playlist


def _key_info(folder: Path, number: int) -> None:
    """FFmpeg's HLS key info file naming the key ``key{number}.bin`` (16 bytes of ``number``)."""
    key = folder / f"key{number}.bin"
    key.write_bytes(bytes([number]) * 16)
    (folder / "keyinfo").write_text(f"{key.name}\n{key}\n")


def write_hls_subtitled(source: Path, folder: Path, cues: list[tuple[Fraction, str]]) -> Path:
    """``source``'s video and every audio stream (in the variant's own segments) with a
    WebVTT subtitle rendition of ``cues`` ((time, text), each shown 0.8 s), by FFmpeg's own HLS
    muxer, in 1 s segments: returns ``master.m3u8`` in ``folder`` (the media playlists
    ``0.m3u8`` and ``0_vtt.m3u8``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as c:
        audio = "".join(f"a:{n}," for n in range(len(c.streams.audio)))
    options = {"hls_time": "1", "hls_playlist_type": "vod", "master_pl_name": "master.m3u8",
               "var_stream_map": f"v:0,{audio}s:0,sgroup:subs",
               "hls_segment_filename": f"{folder}/%v_%03d.ts"}  # fmt: skip
    pending = sorted(cues)
    with av.open(str(source)) as c, av.open(str(folder / "%v.m3u8"), "w", format="hls",
                                            options=options) as out:  # fmt: skip
        taken = [c.streams.video[0], *c.streams.audio]
        streams = {s.index: out.add_stream_from_template(s) for s in taken}
        text = out.add_mux_stream("webvtt")
        for packet in c.demux(taken):
            if packet.dts is None:
                continue
            while pending and pending[0][0] <= packet.pts * packet.time_base:
                at, words = pending.pop(0)
                cue = av.Packet(words.encode())
                cue.pts = cue.dts = int(at * 1000)
                cue.duration, cue.time_base, cue.stream = 800, Fraction(1, 1000), text
                out.mux(cue)
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return folder / "master.m3u8"


def write_dash(
    source: Path, folder: Path, *, timeline: bool = True, single_file: bool = False,
    language: str | None = None, segment_seconds: float = 1.0,
) -> Path:  # fmt: skip
    """``source``'s video and first audio stream (tagged ``language``) copied by FFmpeg's own
    DASH muxer into ``folder`` as a static manifest, ``manifest.mpd``, which it returns:
    segments named by a template, timed by a ``SegmentTimeline`` or numbered (``timeline``
    False), or each stream in one file (``single_file``)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = {"seg_duration": f"{segment_seconds:g}", "use_timeline": str(int(timeline)),
               "single_file": str(int(single_file))}  # fmt: skip
    manifest = folder / "manifest.mpd"
    with av.open(str(source)) as c, av.open(str(manifest), "w", format="dash",
                                            options=options) as out:  # fmt: skip
        taken = [c.streams.video[0], *c.streams.audio[:1]]
        streams = {s.index: out.add_stream_from_template(s) for s in taken}
        for stream in streams.values():
            if stream.type == "audio" and language:
                stream.metadata["language"] = language
        for packet in c.demux(taken):
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return manifest
