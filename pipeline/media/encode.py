"""Encode upscaled frames and mux them with the input's audio into a segment, the one unit of
output: every output (an HLS folder, an MP4, MKV or MOV file) is made of segments
(:mod:`carn_stream.pipeline.media.join`).

Video keeps the source's timestamps and time base (variable frame rate stays variable),
display rotation (or frames turned by it, for segments served as they are), sample aspect
ratio, bit depth (8 or 10, as the engine's output planes) and
colour tags (matrix, primaries, transfer: PQ and HLG included). Audio packets are copied
untouched where the output container can hold the codec, otherwise transcoded to AAC. A sink
starts with the first video frame (rotation is known then) and keeps earlier audio until then.

A segment is MPEG-TS (self-contained: parameter sets travel
in-band, so segments made by separate encoders, processes or machines play back to back and
concatenate by remuxing), timestamps kept as in the input, counted from the plan's origin (its
first second), plus :data:`SEGMENT_OFFSET_SECONDS`: small and positive however the input's
times lie (before 0, or near the 33-bit MPEG-TS clock's wrap at 26.5 h).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.colour import RANGE_LIMITED, ColourSpec, StaticHdr
from carn_stream.pipeline.errors import OutputError
from carn_stream.pipeline.frames import UpscaledFrame, quarter_turns
from carn_stream.pipeline.media.audio_transcode import WHOLE, AudioTranscoder, AudioWindow
from carn_stream.pipeline.media.codecs import check_codec, pixel_format, size_problem
from carn_stream.pipeline.media.decode import AudioItem, keep_language
from carn_stream.pipeline.media.hls import carried_as_is

#: Added to every timestamp written into a segment (counted from the plan's origin,
#: ``SegmentPlan.origin``, which no frame or audio packet of the input comes before), and
#: taken off again when segments are joined into one file: decode times, which B-frames put
#: before the first frame, and an encoder's audio priming stay positive. (It was 10 s, from
#: the input's own times, until plan rule 6: the segments of older plans are made again.)
SEGMENT_OFFSET_SECONDS = 70


@dataclass(frozen=True)
class EncoderOptions:
    codec: str = "h264"
    crf: int = 18
    preset: str | None = None  #: None = the codec's choice below
    #: HDR10 metadata to write (the source's: ``SegmentPlan.hdr``); libx264 and libx265 put
    #: it in SEI messages at every keyframe (NVENC has no option for it)
    hdr: StaticHdr | None = None


#: Rate-control zones that keep a segment's ends level with its middle (x264 and x265): an
#: encoder that starts at a segment's IDR frame spends on it as on a scene start (the first
#: frame came out 2-3 dB above its neighbours), and the last frames, which no later frame
#: references, get the least (1-2 dB below). The first frame's bitrate is scaled by HEAD, the
#: last TAIL_FRAMES frames' by TAIL: measured on carphone and Big Buck Bunny through the
#: pipeline (1 s segments), the mean boundary offset went from 2.1-2.3 to 0.12-0.43 dB for
#: about 8% more bytes at 0.15-0.24 dB higher quality (docs/PIPELINE.md, "Seams").
SEGMENT_ZONE_HEAD, SEGMENT_ZONE_TAIL, SEGMENT_TAIL_FRAMES = 0.75, 1.5, 4


def segment_zones(frames: int) -> str | None:
    """The zones of a segment of ``frames`` frames (None when it is too short to have ends)."""
    if frames < 3 * SEGMENT_TAIL_FRAMES:
        return None
    tail = frames - SEGMENT_TAIL_FRAMES
    return f"0,0,b={SEGMENT_ZONE_HEAD}/{tail},{frames - 1},b={SEGMENT_ZONE_TAIL}"


def codec_settings(options: EncoderOptions) -> tuple[str, dict[str, str]]:
    """FFmpeg encoder name and its private options for ``options``."""
    spec = check_codec(options.codec, options.preset)
    if not 0 <= options.crf <= 51:
        raise OutputError(f"crf must be between 0 and 51, got {options.crf}")
    name, preset = spec.encoder, options.preset or spec.default_preset
    if name.endswith("nvenc"):
        opts = {"preset": preset, "rc": "vbr", "cq": str(options.crf), "b": "0"}
    else:
        opts = {"crf": str(options.crf), "preset": preset}
        params = ["log-level=error"] if name == "libx265" else []
        if options.hdr is not None and (hdr := options.hdr.encoder_params(name)):
            params.append(hdr)
        if params:
            opts["x265-params" if name == "libx265" else "x264-params"] = ":".join(params)
    return name, opts


class CheckedEncoder:
    """A video stream's encoder whose packets' decode times can be trusted.

    libx265 (as FFmpeg drives it) makes up the decode times of a stream of fewer than three
    frames, apparently from the third frame's time, which such a stream lacks (seen: in a
    third to a half of such runs; 10^12 to 10^18 ticks off, or a few frames off, left over
    from an earlier encoder in the process).
    MP4 refused them ("pts/dts pair unsupported"); MPEG-TS wrote them, and now and then moved
    the segment's frames by minutes. The frames of so short a stream are not reordered, so a
    packet that comes out while fewer than three frames have gone in (at the flush, for a
    stream that short) gets its frame's time as its decode time. Every other packet, and
    every other encoder's, is passed on as it is."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.stream = stream
        self._checked = stream.codec_context.name == "libx265"
        self._fed = 0  #: frames given so far

    def encode(self, frame: av.VideoFrame | None = None) -> list[av.Packet]:
        """``frame`` encoded (None: the encoder flushed)."""
        if frame is not None:
            self._fed += 1
        packets = self.stream.encode(frame)
        if self._checked and self._fed < 3:
            for packet in packets:
                if packet.pts is not None:
                    packet.dts = packet.pts
        return packets


class VideoSink:
    """One segment's MPEG-TS file, published by rename when closed; used from one thread."""

    def __init__(
        self,
        target: Path,
        options: EncoderOptions,
        frame_rate: Fraction | None,
        audio_streams: list[av.audio.stream.AudioStream],
        threads: int = 0,
        sample_aspect_ratio: Fraction | None = None,
        frames: int | None = None,
        upright: bool = False,
        audio_window: AudioWindow = WHOLE,
    ) -> None:
        """``frames``: the segment's frame count (its ends are given rate-control zones, see
        :func:`segment_zones`). ``upright``: frames are turned by their display rotation
        rather than tagged with it (MPEG-TS carries no display matrix: a segment served as it
        is, HLS, would play turned). ``audio_window``: the part of the input's clock whose
        transcoded audio the segment holds (:mod:`~carn_stream.pipeline.media.audio_transcode`)."""
        self.upright = upright
        self._rotation: int | None = None
        self.codec_name, self.codec_options = codec_settings(options)
        zones = segment_zones(frames) if frames else None
        if zones and self.codec_name in ("libx264", "libx265"):
            key = "x264-params" if self.codec_name == "libx264" else "x265-params"
            given = self.codec_options.get(key)
            self.codec_options[key] = f"{given}:zones={zones}" if given else f"zones={zones}"
        self.target, self.options = target, options
        self.frame_rate = frame_rate or Fraction(25)
        self.threads = threads  #: encoder threads, 0 = FFmpeg's choice
        self.sample_aspect_ratio = sample_aspect_ratio
        self._pix_fmt = "yuv420p"
        self._audio_in = audio_streams
        self._container: av.container.OutputContainer | None = None
        self._video: CheckedEncoder | None = None
        self._audio_out: dict[int, av.stream.Stream] = {}
        self._transcoders: dict[int, AudioTranscoder] = {}
        self._pending_audio: list[AudioItem] = []
        self._offset = Fraction(SEGMENT_OFFSET_SECONDS)
        self._audio_window = audio_window.later(self._offset)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._path = target.with_name(f".{target.name}.part")

    # ------------------------------------------------------------------ set-up

    @property
    def transcoded_audio(self) -> set[int]:
        """Input audio stream indexes that need decoding (their codec cannot be copied)."""
        return {s.index for s in self._audio_in if not carried_as_is(s)}

    def _start(self, first: UpscaledFrame, out: ColourSpec, rotation: int) -> None:
        h, w = first.y.shape
        if problem := size_problem(self.options.codec, w, h):
            raise OutputError(problem)
        container = av.open(str(self._path), "w", format=SEGMENT_FORMAT, options=SEGMENT_MUXER)
        self._container = container
        video = container.add_stream(self.codec_name, rate=self.frame_rate)
        video.width, video.height = w, h
        self._pix_fmt = pixel_format(self.codec_name, 8 if first.y.dtype == "uint8" else 10)
        video.pix_fmt = self._pix_fmt
        video.time_base = first.time_base
        ctx = video.codec_context
        ctx.time_base = first.time_base
        ctx.colorspace = out.matrix
        ctx.color_range = RANGE_LIMITED
        ctx.color_primaries = out.primaries
        ctx.color_trc = out.transfer
        if self.sample_aspect_ratio:
            ctx.sample_aspect_ratio = self.sample_aspect_ratio
        ctx.options = dict(self.codec_options)
        ctx.thread_count = self.threads
        if rotation:
            video.set_display_rotation(rotation)
        self._video = CheckedEncoder(video)
        for stream in self._audio_in:
            if stream.index in self.transcoded_audio:
                self._transcoders[stream.index] = AudioTranscoder(
                    container, stream, self._offset, self._audio_window
                )
                self._audio_out[stream.index] = self._transcoders[stream.index].stream
            else:
                self._audio_out[stream.index] = container.add_stream_from_template(stream)
            keep_language(self._audio_out[stream.index], stream)
        self._out_spec = out

    # ------------------------------------------------------------------ writing

    def write_frame(self, frame: UpscaledFrame, out: ColourSpec, rotation: int = 0) -> None:
        if self._rotation is None:  # the first frame's holds for the segment (one frame size)
            self._rotation = rotation
            if self.upright and quarter_turns(rotation) % 2 and self.sample_aspect_ratio:
                self.sample_aspect_ratio = 1 / self.sample_aspect_ratio  # turned a quarter
        if self.upright:
            frame, rotation = frame.upright(self._rotation), 0
        else:
            rotation = self._rotation
        if self._container is None:
            self._start(frame, out, rotation)
            for index, transcoder in self._transcoders.items():
                transcoder.anchor([f for i in self._pending_audio if i.stream_index == index
                                   for f in i.frames])  # fmt: skip
            for item in self._pending_audio:
                self._mux_audio(item)
            self._pending_audio.clear()
        assert self._video is not None and self._container is not None
        vf = frame.to_video_frame()
        if vf.format.name != self._pix_fmt:  # NVENC's p010le, or an encoder without 10 bits
            vf = vf.reformat(format=self._pix_fmt)
        vf.pts = frame.pts if frame.pts is not None else frame.index
        vf.pts += round(self._offset / frame.time_base)
        vf.time_base = frame.time_base
        vf.colorspace = self._out_spec.matrix
        vf.color_range = RANGE_LIMITED
        self._container.mux(self._video.encode(vf))

    def write_audio(self, item: AudioItem) -> None:
        """Audio from the decoder: copied or transcoded."""
        if self._container is None:
            self._pending_audio.append(item)
        else:
            self._mux_audio(item)

    def _mux_audio(self, item: AudioItem) -> None:
        assert self._container is not None
        if item.packet is not None:
            packet = on_segment_clock(item.packet)
            packet.stream = self._audio_out[item.stream_index]
            self._container.mux(packet)
        elif item.frames:
            self._container.mux(self._transcoders[item.stream_index].encode(item.frames))

    def close(self) -> Path:
        """Flush the encoders, finish the container and publish the output."""
        if self._container is None:
            raise OutputError("no video frame was decoded, nothing to write")
        assert self._video is not None
        self._container.mux(self._video.encode(None))
        for transcoder in self._transcoders.values():
            self._container.mux(transcoder.encode(None))
        self._container.close()
        self._container = None
        self._path.replace(self.target)
        return self.target

    def abort(self) -> None:
        """Close without publishing; remove what was written."""
        if self._container is not None:
            with contextlib.suppress(av.FFmpegError):
                self._container.close()
            self._container = None
        self._path.unlink(missing_ok=True)


#: Segments are MPEG-TS; they are opened as such (a segment of a few small frames is too short
#: for FFmpeg to recognise by probing).
SEGMENT_FORMAT = "mpegts"
SEGMENT_MUXER = {
    "mpegts_copyts": "1",  # timestamps as given (the offset is ours, and known)
    "mpegts_flags": "resend_headers",
}


def on_segment_clock(packet: av.Packet, origin: int = 0) -> av.Packet:
    """``packet`` with its times on the segments' clock: :data:`SEGMENT_OFFSET_SECONDS` later,
    less the plan's ``origin`` (whole seconds), to the nearest of its ticks (MP3 in AVI counts
    in 24 ms frames)."""
    shift = round((SEGMENT_OFFSET_SECONDS - origin) / packet.time_base)
    packet.pts = None if packet.pts is None else packet.pts + shift
    packet.dts = None if packet.dts is None else packet.dts + shift
    return packet


def probe_to_video(path: Path) -> dict[str, str]:
    """Probe options that read a segment as far as its video. The first segment holds all of
    the input's audio before its first frame: past FFmpeg's default (5 s, 5 MB), its video
    stream had no dimensions yet, and the joined file could not be started."""
    size = max(5_000_000, path.stat().st_size)
    return {"probesize": str(size), "analyzeduration": str(2**62)}
