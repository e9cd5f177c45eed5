"""Seams: what restarting the encoder at each segment costs in quality.

    python bench/seams.py [--precision fp32] [--crf 18] [--markdown FILE]

CARN-M is frame-independent, so segments add no model seam; the encoder restarts at each one.
For each real clip (re-encoded at crf 10 with a keyframe each second, so that it has
segments), this upscales x2 three times with the same engine: lossless (crf 0, monolithic) as
the reference, monolithic at --crf and segmented (1 s segments) at --crf. It prints the Y-PSNR
of each against the reference, the Y-PSNR of segmented against monolithic, and, at every
segment boundary, the per-frame PSNR of the boundary frames against the mean of the three
frames on either side (a visible pulse would show as a jump there), beside the same figure of
the monolithic output at the same frames (what frame-to-frame variation alone gives), and the
segmented output's video bytes over the monolithic one's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, cpu_name, emit_table, make_clip, official_model

from carn_stream.allocator import tune_allocator
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker
from carn_stream.pipeline.execution.executors import InProcessExecutor, PlanRequest
from carn_stream.pipeline.execution.segmented import SegmentedRun, run_whole
from carn_stream.pipeline.media.encode import EncoderOptions
from carn_stream.pipeline.media.formats import FORMATS
from carn_stream.pipeline.run import PipelineOptions

CLIPS = [("carphone 176x144", "carphone_pristine.mp4", 176, 144, 120),
         ("bigbuckbunny 320x180", "bigbuckbunny.mp4", 320, 180, 132)]  # fmt: skip


def luma(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray").astype(np.float64) for f in c.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def boundary_offsets(per_frame: list[float], plan) -> list[float]:
    """At every segment boundary, the last frame before it and the first after it: each one's
    PSNR minus the mean of the three frames on either side of it."""
    offsets = []
    for segment in plan.segments[1:]:
        for i in (segment.first_frame - 1, segment.first_frame):
            around = [j for j in range(i - 3, i + 4) if j != i and 0 <= j < len(per_frame)]
            offsets.append(per_frame[i] - float(np.mean([per_frame[j] for j in around])))
    return offsets


def size(path: Path) -> int:
    """Bytes of the video stream only (the outputs carry the same audio)."""
    with av.open(str(path)) as c:
        return sum(p.size for p in c.demux(video=0) if p.size)


def run_all(worker: InferenceWorker, clip: Path, crf: int, tmp: Path):
    executor = InProcessExecutor(worker)
    options = PipelineOptions(scale=2, encoder=EncoderOptions(crf=0))
    asyncio.run(run_whole(clip, tmp / "ref.mp4", options, executor, overwrite=True))
    options = PipelineOptions(scale=2, encoder=EncoderOptions(crf=crf))
    asyncio.run(run_whole(clip, tmp / "mono.mp4", options, executor, overwrite=True))

    async def segmented():
        plan = await executor.plan(PlanRequest(clip, 1.0))
        run = SegmentedRun(source=clip, plan=plan, fmt=FORMATS["mp4"], output=tmp / "seg.mp4",
                           work_dir=tmp / "work", options=options, executor=executor)  # fmt: skip
        await run.execute()
        return plan

    return asyncio.run(segmented())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    tune_allocator()
    worker = InferenceWorker(
        Engine(official_model(), EngineConfig(device="cpu", precision=args.precision))
    )
    lines = [
        f"CARN-M x2, {args.precision}, libx264 veryfast crf {args.crf}; {cpu_name()}",
        "",
        "| clip | frames | segments | mono vs lossless dB | segmented vs lossless dB "
        "| segmented vs mono dB | worst boundary frame vs its neighbours dB "
        "| mean abs boundary offset dB | mono at the same frames dB | segmented / mono bytes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    try:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            for label, source, w, h, frames in CLIPS:
                clip = make_clip(DATA / "video" / source, w, h, frames, tmp / f"{w}x{h}.mp4")
                plan = run_all(worker, clip, args.crf, tmp)
                ref, mono, seg = (
                    luma(tmp / "ref.mp4"),
                    luma(tmp / "mono.mp4"),
                    luma(tmp / "seg.mp4"),
                )
                per_frame = [psnr(r, s) for r, s in zip(ref, seg, strict=True)]
                mono_frame = [psnr(r, m) for r, m in zip(ref, mono, strict=True)]
                vs_mono = np.mean([psnr(m, s) for m, s in zip(mono, seg, strict=True)])
                offsets = boundary_offsets(per_frame, plan)
                natural = boundary_offsets(mono_frame, plan)  # the same frames, no restart
                worst = max(offsets, key=abs) if offsets else 0.0
                lines.append(
                    f"| {label} | {len(ref)} | {len(plan.segments)} | {np.mean(mono_frame):.2f} "
                    f"| {np.mean(per_frame):.2f} | {vs_mono:.2f} | {worst:+.2f} "
                    f"| {np.mean(np.abs(offsets)):.2f} | {np.mean(np.abs(natural)):.2f} "
                    f"| {size(tmp / 'seg.mp4') / size(tmp / 'mono.mp4'):.3f} |"
                )
                print(lines[-1], file=sys.stderr)
                for leftover in ("ref.mp4", "mono.mp4", "seg.mp4"):
                    (tmp / leftover).unlink()
    finally:
        worker.close()
    emit_table("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
