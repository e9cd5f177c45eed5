"""Encode a title at a delivery size and rate: the stored low-resolution copy, or the original
size at a CRF for rate-quality curves.

Frames are scaled in YUV with FFmpeg's bicubic scaler (the ``scale`` filter's default), to
even sides of ``floor(side / scale)``, and keep the source's timestamps. A source whose sides
are not multiples of that size times ``scale`` is first cut to its top-left part that is, so
the copy is an exact 1/``scale`` of the region the report and training pairs compare with.
The copy is tagged with the matrix the source is read with (an untagged 720p source is BT.709;
the 360p copy would otherwise be read as BT.601), so both decode to the same RGB.

A copy of the whole title keeps the rest of it, as an MP4 output of the title would: audio
copied where MP4 holds the codec and made AAC, its channels kept, where it does not (PCM,
Vorbis, MP2, ...), text subtitles (as mov_text), languages, dispositions, chapters, the
title's metadata and its cover art. A copy of a part (training pairs), or one asked to be
video only (the rate-quality curves, which count the video's bytes), has no other stream.
PyAV only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.colour import RANGE_LIMITED, effective_matrix, is_full_range
from carn_stream.pipeline.errors import InputError, OutputError, ffmpeg_reason
from carn_stream.pipeline.media import keep
from carn_stream.pipeline.media.audio_transcode import WHOLE, AudioTranscoder
from carn_stream.pipeline.media.decode import (
    FrameTimes,
    display_rotation,
    main_video,
    open_input,
)
from carn_stream.pipeline.media.deinterlace import progressive
from carn_stream.pipeline.media.encode import CheckedEncoder, EncoderOptions, codec_settings
from carn_stream.pipeline.media.formats import FORMATS

#: What the copy is: an MP4 file, with that output's rules for audio and subtitles (MP2, which
#: the MP4 muxer takes, is read back as MP3 and decodes wrongly: it is made AAC).
_COPY_FORMAT = FORMATS["mp4"]


@dataclass(frozen=True)
class EncodedCopy:
    """What an encode wrote: where, its size, and the video stream's rate."""

    path: Path
    width: int
    height: int
    frames: int
    seconds: float  #: frames / frame rate
    video_bytes: int  #: video packets only (audio excluded)
    codec: str
    crf: int

    @property
    def bitrate(self) -> float:
        """Video bits per second."""
        return 8 * self.video_bytes / self.seconds if self.seconds > 0 else 0.0


class TopLeftCrop:
    """Cuts a stream's frames to their top-left ``width`` x ``height`` (FFmpeg's crop filter:
    any pixel format, odd sides included)."""

    def __init__(self, stream: av.video.stream.VideoStream, width: int, height: int) -> None:
        self._graph = av.filter.Graph()
        source = self._graph.add_buffer(template=stream)
        crop = self._graph.add("crop", f"{width}:{height}:0:0")
        sink = self._graph.add("buffersink")
        source.link_to(crop)
        crop.link_to(sink)
        self._graph.configure()

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        self._graph.push(frame)
        return self._graph.pull()


def delivery_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The size stored for ``scale`` (1: the original): each side divided by ``scale`` and
    rounded down to even."""
    w, h = width // scale, height // scale
    w, h = w - w % 2, h - h % 2  # 4:2:0
    if w < 16 or h < 16:
        raise OutputError(f"{width}x{height} is too small to store at 1/{scale} size")
    return w, h


class _Rest:
    """What a copy of the whole title keeps besides its video: each audio stream copied or made
    AAC (its channels kept), and the subtitle streams MP4 can hold; their packets are written
    as they are read."""

    def __init__(self, source: Path, src: av.container.InputContainer,
                 out: av.container.OutputContainer):  # fmt: skip
        self.out = out
        self.copied: dict[int, av.stream.Stream] = {}  #: input index -> output stream
        self.transcoded: dict[int, tuple[av.stream.Stream, AudioTranscoder]] = {}
        for stream in src.streams.audio:
            if _COPY_FORMAT.keeps_audio(stream):
                target = self.copied[stream.index] = out.add_stream_from_template(stream)
            else:
                transcoder = AudioTranscoder(out, stream, Fraction(0), WHOLE, keep_layout=True)
                self.transcoded[stream.index], target = (stream, transcoder), transcoder.stream
            keep.copy_stream_facts(stream, target)
        self.subtitles = keep.subtitle_streams(src, out, _COPY_FORMAT)
        keep.copy_container_facts(src, out, _COPY_FORMAT)
        keep.copy_cover_art(source, out, _COPY_FORMAT)
        self.streams = [*src.streams.audio, *self.subtitles.streams]  #: what to demux

    def write(self, packet: av.Packet) -> None:
        index = packet.stream.index
        if packet.stream.type == "subtitle":
            if (packet.pts is not None or packet.dts is not None) and (
                converted := self.subtitles.convert(packet)
            ):
                self.out.mux(converted)
        elif not packet.size:  # the end of a stream (its decoder is flushed at the close)
            return
        elif index in self.transcoded:
            self.out.mux(self.transcoded[index][1].encode(packet.decode()))
        elif packet.dts is not None:
            packet.stream = self.copied[index]
            self.out.mux(packet)

    def close(self) -> None:
        for source, transcoder in self.transcoded.values():
            self.out.mux(transcoder.encode(source.decode(None)))
            self.out.mux(transcoder.encode(None))


def _video_frames(
    src: av.container.InputContainer, rest: _Rest | None
) -> Iterator[tuple[int | None, av.VideoFrame]]:
    """The input's video frames with their times, in display order; on the way, the packets of
    the other streams ``rest`` keeps are written."""
    vin = main_video(src)
    times = FrameTimes(src)
    for packet in src.demux([vin, *(rest.streams if rest else ())]):
        if packet.stream.type != "video":
            rest.write(packet)
            continue
        times.fed(packet)
        for frame in packet.decode():
            yield times.of(frame), frame


def encode_copy(
    source: str | Path,
    dest: Path,
    *,
    scale: int = 1,
    codec: str = "h264",
    crf: int = 30,
    preset: str | None = None,
    start: int = 0,
    frames: int | None = None,
    threads: int = 0,
    video_only: bool = False,
) -> EncodedCopy:
    """Encode frames ``start`` .. ``start + frames`` of ``source`` (all by default) at
    1/``scale`` size into the MP4 ``dest`` (written under a temporary name, then renamed).
    The whole title keeps its audio, subtitles and metadata (see the module's note) unless
    ``video_only``. A source that cannot be read or written so is an :class:`InputError`."""
    encoder, options = codec_settings(EncoderOptions(codec=codec, crf=crf, preset=preset))
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    whole = start == 0 and frames is None
    keeps_rest = whole and not video_only
    written = video_bytes = 0
    size: tuple[int, int] = (0, 0)
    rate = Fraction(25)
    try:
        with open_input(source) as src, av.open(str(part), "w", format="mp4") as out:
            vin = main_video(src)
            vin.thread_type = "AUTO"
            rate = Fraction(vin.average_rate or vin.guessed_rate or 25)
            ctx_in = vin.codec_context
            size = delivery_size(ctx_in.width, ctx_in.height, scale)
            region = (size[0] * scale, size[1] * scale)
            crop = None if region == (ctx_in.width, ctx_in.height) else TopLeftCrop(vin, *region)
            matrix = effective_matrix(int(ctx_in.colorspace or 2), ctx_in.height)
            vout = out.add_stream(encoder, rate=rate)
            if rotation := display_rotation(source):  # tagged before anything is muxed
                vout.set_display_rotation(rotation)
            vout.width, vout.height, vout.pix_fmt = size[0], size[1], "yuv420p"
            vout.time_base = vin.time_base
            ctx = vout.codec_context
            ctx.time_base = vin.time_base
            ctx.colorspace, ctx.color_range = matrix, RANGE_LIMITED
            # (the source's primaries and transfer: a PQ or HLG title's copy was tagged SDR)
            ctx.color_primaries, ctx.color_trc = ctx_in.color_primaries, ctx_in.color_trc
            ctx.options = options
            ctx.thread_count = threads
            video = CheckedEncoder(vout)
            rest = None
            if keeps_rest:
                keep.copy_stream_facts(vin, vout)
                keep.copy_sample_aspect_ratio(vin, vout)
                rest = _Rest(Path(source), src, out)
            decoded, first_pts = 0, None
            for pts, frame in progressive(_video_frames(src, rest)):
                if frames is not None and written >= frames:
                    if rest is None:  # (the rest of a whole title is written to the end)
                        break
                    continue
                decoded += 1
                if decoded <= start:
                    continue
                if first_pts is None:
                    first_pts = 0 if whole else pts or 0
                cut = crop(frame) if crop is not None else frame
                # Full-range sources' levels are brought to the limited range the copy is
                # tagged with (they went through unconverted: crushed blacks, clipped whites).
                full = is_full_range(int(frame.color_range), frame.format.name)
                scaled = cut.reformat(
                    width=size[0], height=size[1], format="yuv420p", interpolation="BICUBIC",
                    src_color_range="JPEG" if full else "MPEG", dst_color_range="MPEG",
                )
                scaled.pts = None if pts is None else pts - first_pts
                scaled.time_base = vin.time_base
                scaled.colorspace, scaled.color_range = matrix, RANGE_LIMITED
                for p in video.encode(scaled):
                    video_bytes += p.size
                    out.mux(p)
                written += 1
            for p in video.encode():
                video_bytes += p.size
                out.mux(p)
            if rest is not None:
                rest.close()
    except av.FFmpegError as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # the disk's (no space, ...): not the source's fault
            raise
        raise InputError(f"{Path(source).name} cannot be encoded: {ffmpeg_reason(exc)}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if written == 0:
        part.unlink(missing_ok=True)
        raise OutputError(f"{source}: no frame in the range {start}..{start + (frames or 0)}")
    part.replace(dest)
    return EncodedCopy(dest, size[0], size[1], written, float(written / rate), video_bytes,
                       codec, crf)  # fmt: skip
