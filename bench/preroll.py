"""What cutting between keyframes costs: the decode pre-roll of a long-GOP input's segments.

    python bench/preroll.py [--sizes 320x180,1280x720] [--loops 4] [--seconds 4]
                            [--precision auto] [--markdown FILE]

Big Buck Bunny (132 frames at 25 fps), played ``--loops`` times in a row, is encoded at each
size with one keyframe (the first frame) and planned into ``--seconds`` segments, which then
start between keyframes. For each segment: the frames decoded and dropped before its start
(the pre-roll: from the keyframe at or before it), the time from opening the input to the
segment's first frame (one decoder thread, as the pipeline decodes beside a CPU model), and
that time against upscaling the segment's frames at x2 with the engine (``--precision``,
timed per frame on real frames of that size after a warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cpu_name, emit_table, official_model, real_frames

from carn_stream.allocator import tune_allocator
from carn_stream.pipeline.engine.infer import Engine, EngineConfig
from carn_stream.pipeline.media.decode import frame_planes, open_input
from carn_stream.pipeline.media.segments import plan_segments, segment_frames

CLIP = DATA / "video" / "bigbuckbunny.mp4"


def one_keyframe_clip(width: int, height: int, loops: int, dest: Path) -> Path:
    """The clip at width x height, played ``loops`` times, H.264 with a single keyframe."""
    with av.open(str(CLIP)) as src:
        frames = [
            f.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
            for f in src.decode(video=0)
        ]
    with av.open(str(dest), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {
            "crf": "18", "preset": "veryfast", "x264-params": "keyint=infinite:scenecut=0",
        }  # fmt: skip
        for i in range(len(frames) * loops):
            frame = frames[i % len(frames)]
            frame.pts, frame.time_base = i, Fraction(1, 25)
            frame.pict_type = av.video.frame.PictureType.NONE  # no forced keyframe
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return dest


def time_to_first_frame(path: Path, segment) -> tuple[float, float]:
    """Seconds from opening ``path`` to ``segment``'s first frame, and to its last."""
    started = time.perf_counter()
    with open_input(path) as container:
        frames = segment_frames(container, segment, threads=1)
        next(frames)
        first = time.perf_counter() - started
        for _ in frames:
            pass
    return first, time.perf_counter() - started


def upscale_seconds_per_frame(width: int, height: int, precision: str) -> tuple[float, str]:
    """Median engine seconds per frame at x2 on real frames of this size (after a warm-up),
    and the precision the engine ran."""
    engine = Engine(official_model(), EngineConfig(device="cpu", precision=precision))
    times = []
    for rgb in real_frames(width, height, 4):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        planes, spec = frame_planes(frame)
        stacked = [p[None] for p in planes]
        started = time.perf_counter()
        engine.upscale(stacked, spec, 2)
        times.append(time.perf_counter() - started)
    # the first call decides auto and compiles
    return statistics.median(times[1:]), engine.describe_precision()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="320x180,1280x720")
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    tune_allocator()
    rows = [
        f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; x2 {args.precision}; "
        f"{args.seconds:g} s segments; one keyframe",
        "",
        "| size | segment | start s | frames | pre-roll frames | to first frame s "
        "| whole segment decoded s | upscale x2 s | pre-roll / upscale |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = map(int, size.split("x"))
            clip = one_keyframe_clip(width, height, args.loops, Path(tmp) / f"{size}.mp4")
            plan = plan_segments(clip, args.seconds)
            per_frame, ran = upscale_seconds_per_frame(width, height, args.precision)
            print(f"{size}: {ran}, {per_frame:.3f} s per frame", file=sys.stderr)
            for segment in plan.segments:
                first, whole = time_to_first_frame(clip, segment)
                upscale = per_frame * segment.frames
                rows.append(
                    f"| {size} | {segment.index} | {segment.start:.2f} | {segment.frames} "
                    f"| {segment.first_frame} | {first:.3f} | {whole:.3f} | {upscale:.1f} "
                    f"| {first / upscale:.2%} |"
                )
    emit_table("\n".join(rows), args.markdown)


if __name__ == "__main__":
    main()
