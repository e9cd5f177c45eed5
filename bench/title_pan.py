"""A 720p clip of real content for the per-title measurements: a slow pan across SunHays80
photos (landscape ones at least 720 px tall, cropped to 720 rows and laid side by side),
``--speed`` whole pixels per frame (no resampling: the frames keep the photos' own detail),
encoded at high quality (x264 CRF 10).

    python bench/title_pan.py /tmp/sunhays_pan.mp4 [--seconds 10] [--speed 6]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA

from carn_stream.pipeline.media.images import iter_images

WIDTH, HEIGHT, RATE = 1280, 720, 25
SECONDS, SPEED = 10.0, 6  #: the pan measured in docs/MODEL.md


def pan_photos(frames: int, speed: int) -> list[tuple[str, np.ndarray]]:
    """The photos the pan crosses, in order: (file name, its middle 720 rows)."""
    need = WIDTH + frames * speed
    parts, width = [], 0
    for name, image in iter_images(DATA / "train" / "SunHays80"):
        h, w = image.shape[:2]
        if w >= h and h >= HEIGHT:
            top = (h - HEIGHT) // 2
            parts.append((name, image[top : top + HEIGHT]))
            width += w
        if width >= need:
            return parts
    raise SystemExit(f"the photos give a strip of {width} px, the pan needs {need}")


def strip(frames: int, speed: int) -> np.ndarray:
    """Photos side by side, wide enough for the pan."""
    return np.concatenate([part for _, part in pan_photos(frames, speed)], axis=1)


def write_clip(output: Path, frames: Iterable[np.ndarray], width: int, height: int) -> int:
    """RGB frames into an H.264 MP4 at high quality (x264 CRF 10, BT.709); returns the count."""
    count = 0
    with av.open(str(output), "w") as out:
        stream = out.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.colorspace = 1  # BT.709
        stream.codec_context.options = {"crf": "10", "preset": "medium"}
        stream.time_base = Fraction(1, RATE)
        for rgb in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), "rgb24")
            vf = vf.reformat(format="yuv420p", dst_colorspace=1)
            vf.colorspace = 1
            vf.pts = count
            out.mux(stream.encode(vf))
            count += 1
        out.mux(stream.encode(None))
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path)
    p.add_argument("--seconds", type=float, default=SECONDS)
    p.add_argument("--speed", type=int, default=SPEED, help="pixels per frame")
    args = p.parse_args()
    frames = round(args.seconds * RATE)
    pan = strip(frames, args.speed)
    views = (pan[:, i * args.speed : i * args.speed + WIDTH] for i in range(frames))
    write_clip(args.output, views, WIDTH, HEIGHT)
    print(f"{args.output}: {frames} frames, {WIDTH}x{HEIGHT}, {pan.shape[1]} px strip")


if __name__ == "__main__":
    main()
