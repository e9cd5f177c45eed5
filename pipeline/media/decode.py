"""Open and probe an input with PyAV; turn its packets into frames and passthrough packets."""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from carn_stream.pipeline.colour import ColourSpec, StaticHdr, effective_matrix, is_full_range
from carn_stream.pipeline.errors import InputError, ffmpeg_reason
from carn_stream.pipeline.frames import SourceFrame
from carn_stream.pipeline.media.deinterlace import Deinterlacer
from carn_stream.pipeline.media.input_formats import (
    ALLOWED_DEMUXERS,
    DECODE_ORDER_DEMUXERS,
    check_scheme,
    detect_format,
    is_allowed,
    open_options,
)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    time_base: Fraction
    frame_rate: Fraction | None
    frames: int  #: from the container, or estimated from the duration; 0 when unknown
    duration: float | None  #: seconds
    codec: str
    pix_fmt: str
    audio_codecs: tuple[str, ...]
    sample_aspect_ratio: Fraction | None = None  #: None when unset (square pixels)


def stream_label(stream: av.stream.Stream) -> tuple[str | None, str | None]:
    """A stream's language (None where untagged or ``und``) and its title (an MP4 track's
    name), as a rendition names it."""
    language = stream.metadata.get("language")
    title = stream.metadata.get("title") or stream.metadata.get("name")  # MP4: "name"
    return (None if language in (None, "", "und") else language), (title or None)


def keep_language(target: av.stream.Stream, source: av.stream.Stream) -> None:
    """Tag output stream ``target`` with the language of input stream ``source`` (where it has
    one)."""
    if language := source.metadata.get("language"):
        target.metadata["language"] = language


def open_input(
    source: str | Path, options: dict[str, str] | None = None
) -> av.container.InputContainer:
    """Open a file or URL for demuxing, confined to the allowed formats and protocols
    (:mod:`formats`); failures become :class:`InputError`."""
    if isinstance(source, Path) and not source.is_file():
        raise InputError(f"{source}: no such file")
    try:
        check_scheme(source)
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from exc
    try:
        container = av.open(
            str(source), mode="r", options={**(options or {}), **open_options(source)}
        )
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        refused = _refused_format(source)
        if refused:
            raise InputError(refused) from exc
        raise InputError(
            f"{source}: not a video file FFmpeg can read ({ffmpeg_reason(exc)})"
        ) from exc
    if not is_allowed(container.format.name):  # what FFmpeg enforced, checked once more
        container.close()
        raise InputError(_refusal(source, container.format.name))
    if not any(not is_cover_art(s) for s in container.streams.video):
        container.close()
        raise InputError(f"{source}: has no video stream")
    return container


def is_cover_art(stream: av.stream.Stream) -> bool:
    """Whether a video stream is an attached picture (cover art), not the video."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def main_video(container: av.container.Container) -> av.video.stream.VideoStream:
    """The container's video: its first video stream that is not an attached picture (cover
    art, which a file may list before its video)."""
    for stream in container.streams.video:
        if not is_cover_art(stream):
            return stream
    raise InputError("the input has no video stream, only cover art")


def _refused_format(source: str | Path) -> str | None:
    """The refusal message when ``source`` is a local file in a format not on the list."""
    if isinstance(source, str) and "://" in source and not source.startswith("file://"):
        return None
    detected = detect_format(Path(str(source).removeprefix("file://")))
    if detected is None or is_allowed(detected):
        return None
    return _refusal(source, detected)


def _refusal(source: str | Path, detected: str) -> str:
    return (
        f"{source}: input format {detected!r} is not accepted (it can name other files or "
        f"URLs, or is not a video container); accepted: {', '.join(ALLOWED_DEMUXERS)}"
    )


def describe(container: av.container.InputContainer) -> VideoInfo:
    stream = main_video(container)
    ctx = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    frames = stream.frames or (round(duration * rate) if duration and rate else 0)
    return VideoInfo(
        width=ctx.width,
        height=ctx.height,
        time_base=stream.time_base,
        frame_rate=Fraction(rate) if rate else None,
        frames=frames,
        duration=duration,
        codec=ctx.name,
        pix_fmt=ctx.pix_fmt or "",
        audio_codecs=tuple(codec_name(a) for a in container.streams.audio),
        sample_aspect_ratio=stream_sample_aspect_ratio(stream),
    )


def stream_sample_aspect_ratio(stream) -> Fraction | None:
    """The container's sample aspect ratio, else the codec's; None when unset."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar is not None and sar > 0:
            return Fraction(sar)
    return None


def probe(source: str | Path, check: Callable[[VideoInfo], None] | None = None) -> VideoInfo:
    """Check that ``source`` holds decodable video and describe it. ``check`` judges the
    description from the stream headers (size, duration) before any frame is decoded."""
    with open_input(source) as container:
        info = describe(container)
        if check is not None:
            check(info)
        try:
            next(container.decode(main_video(container)))
        except (StopIteration, av.FFmpegError) as exc:
            raise InputError(f"{source}: its video stream holds no decodable frame") from exc
        return info


def codec_name(stream: av.stream.Stream) -> str:
    """The stream's codec as FFmpeg names the format (``mp3``, ``dvd_subtitle``), not as its
    decoder is called (``mp3float``, ``dvdsub``): what the output formats' lists name."""
    return stream.codec_context.codec.canonical_name


def display_rotation(source: str | Path) -> int:
    """The display rotation of ``source``'s first frame (counterclockwise degrees; 0 when
    it has none or no frame decodes)."""
    with open_input(source) as container:
        try:
            return int(next(container.decode(main_video(container))).rotation)
        except (StopIteration, av.FFmpegError):
            return 0


def static_hdr(frame: av.VideoFrame) -> StaticHdr | None:
    """The HDR10 metadata a decoded frame carries (FFmpeg's decoders attach a stream's mastering
    display and light level SEI messages, or its container's boxes, to its frames); None when
    it has none. A mastering display without both its primaries and its luminance is left out
    (an encoder takes the whole or nothing), as is either part out of its range (metadata
    that would make the encoder refuse to start)."""
    try:
        side_data = frame.side_data
        # (iterating gives the items themselves before PyAV 18.1.1, their kinds since)
        items = [i if hasattr(i, "type") else side_data[i] for i in side_data]
    except ValueError:  # a kind of side data newer than PyAV's list (EXIF, LCEVC, views)
        return None
    found = {item.type.name: bytes(item) for item in items}
    mastering = light = None
    if len(data := found.get("MASTERING_DISPLAY_METADATA", b"")) >= 88:
        # AVMasteringDisplayMetadata: rationals for R, G, B, white point, min and max luminance
        *rationals, has_primaries, has_luminance = struct.unpack_from("=22i", data)
        pairs = zip(rationals[::2], rationals[1::2], strict=True)
        ratios = [(n / d if d else 0.0) for n, d in pairs]
        (rx, ry, gx, gy, bx, by, wx, wy), (low, high) = ratios[:8], ratios[8:]
        values = (*(round(v * 50000) for v in (gx, gy, bx, by, rx, ry, wx, wy)),
                  round(high * 10000), round(low * 10000))  # fmt: skip
        if has_primaries and has_luminance and StaticHdr.mastering_in_range(values):
            mastering = values
    if len(data := found.get("CONTENT_LIGHT_LEVEL", b"")) >= 8:
        light = struct.unpack_from("=2I", data)
        light = light if StaticHdr.light_level_in_range(light) else None
    if mastering is None and light is None:
        return None
    return StaticHdr(mastering, light)


def _plane_array(plane, dtype: np.dtype) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    rows = np.frombuffer(plane, dtype=dtype).reshape(plane.height, plane.line_size // itemsize)
    return np.ascontiguousarray(rows[:, : plane.width])


def frame_planes(frame: av.VideoFrame) -> tuple[tuple[np.ndarray, ...], ColourSpec]:
    """A decoded frame's samples, in its own layout where that is planar, and how to read them."""
    fmt = frame.format
    matrix = effective_matrix(int(frame.colorspace), frame.height)
    full = is_full_range(int(frame.color_range), fmt.name)
    tags = {"primaries": int(frame.color_primaries), "transfer": int(frame.color_trc)}
    bits = max(c.bits for c in fmt.components)
    if fmt.is_rgb or fmt.has_palette:
        name = "rgb24" if bits <= 8 else "rgb48le"
        rgb = frame.to_ndarray(format=name)
        return (rgb,), ColourSpec("rgb", bits=8 if bits <= 8 else 16, **tags)
    big_endian = fmt.is_big_endian
    n = len(fmt.components)
    planar_yuv = fmt.is_planar and n == 3 and len(frame.planes) == 3 and not big_endian
    gray = n == 1 and not big_endian
    if not (planar_yuv or gray) or bits not in (8, 9, 10, 12, 14, 16):
        # Semi-planar, packed, alpha or odd layouts: repack (no matrix change) to planar 4:4:4.
        target = "yuv444p" if bits <= 8 else "yuv444p16le"
        frame = frame.reformat(format=target)
        bits = 8 if bits <= 8 else 16
        n = 3
    dtype = np.uint8 if bits <= 8 else np.dtype("<u2")
    planes = tuple(_plane_array(frame.planes[i], dtype) for i in range(n))
    layout = "gray" if n == 1 else "yuv"
    return planes, ColourSpec(layout, bits=bits, matrix=matrix, full_range=full, **tags)


@dataclass(frozen=True)
class AudioItem:
    """Audio on its way to the output: a packet to copy, or decoded frames to transcode."""

    stream_index: int
    packet: av.Packet | None = None
    frames: tuple[av.AudioFrame, ...] = ()


class ShownPackets:
    """Which video packets, in decode order, a decoder shows a frame for: none before the first
    keyframe (a recording cut mid-GOP), none an MP4 edit list discards (``-ss ... -c copy``),
    and not the demuxer's end-of-stream marker. Make one per read from the top or a keyframe."""

    def __init__(self) -> None:
        self.keyed = False

    def __call__(self, packet: av.Packet) -> bool:
        if packet.size == 0:
            return False
        self.keyed = self.keyed or packet.is_keyframe
        return self.keyed and not packet.is_discard


def whole_ticks(seconds: int, time_base: Fraction) -> int:
    """``seconds`` as ticks of ``time_base``; InputError where that is no whole number."""
    ticks = seconds / time_base
    if ticks.denominator != 1:
        raise InputError(f"{seconds} s is no whole number of ticks of {time_base}")
    return int(ticks)


def moved(packet: av.Packet, seconds: int) -> av.Packet:
    """``packet`` with its times ``seconds`` later (earlier where negative)."""
    if seconds:
        ticks = whole_ticks(seconds, packet.time_base)
        if packet.pts is not None:
            packet.pts += ticks
        if packet.dts is not None:
            packet.dts += ticks
    return packet


def with_decode_times(packets: Iterable[av.Packet]) -> Iterator[av.Packet]:
    """``packets`` with a decode time each, as the MOV and MPEG-TS muxers want. Matroska
    stores none, and FFmpeg's guess needs the packets before a seek (with B-frames it may have
    none): those without one get times just below the next one known and below their own
    presentation times, rising one tick each."""
    waiting: list[av.Packet] = []
    for packet in packets:
        if packet.dts is None and packet.pts is not None and packet.size:
            waiting.append(packet)
            continue
        if waiting:
            yield from _below(waiting, packet.dts)
            waiting = []
        yield packet
    yield from _below(waiting, None)


def _below(waiting: list[av.Packet], known: int | None) -> Iterator[av.Packet]:
    floors: list[int] = []  #: the lowest time of each packet's and those after it
    floor = known
    for packet in reversed(waiting):
        floor = packet.pts if floor is None else min(floor, packet.pts)
        floors.append(floor)
    floors.reverse()
    for i, packet in enumerate(waiting):
        packet.dts = floors[i] - (len(waiting) - i)
        yield packet


def decode_order_times(container: av.container.InputContainer) -> bool:
    """Whether ``container`` may number its video packets in decode order (see FrameTimes)."""
    return container.format.name in DECODE_ORDER_DEMUXERS


class FrameTimes:
    """Each decoded frame's presentation time. Most containers store it with the frame's packet.
    A container of :data:`DECODE_ORDER_DEMUXERS` may number packets in decode order (H.264 in
    AVI; a copy of its packets in another container says so by ``decode_order``); while the times
    fed rise in decode order, the n-th frame out of the decoder (display order) takes the
    smallest time fed and not yet taken: the times fed so far are the first ones of the stream,
    whatever the reordering. A time lower than the one before shows that the packets do carry
    the display order (FFmpeg's parser finds it for MPEG-4 part 2), and the frames' own times
    are kept from then on. Make one per decode from the top or a keyframe."""

    def __init__(self, container: av.container.InputContainer, decode_order: bool = False) -> None:
        self.reorder = decode_order or decode_order_times(container)
        self._shown = ShownPackets()
        self._fed: list[int] = []
        self._last: int | None = None

    def fed(self, packet: av.Packet) -> None:
        """Note a video packet given to the decoder."""
        shown = self._shown(packet)
        time = packet.pts if packet.pts is not None else packet.dts
        if not self.reorder or time is None or not shown:
            return
        if self._last is not None and time < self._last:
            self.reorder = False
            self._fed.clear()
            return
        self._last = time
        heapq.heappush(self._fed, time)

    def of(self, frame: av.VideoFrame) -> int | None:
        """The presentation time of the next frame out of the decoder."""
        if self.reorder and self._fed:
            return heapq.heappop(self._fed)
        return frame.pts


def demux_frames(
    container: av.container.InputContainer,
    decode_audio: frozenset[int] = frozenset(),
    threads: int = 0,
    deinterlace: bool = True,
) -> Iterator[SourceFrame | AudioItem]:
    """Decode the first video stream in presentation order; audio passes through as packets,
    or as decoded frames for the stream indexes in ``decode_audio``. ``threads``: decoder
    threads, 0 = FFmpeg's choice. ``deinterlace``: frames flagged interlaced are made
    progressive (:mod:`~carn_stream.pipeline.media.deinterlace`)."""
    video = main_video(container)
    video.thread_type = "AUTO"
    video.codec_context.thread_count = threads
    streams = [video, *container.streams.audio]
    times = FrameTimes(container)
    deinterlacer = Deinterlacer() if deinterlace else None
    index = 0
    for packet in container.demux(streams):
        if packet.stream.type == "audio":
            sid = packet.stream.index
            if sid in decode_audio:
                yield AudioItem(sid, frames=tuple(packet.decode()))
            elif packet.dts is not None:
                yield AudioItem(sid, packet=packet)
            continue
        times.fed(packet)
        try:
            frames = packet.decode()
            timed = [(times.of(frame), frame) for frame in frames]
            if deinterlacer is not None:
                timed = [out for pts, frame in timed for out in deinterlacer.push(pts, frame)]
        except av.FFmpegError as exc:
            raise InputError(f"decoding frame {index} failed: {exc}") from exc
        for pts, frame in timed:
            yield source_frame(index, pts, frame, video)
            index += 1
    if deinterlacer is not None:
        for pts, frame in deinterlacer.flush():
            yield source_frame(index, pts, frame, video)
            index += 1


def source_frame(
    index: int, pts: int | None, frame: av.VideoFrame, video: av.video.stream.VideoStream
) -> SourceFrame:
    """Decoded ``frame``, shown at ``pts``, as the pipeline carries it."""
    planes, spec = frame_planes(frame)
    tb = frame.time_base or video.time_base
    return SourceFrame(index, pts, tb, planes, spec, rotation=int(frame.rotation))
