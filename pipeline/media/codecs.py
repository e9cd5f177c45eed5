"""Video codecs by the name users give, with their presets: the one list the API's schema,
the command line's choices and the encoder read. Torch-free (``--help`` stays light)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

from carn_stream.pipeline.errors import OutputError

_X26X_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
    "veryslow",
)  # fmt: skip
_NVENC_PRESETS = ("p1", "p2", "p3", "p4", "p5", "p6", "p7")


@dataclass(frozen=True)
class VideoCodec:
    encoder: str  #: FFmpeg's encoder
    presets: tuple[str, ...]
    default_preset: str
    #: HLS segments are fragmented MP4, not MPEG-TS (Apple's HLS authoring specification asks
    #: for HEVC in fragmented MP4)
    fragmented_hls: bool = False
    #: the shortest side it encodes (x265 refuses pictures below 16 pixels a side)
    min_side: int = 2


#: Video codecs by the name users give; the API's and the command line's choices.
CODECS: dict[str, VideoCodec] = {
    "h264": VideoCodec("libx264", _X26X_PRESETS, "veryfast"),
    "hevc": VideoCodec("libx265", _X26X_PRESETS, "veryfast", fragmented_hls=True, min_side=16),
    "h264_nvenc": VideoCodec("h264_nvenc", _NVENC_PRESETS, "p4"),
    "hevc_nvenc": VideoCodec("hevc_nvenc", _NVENC_PRESETS, "p4", fragmented_hls=True),
}
CODEC_NAMES: tuple[str, ...] = tuple(CODECS)
PRESETS: tuple[str, ...] = (*_X26X_PRESETS, *_NVENC_PRESETS)


@functools.cache
def encoder_works(encoder: str) -> bool:
    """Whether this host can really encode with ``encoder`` (NVENC needs an NVIDIA GPU)."""
    import av

    try:
        ctx = av.CodecContext.create(encoder, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 64, 64, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        if encoder == "libx265":
            ctx.options = {"x265-params": "log-level=none"}
        ctx.open()
        frame = av.VideoFrame(64, 64, "yuv420p")
        frame.pts = 0
        ctx.encode(frame)
        ctx.encode(None)
        return True
    except Exception:
        return False


@functools.cache
def pixel_format(encoder: str, bits: int) -> str:
    """The 4:2:0 pixel format ``encoder`` takes for ``bits``-bit samples: ``yuv420p``, or for
    10 bits ``yuv420p10le`` (x264 High10, x265 Main10) or ``p010le`` (NVENC); ``yuv420p`` where
    the encoder has no 10-bit 4:2:0 at all."""
    if bits <= 8:
        return "yuv420p"
    import av

    formats = {f.name for f in av.Codec(encoder, "w").video_formats or ()}
    for name in ("yuv420p10le", "p010le"):
        if name in formats:
            return name
    return "yuv420p"


def preset_problem(codec: str, preset: str | None) -> str | None:
    """Why ``preset`` does not apply to ``codec`` (None when it does, or is not given)."""
    presets = CODECS[codec].presets
    if preset is None or preset in presets:
        return None
    return f"preset {preset!r} does not apply to {codec}; use one of {', '.join(presets)}"


def size_problem(codec: str, width: int, height: int) -> str | None:
    """Why ``codec`` cannot encode pictures of ``width`` x ``height`` (None when it can)."""
    spec = CODECS[codec]
    if min(width, height) >= spec.min_side:
        return None
    return (f"{codec} ({spec.encoder}) encodes pictures of at least {spec.min_side} pixels a "
            f"side, and the output is {width}x{height}; use h264")


def check_codec(codec: str, preset: str | None) -> VideoCodec:
    """The codec, if it exists here and takes ``preset``; else OutputError saying what would."""
    if codec not in CODECS:
        raise OutputError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    spec = CODECS[codec]
    if problem := preset_problem(codec, preset):
        raise OutputError(problem)
    if not encoder_works(spec.encoder):
        working = [name for name, c in CODECS.items() if encoder_works(c.encoder)]
        raise OutputError(
            f"codec {codec} ({spec.encoder}) cannot encode on this host; "
            f"available: {', '.join(working)}"
        )
    return spec
