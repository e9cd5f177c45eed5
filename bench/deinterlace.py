"""What making interlaced frames progressive costs: a segment's decode with ``bwdif`` against
the same decode without it (the baseline), per frame, at 576i (MPEG-2, DVD and broadcast SD)
and 1080i (H.264 MBAFF, broadcast HD and AVCHD camcorders).

The clips: a horizontal pan across a Big Buck Bunny frame (scaled to the size), its fields
woven a field period apart, ``--frames`` frames in MPEG-TS, bottom field first.

    python bench/deinterlace.py [--frames 100] [--repeats 3] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DATA, cpu_name, emit_table

from carn_stream.pipeline.media.segments import WHOLE, plan_segments, segment_frames

#: (name, width, height, encoder, its options)
CLIPS = (
    ("576i MPEG-2", 720, 576, "mpeg2video", {"qscale": "3", "g": "12"}),
    ("1080i H.264", 1920, 1080, "libx264",
     {"crf": "20", "preset": "veryfast", "x264-params": "interlaced=1:keyint=25"}),
)  # fmt: skip


def write_clip(path: Path, width: int, height: int, codec: str, options: dict, frames: int):
    with av.open(str(DATA / "video" / "bigbuckbunny.mp4")) as source:
        still = next(source.decode(video=0))
    wide = still.reformat(width=width * 2, height=height).to_ndarray(format="rgb24")
    step = max(1, width // (2 * frames))
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = options
        if codec == "mpeg2video":
            flags = av.codec.context.Flags
            stream.codec_context.flags |= flags.interlaced_dct | flags.interlaced_me
        for i in range(frames):
            first = wide[:, 2 * i * step : 2 * i * step + width]
            second = wide[:, (2 * i + 1) * step : (2 * i + 1) * step + width]
            woven = np.ascontiguousarray(second)
            woven[1::2] = first[1::2]
            frame = av.VideoFrame.from_ndarray(woven, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def best_of(repeats: int, path: Path, deinterlace: bool) -> tuple[float, int]:
    plan = plan_segments(path, WHOLE)
    times, count = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        with av.open(str(path)) as container:
            count = sum(1 for _ in segment_frames(container, plan.segments[0],
                                                  deinterlace=deinterlace))  # fmt: skip
        times.append(time.perf_counter() - started)
    return min(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    lines = [
        f"decode of one segment, {args.frames} frames, best of {args.repeats}; "
        f"CPU: {cpu_name()}",
        "",
        "| clip | decode only (baseline), ms/frame | decode + bwdif, ms/frame | vs baseline |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, width, height, codec, options in CLIPS:
            path = write_clip(Path(tmp) / f"{width}.ts", width, height, codec, options,
                              args.frames)  # fmt: skip
            base, n = best_of(args.repeats, path, False)
            made, m = best_of(args.repeats, path, True)
            assert n == m == args.frames, (n, m)
            lines.append(f"| {name} | {1000 * base / n:.2f} | {1000 * made / n:.2f} | "
                         f"{made / base:.2f}x |")  # fmt: skip
    emit_table("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
