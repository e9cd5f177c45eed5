"""Still images in and out through PyAV (PNG, JPEG, BMP, TIFF, WebP: whatever FFmpeg reads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from carn_stream.pipeline.media.input_formats import IMAGE_OPEN_OPTIONS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageError(ValueError):
    """A file that cannot be read or written as an image."""


def read_rgb(path: Path) -> np.ndarray:
    """Decode the first frame of an image file to HxWx3 uint8 RGB."""
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with av.open(str(path), options=IMAGE_OPEN_OPTIONS) as container:
            if not container.streams.video:
                raise ImageError(f"{path}: holds no image")
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, StopIteration, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Encode HxWx3 uint8 RGB as PNG; the file appears only when fully written."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height = rgb.shape[1], rgb.shape[0]
    codec.pix_fmt = "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    data = b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # left behind when the rename failed


def iter_images(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, RGB) for every image file in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"{folder}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for path in files:
        yield path.name, read_rgb(path)
