"""Test media made from the real clips with PyAV: trims, small versions, VFR, 10-bit, rotated."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def decode_rgb(path: Path, limit: int | None = None) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        out = []
        for frame in c.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if limit and len(out) >= limit:
                break
        return out


def decode_y(path: Path) -> list[np.ndarray]:
    """The luma plane of every 8-bit YUV frame, as stored (no range conversion)."""
    with av.open(str(path)) as c:
        out = []
        for f in c.decode(video=0):
            plane = f.planes[0]
            rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            out.append(rows[:, : plane.width].copy())
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
        stream.codec_context.options = options or {"crf": "12", "preset": "veryfast"}
        if codec in ("ffv1", "libx264rgb", "png"):
            stream.codec_context.options = options or {}
        if rotation:
            stream.set_display_rotation(rotation)
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
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
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


def write_audio_only(source: Path, dest: Path) -> Path:
    """Copy the first audio stream of ``source`` into ``dest`` (a file with no video)."""
    with av.open(str(source)) as src, av.open(str(dest), "w") as out:
        stream = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dest
