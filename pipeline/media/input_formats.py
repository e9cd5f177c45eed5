"""The input formats (FFmpeg demuxers) and protocols an input may use.

Only real video containers and raw video streams are read. Formats that open further files or
URLs named inside the input (HLS and DASH playlists, concat/ffconcat lists, image sequences,
``tee``, ``subfile``, SDP/RTP descriptions, lavfi graphs, ...) are refused before FFmpeg reads
their header, so an input cannot make FFmpeg open anything else. Local inputs may use the
``file`` protocol only, URLs ``http``/``https`` only.
"""

from __future__ import annotations

import ctypes
import urllib.parse
from pathlib import Path

import av

#: FFmpeg demuxer names accepted for inputs: MP4/MOV/3GP, Matroska/WebM, MPEG-TS and MPEG-PS,
#: AVI, FLV, Ogg, Y4M, animated GIF, and raw H.264/HEVC/AV1 (OBU) and MPEG-4 part 2
#: elementary streams.
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "mpegts", "mpeg", "avi",
    "flv", "ogg", "yuv4mpegpipe", "h264", "hevc", "obu", "m4v", "gif",
)  # fmt: skip
#: Containers that store a video packet's decode time only (AVI): FFmpeg numbers packets in
#: decode order, so frames a decoder reorders (B-frames) come out with their times out of order.
DECODE_ORDER_DEMUXERS = frozenset({"avi"})
#: Still images (``upscale-image``, evaluation sets): single files, never sequences.
IMAGE_DEMUXERS: tuple[str, ...] = (
    "image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "ppm_pipe",
    "pgm_pipe", "pgmyuv_pipe", "pam_pipe", "qoi_pipe", "gif", "gif_pipe",
)  # fmt: skip
IMAGE_OPEN_OPTIONS = {
    "format_whitelist": ",".join(IMAGE_DEMUXERS),
    "protocol_whitelist": "file",
    "pattern_type": "none",  # a name with % or * is one file, not a sequence
}
#: File suffixes taken for videos where a folder is read (the CLI, live samples, calibration).
#: (.mts/.m2ts: camcorders' AVCHD; .vob: DVD video)
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".ts", ".mts", ".m2ts", ".y4m", ".mpg",
    ".mpeg", ".vob", ".3gp", ".flv", ".ogv",
})  # fmt: skip
LOCAL_PROTOCOLS = "file"
URL_PROTOCOLS = "http,https,tcp,tls"
URL_SCHEMES = ("http", "https")


def is_url(source: str | Path) -> bool:
    return isinstance(source, str) and "://" in source and not source.startswith("file://")


def open_options(source: str | Path) -> dict[str, str]:
    """FFmpeg options that confine an open of ``source`` to the allowed demuxers and protocols
    (nested opens inherit them)."""
    protocols = URL_PROTOCOLS if is_url(source) else LOCAL_PROTOCOLS
    return {"format_whitelist": ",".join(ALLOWED_DEMUXERS), "protocol_whitelist": protocols}


def check_scheme(source: str | Path) -> None:
    """Refuse URLs whose scheme is not http(s) (rtmp, rtsp, data, ...)."""
    if is_url(source):
        scheme = urllib.parse.urlsplit(str(source)).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise ValueError(f"unsupported URL scheme {scheme!r}: use http or https, or a file")


def is_allowed(format_name: str) -> bool:
    """Whether a demuxer name (FFmpeg's, possibly a comma list such as ``mov,mp4,...``) is on
    the allow-list."""
    return any(part in ALLOWED_DEMUXERS for part in format_name.split(","))


def detect_format(path: Path, probe_bytes: int = 1 << 20) -> str | None:
    """The demuxer FFmpeg's probing picks for a local file, judged from its first bytes and its
    name only (no header is parsed, nothing else is opened); None when none fits or the
    library cannot be asked."""
    try:
        with open(path, "rb") as f:
            data = f.read(probe_bytes)
        return _probe(str(path), data)
    except (OSError, AttributeError, StopIteration):
        return None


class _ProbeData(ctypes.Structure):
    _fields_ = [
        ("filename", ctypes.c_char_p),
        ("buf", ctypes.c_void_p),
        ("buf_size", ctypes.c_int),
        ("mime_type", ctypes.c_char_p),
    ]


_PADDING = 64  # FFmpeg wants AVPROBE_PADDING_SIZE (32) zero bytes after the data


def _probe(filename: str, data: bytes) -> str | None:
    lib = _libavformat()
    buffer = ctypes.create_string_buffer(data + bytes(_PADDING), len(data) + _PADDING)
    probe = _ProbeData(filename.encode(), ctypes.cast(buffer, ctypes.c_void_p), len(data), None)
    score = ctypes.c_int(0)
    found = lib.av_probe_input_format3(ctypes.byref(probe), 1, ctypes.byref(score))
    if not found:
        return None
    name = ctypes.cast(found, ctypes.POINTER(ctypes.c_char_p))[0]  # AVInputFormat.name
    return name.decode() if name else None


_LIB: ctypes.CDLL | None = None


def _libavformat() -> ctypes.CDLL:
    """The libavformat PyAV itself loaded (bundled with its wheel, or the system's)."""
    global _LIB
    if _LIB is None:
        bundled = Path(av.__file__).parent.parent / "av.libs"
        candidates = sorted(bundled.glob("libavformat*.so*")) if bundled.is_dir() else []
        lib = ctypes.CDLL(str(candidates[0]) if candidates else "libavformat.so")
        lib.av_probe_input_format3.restype = ctypes.c_void_p
        lib.av_probe_input_format3.argtypes = [
            ctypes.POINTER(_ProbeData),
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        _LIB = lib
    return _LIB
