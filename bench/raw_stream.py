"""What a raw H.264 stream costs before its first segment: planning it (its copy with timestamps,
one decode pass, then the plan) against planning the same packets in MP4 (the packet index only).

The clip: real frames of bigbuckbunny at 1280x720, played forwards and backwards to ``--frames``,
encoded with x264 (veryfast, CRF 23, B-frames) into MP4; the raw stream is its packets copied
out as they are (Annex B).

    python bench/raw_stream.py [--frames 600] [--repeats 3] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DATA, cpu_name, emit_table

from carn_stream.pipeline.execution.executors import PlanRequest, plan_for
from tests.media import raw_stream


def write_clip(path: Path, frames: int) -> Path:
    with av.open(str(DATA / "video" / "bigbuckbunny.mp4")) as source:
        pictures = [f.to_ndarray(format="yuv420p") for f in source.decode(video=0)]
    cycle = pictures + pictures[::-1]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": "23"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(cycle[i % len(cycle)], format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def best_of(repeats: int, request: PlanRequest) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        plan_for(request)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mp4 = write_clip(folder / "clip.mp4", args.frames)
        raw = raw_stream(mp4, folder / "clip.h264")
        baseline = best_of(args.repeats, PlanRequest(mp4, 4.0))
        timed = best_of(args.repeats, PlanRequest(raw, 4.0, timed_copy=folder / "timed.mp4"))
    rows = [("MP4 (baseline): plan", baseline), ("raw .h264: timed copy + plan", timed)]
    lines = [
        f"1280x720 H.264 with B-frames, {args.frames} frames, best of {args.repeats}; "
        f"CPU: {cpu_name()}",
        "",
        "| input | seconds | frames/s | vs baseline |",
        "|---|---|---|---|",
    ]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.3f} | {args.frames / seconds:.0f} | "
                     f"{seconds / baseline:.1f}x |")  # fmt: skip
    emit_table("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
