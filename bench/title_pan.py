"""A 720p clip of real content for the per-title measurements: a slow pan across SunHays80
photos (landscape ones at least 720 px tall, cropped to 720 rows and laid side by side),
``--speed`` whole pixels per frame (no resampling: the frames keep the photos' own detail),
encoded at high quality (x264 CRF 10).

    python bench/title_pan.py /tmp/sunhays_pan.mp4 [--seconds 10] [--speed 6]
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA

from carn_stream.pipeline.media.images import iter_images

WIDTH, HEIGHT, RATE = 1280, 720, 25


def strip(frames: int, speed: int) -> np.ndarray:
    """Photos side by side, wide enough for the pan."""
    need = WIDTH + frames * speed
    parts, width = [], 0
    for _, image in iter_images(DATA / "train" / "SunHays80"):
        h, w = image.shape[:2]
        if w >= h and h >= HEIGHT:
            top = (h - HEIGHT) // 2
            parts.append(image[top : top + HEIGHT])
            width += w
        if width >= need:
            break
    if width < need:
        raise SystemExit(f"the photos give a strip of {width} px, the pan needs {need}")
    return np.concatenate(parts, axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--speed", type=int, default=6, help="pixels per frame")
    args = p.parse_args()
    frames = round(args.seconds * RATE)
    pan = strip(frames, args.speed)
    with av.open(str(args.output), "w") as out:
        stream = out.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.colorspace = 1  # BT.709
        stream.codec_context.options = {"crf": "10", "preset": "medium"}
        stream.time_base = Fraction(1, RATE)
        for i in range(frames):
            x = i * args.speed
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(pan[:, x : x + WIDTH]), "rgb24")
            vf = vf.reformat(format="yuv420p", dst_colorspace=1)
            vf.colorspace = 1
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    print(f"{args.output}: {frames} frames, {WIDTH}x{HEIGHT}, {pan.shape[1]} px strip")


if __name__ == "__main__":
    main()
