"""What an HLS master playlist says of a rendition: RFC 6381 codec strings from real streams.

The original rendition's strings come from the input's own parameter sets; an upscaled
rendition's from one frame encoded at its size with the encoder and settings its segments use
(the encoder picks profile and level from the size and frame rate, not from the content).
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.media.decode import codec_name, open_input
from carn_stream.pipeline.media.encode import EncoderOptions, codec_settings
from carn_stream.pipeline.media.hls import SEGMENT_AUDIO

#: AAC profiles as FFmpeg names them -> MPEG-4 audio object types.
_AAC_OBJECT_TYPES = {"LC": 2, "HE-AAC": 5, "HE-AACv2": 29, "Main": 1, "LTP": 4}
_AUDIO_TAGS = {"mp3": "mp4a.40.34", "ac3": "ac-3", "eac3": "ec-3"}


def avc_tag(parameters: bytes) -> str:
    """``avc1.PPCCLL`` from H.264 extradata (an avcC record or Annex B with an SPS)."""
    if len(parameters) >= 4 and parameters[0] == 1:  # avcC: version, profile, flags, level
        profile, flags, level = parameters[1:4]
        return f"avc1.{profile:02x}{flags:02x}{level:02x}"
    at = 0
    while (at := parameters.find(b"\x00\x00\x01", at)) >= 0:
        header = parameters[at + 3 : at + 7]
        if len(header) == 4 and header[0] & 0x1F == 7:  # a sequence parameter set
            return f"avc1.{header[1]:02x}{header[2]:02x}{header[3]:02x}"
        at += 3
    raise InputError("no H.264 sequence parameter set found")


def audio_tag(codec: str, profile: str | None) -> str | None:
    """The codec string of audio as segments carry it (None: it is not carried)."""
    if codec == "aac":
        return f"mp4a.40.{_AAC_OBJECT_TYPES.get(profile or 'LC', 2)}"
    return _AUDIO_TAGS.get(codec)


def source_codecs(source) -> tuple[str | None, str | None, int]:
    """(video codec string or None, audio codec string or None, bits per second) of an input."""
    with open_input(source) as container:
        video = container.streams.video[0].codec_context
        tag = None
        if video.name == "h264" and video.extradata:
            tag = avc_tag(bytes(video.extradata))
        audio = None
        for stream in container.streams.audio:
            audio = audio_tag(codec_name(stream), stream.codec_context.profile)
            if audio:
                break
        rate = container.bit_rate or 0
    return tag, audio, int(rate)


def upscaled_audio_tag(source) -> str | None:
    """Upscaled segments copy audio MPEG-TS takes as it is and transcode the rest to AAC-LC."""
    with open_input(source) as container:
        for stream in container.streams.audio:
            ctx = stream.codec_context
            if ctx.name in SEGMENT_AUDIO:
                return audio_tag(ctx.name, ctx.profile)
            return "mp4a.40.2"
    return None


def encoder_tag(width: int, height: int, rate: Fraction | None, options: EncoderOptions) -> str:
    """The codec string of what ``options`` makes at ``width`` x ``height``: one frame encoded."""
    name, private = codec_settings(options)
    if name not in ("libx264", "h264_nvenc"):
        raise ValueError(f"codec strings are known for H.264 only, not {name}")
    context = av.CodecContext.create(name, "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = 1 / (rate or Fraction(25))
    context.framerate = rate or Fraction(25)
    context.options = dict(private)
    frame = av.VideoFrame.from_ndarray(
        np.full((height * 3 // 2, width), 128, np.uint8), format="yuv420p"
    )
    frame.pts = 0
    data = b"".join(bytes(p) for p in context.encode(frame) + context.encode(None))
    return avc_tag(data)
