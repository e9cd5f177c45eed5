"""What an HLS master playlist says of a rendition: RFC 6381 codec strings from real streams.

The original rendition's strings come from the input's own parameter sets; an upscaled
rendition's from one frame encoded at its size with the encoder and settings its segments use
(the encoder picks profile and level from the size and frame rate, not from the content).
"""

from __future__ import annotations

import re
from fractions import Fraction

import av
import numpy as np

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.media.decode import codec_name, main_video, open_input
from carn_stream.pipeline.media.encode import EncoderOptions, codec_settings
from carn_stream.pipeline.media.hls import carried_as_is

#: AAC profiles as FFmpeg names them -> MPEG-4 audio object types.
_AAC_OBJECT_TYPES = {"LC": 2, "HE-AAC": 5, "HE-AACv2": 29, "Main": 1, "LTP": 4}
TRANSCODED_AUDIO_TAG = "mp4a.40.2"  #: AAC-LC: what segments transcode other audio to
_AUDIO_TAGS = {"mp3": "mp4a.40.34", "ac3": "ac-3", "eac3": "ec-3"}


def avc_tag(parameters: bytes) -> str:
    """``avc1.PPCCLL`` from H.264 extradata (an avcC record or Annex B with an SPS)."""
    if len(parameters) >= 4 and parameters[0] == 1:  # avcC: version, profile, flags, level
        profile, flags, level = parameters[1:4]
        return f"avc1.{profile:02x}{flags:02x}{level:02x}"
    for unit in _annex_b_units(parameters):
        if len(unit) >= 4 and unit[0] & 0x1F == 7:  # a sequence parameter set
            return f"avc1.{unit[1]:02x}{unit[2]:02x}{unit[3]:02x}"
    raise InputError("no H.264 sequence parameter set found")


def hevc_tag(parameters: bytes) -> str:
    """``hvc1.<profile>.<compatibility>.<tier><level>.<constraints>`` (ISO/IEC 14496-15,
    annex E) from HEVC extradata (an hvcC record, or Annex B with an SPS) or a packet."""
    annex_b = parameters.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01"))
    if len(parameters) >= 23 and not annex_b:  # hvcC: version (1, some muxers 0), PTL fields
        return _hevc_ptl_tag(parameters[1:13])
    for unit in _annex_b_units(parameters):
        if len(unit) >= 2 and (unit[0] >> 1) & 0x3F == 33:  # a sequence parameter set
            payload = _unescaped(unit[2:])  # after the two-byte NAL header
            if len(payload) >= 13:  # ids and sub-layer count, then profile_tier_level
                return _hevc_ptl_tag(payload[1:13])
    raise InputError("no HEVC sequence parameter set found")


def _hevc_ptl_tag(ptl: bytes) -> str:
    """The codec string of a general profile_tier_level: profile space and idc, the 32
    compatibility flags (bit-reversed, in hex), tier and level, the 6 constraint bytes
    (trailing zero bytes left out)."""
    space, tier, profile = ptl[0] >> 6, (ptl[0] >> 5) & 1, ptl[0] & 0x1F
    compatibility = int(f"{int.from_bytes(ptl[1:5], 'big'):032b}"[::-1], 2)
    constraints = ptl[5:11].rstrip(b"\x00")
    tag = f"hvc1.{'' if space == 0 else 'ABC'[space - 1]}{profile}.{compatibility:X}"
    tag += f".{'LH'[tier]}{ptl[11]}"
    return tag + "".join(f".{b:02X}" for b in constraints)


def _annex_b_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream, after each start code (a unit may keep the
    first zero of the next four-byte start code)."""
    return data.split(b"\x00\x00\x01")[1:]


def _unescaped(rbsp: bytes) -> bytes:
    """A NAL unit's payload without its emulation prevention bytes (``00 00 03`` -> ``00 00``)."""
    return re.sub(b"\x00\x00\x03", b"\x00\x00", rbsp)


def video_tag(codec: str, parameters: bytes) -> str | None:
    """The codec string of H.264 or HEVC from its extradata or a packet (None: other codecs,
    or no parameter set in ``parameters``)."""
    make = {"h264": avc_tag, "hevc": hevc_tag}.get(codec)
    if make is None or not parameters:
        return None
    try:
        return make(parameters)
    except InputError:
        return None


def audio_tag(codec: str, profile: str | None) -> str | None:
    """The codec string of audio as segments carry it (None: it is not carried)."""
    if codec == "aac":
        return f"mp4a.40.{_AAC_OBJECT_TYPES.get(profile or 'LC', 2)}"
    return _AUDIO_TAGS.get(codec)


def source_codecs(source) -> tuple[str | None, str | None, int]:
    """(video codec string or None, audio codec string or None, bits per second) of an input;
    its audio's as a copy of it carries it (the first stream MPEG-TS takes as it is)."""
    with open_input(source) as container:
        video = main_video(container).codec_context
        tag = video_tag(video.name, bytes(video.extradata or b""))
        audio = None
        for stream in container.streams.audio:
            if not carried_as_is(stream):
                continue
            audio = audio_tag(codec_name(stream), stream.codec_context.profile)
            if audio:
                break
        rate = container.bit_rate or 0
    return tag, audio, int(rate)


def carried_audio_tag(stream: av.stream.Stream) -> str | None:
    """The codec string of an input audio stream as segments carry it: its own where MPEG-TS
    takes it as it is, else AAC-LC's (it is transcoded)."""
    if carried_as_is(stream):
        return audio_tag(codec_name(stream), stream.codec_context.profile)
    return TRANSCODED_AUDIO_TAG


def upscaled_audio_tag(source) -> str | None:
    """The codec string of the audio a player of upscaled segments hears (their first audio
    stream's)."""
    with open_input(source) as container:
        return next((carried_audio_tag(s) for s in container.streams.audio), None)


def encoder_tag(width: int, height: int, rate: Fraction | None, options: EncoderOptions) -> str:
    """The codec string of what ``options`` makes at ``width`` x ``height``: one frame encoded."""
    name, private = codec_settings(options)
    codec = {"libx264": "h264", "h264_nvenc": "h264", "libx265": "hevc", "hevc_nvenc": "hevc"}
    if name not in codec:
        raise ValueError(f"codec strings are known for H.264 and HEVC only, not {name}")
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
    tag = video_tag(codec[name], data)
    if tag is None:
        raise ValueError(f"{name} wrote no parameter set")
    return tag
