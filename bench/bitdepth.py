"""Does keeping 10 bits pay? A 10-bit clip is made here, upscaled x2 by CARN-M (fp32) into 8-bit
and into 10-bit output planes, stored as they are and encoded (x264, x265, CRF 18), and each is
scored by Y-PSNR against the 10-bit original, in 10-bit code values (peak 1023; an 8-bit code c
counts as 4c).

The clip: real frames of bigbuckbunny area-downscaled to 320x180 in 16-bit RGB (so they hold
more than 8 bits of precision), BT.709; the 10-bit original's planes are made from them with
the engine's own colour conversion, and the input is those frames area-downscaled x2 to
160x90, converted the same way to 10-bit 4:2:0 (what decoding a lossless 10-bit file gives).

    python bench/bitdepth.py [--frames 8] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cpu_name, emit_table, official_model

from carn_stream.pipeline.colour import BT709, ColourSpec
from carn_stream.pipeline.engine.convert import rgb_to_yuv420
from carn_stream.pipeline.engine.infer import Engine, EngineConfig
from carn_stream.pipeline.frames import yuv420_video_frame

WIDTH, HEIGHT = 320, 180


def deep_frames(count: int) -> torch.Tensor:
    """(N, 3, H, W) float RGB in [0, 1] with 16-bit precision."""
    frames = []
    with av.open(str(DATA / "video" / "bigbuckbunny.mp4")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 7 == 3:
                small = frame.reformat(width=WIDTH, height=HEIGHT, format="rgb48le",
                                       interpolation="AREA")  # fmt: skip
                frames.append(small.to_ndarray().astype(np.float32) / 65535)
            if len(frames) == count:
                break
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def encoded_y(planes: list[np.ndarray], encoder: str | None) -> np.ndarray:
    """Y planes (N, H, W) after encoding with ``encoder`` at CRF 18 (None: as they are)."""
    if encoder is None:
        return planes[0].astype(np.float64)
    deep = planes[0].dtype == np.uint16
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mkv"
        with av.open(str(path), "w") as out:
            stream = out.add_stream(encoder, rate=25)
            stream.height, stream.width = planes[0].shape[1:]
            stream.pix_fmt = "yuv420p10le" if deep else "yuv420p"
            stream.codec_context.time_base = Fraction(1, 25)
            options = {"crf": "18", "preset": "veryfast"}
            if encoder == "libx265":
                options["x265-params"] = "log-level=error"
            stream.codec_context.options = options
            for i in range(len(planes[0])):
                frame = yuv420_video_frame(planes[0][i], planes[1][i], planes[2][i])
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        ys = []
        with av.open(str(path)) as c:
            for frame in c.decode(video=0):
                plane = frame.planes[0]
                dtype = np.dtype("<u2") if deep else np.uint8
                rows = np.frombuffer(plane, dtype).reshape(plane.height, -1)[:, : plane.width]
                ys.append(rows.astype(np.float64))
        return np.stack(ys)


def psnr10(y: np.ndarray, reference: np.ndarray, bits: int) -> float:
    scaled = y * (1 << (10 - bits))
    mse = np.mean((scaled - reference) ** 2)
    return float(10 * np.log10(1023**2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    hr = deep_frames(args.frames)
    ten = ColourSpec("yuv", 10, BT709)
    reference = rgb_to_yuv420(hr, ten)[0].numpy().astype(np.float64)
    lr = F.avg_pool2d(hr, 2)
    lr_planes = [t.numpy() for t in rgb_to_yuv420(lr, ten)]
    engine = Engine(official_model(), EngineConfig(device="cpu", precision="fp32"))
    rows = []
    outputs = {}
    for bits in (8, 10):
        out = ColourSpec("yuv", bits, BT709)
        outputs[bits] = engine.upscale([p.copy() for p in lr_planes], ten, 2, out)
    for encoder in (None, "libx264", "libx265"):
        scores = {bits: psnr10(encoded_y(outputs[bits], encoder), reference, bits)
                  for bits in (8, 10)}  # fmt: skip
        label = "planes as made" if encoder is None else f"{encoder} CRF 18"
        rows.append(f"| {label} | {scores[8]:.3f} | {scores[10]:.3f} | "
                    f"{scores[10] - scores[8]:+.3f} |")  # fmt: skip
    table = "\n".join([
        f"10-bit input {WIDTH // 2}x{HEIGHT // 2} -> x2 CARN-M fp32, {args.frames} frames of "
        f"bigbuckbunny; Y-PSNR (dB, 10-bit codes) against the 10-bit original; {cpu_name()}",
        "",
        "| output | 8-bit output | 10-bit output | 10 - 8 |",
        "|---|---:|---:|---:|",
        *rows,
    ])  # fmt: skip
    emit_table(table, args.markdown)


if __name__ == "__main__":
    main()
