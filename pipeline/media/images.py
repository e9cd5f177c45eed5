"""Still images in and out through PyAV (PNG, JPEG, BMP, TIFF, WebP: whatever FFmpeg reads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from carn_stream.pipeline.media.input_formats import IMAGE_OPEN_OPTIONS
from carn_stream.pipeline.media.publish import publish_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageError(ValueError):
    """A file that cannot be read or written as an image."""


def read_rgb(path: Path) -> np.ndarray:
    """Decode the first frame of an image file to HxWx3 uint8 RGB."""
    return read_image(path)[0]


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode the first frame of an image file to HxWx3 uint8 RGB and, where it is
    transparent somewhere (an alpha plane, or a palette with one: PNG's tRNS, GIF's), its HxW
    uint8 alpha (None where it is opaque throughout)."""
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with av.open(str(path), options=IMAGE_OPEN_OPTIONS) as container:
            if not container.streams.video:
                raise ImageError(f"{path}: holds no image")
            frame = next(container.decode(video=0))
            rgb = frame.to_ndarray(format="rgb24")
            if not (frame.format.has_palette or any(c.is_alpha for c in frame.format.components)):
                return rgb, None
            alpha = np.ascontiguousarray(frame.to_ndarray(format="rgba")[..., 3])
            return rgb, (alpha if alpha.min() < 255 else None)
    except (av.FFmpegError, StopIteration, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc


def write_png(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Encode HxWx3 uint8 RGB (with an HxW uint8 ``alpha``: RGBA) as PNG; the file appears
    only when fully written (two writers at once: the last one's)."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height = rgb.shape[1], rgb.shape[0]
    codec.pix_fmt = "rgb24" if alpha is None else "rgba"
    pixels = rgb if alpha is None else np.dstack([rgb, alpha])
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=codec.pix_fmt)
    publish_bytes(path, b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)]))


def iter_images(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, RGB) for every image file in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"{folder}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for path in files:
        yield path.name, read_rgb(path)
