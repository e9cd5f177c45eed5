"""Pipeline throughput: model-only vs the pipelined end-to-end run vs a naive sequential loop,
and the same end-to-end run made of segments.

    python bench/pipeline.py [--device auto|cpu|cuda] [--frames N] [--segment-seconds S]
                             [--markdown FILE]

Each case decodes a real clip cut to the case's LR size (a keyframe each second), then
measures in one run:
- model only: the inference engine (upload, colour conversion, CARN-M, download) on frames
  decoded beforehand;
- end to end: from the file to an MP4 (decode, batch, infer, encode, mux), the whole input as
  one segment (monolithic: ``run_whole``);
- segmented: the same input planned as segments (1 s by default: the worst case, as the
  clips are short; the service's default is 4 s), each its own pipeline run (two in
  flight, so one's decode overlaps another's encode), joined into an MP4 by remuxing; once on
  this process's worker, once in a supervised worker process (the service's default);
- naive: decode one frame -> RGB -> CARN-M -> encode -> next, all on one thread.
The ratio end-to-end / model-only shows what the pipeline costs on top of the model;
segmented / end-to-end what cutting the work into segments costs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, cpu_name, emit_table, make_clip, official_model

from carn_stream.allocator import tune_allocator
from carn_stream.model.inference import upscale_rgb
from carn_stream.pipeline.colour import ColourSpec
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker
from carn_stream.pipeline.execution.executors import InProcessExecutor, PlanRequest
from carn_stream.pipeline.execution.segmented import SegmentedRun, run_whole
from carn_stream.pipeline.execution.worker_process import ProcessExecutor
from carn_stream.pipeline.media.decode import frame_planes, probe
from carn_stream.pipeline.media.encode import EncoderOptions
from carn_stream.pipeline.media.formats import FORMATS
from carn_stream.pipeline.run import PipelineOptions

CASES = [  # (label, source clip, LR width, LR height, scale)
    ("176x144 x2", "carphone_pristine.mp4", 176, 144, 2),
    ("320x180 x4", "bigbuckbunny.mp4", 320, 180, 4),
]
GPU_CASES = [  # 1080p out
    ("480x270 x4", "bigbuckbunny.mp4", 480, 270, 4),
    ("960x540 x2", "bigbuckbunny.mp4", 960, 540, 2),
]


def model_only(engine: Engine, clip: Path, scale: int, batch: int) -> float:
    with av.open(str(clip)) as c:
        decoded = [frame_planes(f) for f in c.decode(video=0)]
    spec: ColourSpec = decoded[0][1]
    groups = [decoded[i : i + batch] for i in range(0, len(decoded), batch)]
    stacked = [[np.stack(p) for p in zip(*(d[0] for d in g), strict=True)] for g in groups]
    engine.upscale(stacked[0], spec, scale)  # warm-up
    start = time.perf_counter()
    for planes in stacked:
        engine.upscale(planes, spec, scale)
    return len(decoded) / (time.perf_counter() - start)


def end_to_end(worker: InferenceWorker, clip: Path, scale: int, batch: int, tmp: Path) -> float:
    options = PipelineOptions(scale=scale, batch_size=batch, encoder=EncoderOptions())
    executor = InProcessExecutor(worker, slots=1)
    start = time.perf_counter()
    frames = asyncio.run(run_whole(clip, tmp / "e2e.mp4", options, executor, overwrite=True))
    return frames / (time.perf_counter() - start)


def bench_worker(device: str, precision: str) -> InferenceWorker:
    """The worker a worker process builds (module level: the process imports it)."""
    tune_allocator()
    return InferenceWorker(Engine(official_model(), EngineConfig(device=device,
                                                                 precision=precision)))  # fmt: skip


SEGMENT_SECONDS = 1.0  #: --segment-seconds


async def _segmented_fps(executor, clip: Path, scale: int, batch: int, tmp: Path):
    """Frames per second of a segmented run (plan, segments, join), and its segment count."""
    start = time.perf_counter()
    plan = await executor.plan(PlanRequest(clip, SEGMENT_SECONDS))
    run = SegmentedRun(
        source=clip, plan=plan, fmt=FORMATS["mp4"], output=tmp / "segmented.mp4",
        work_dir=tmp / "work",
        options=PipelineOptions(scale=scale, batch_size=batch, encoder=EncoderOptions()),
        executor=executor, in_flight=executor.slots,
    )  # fmt: skip
    await run.execute()
    return plan.frames / (time.perf_counter() - start), len(plan.segments)


def segmented(worker: InferenceWorker, clip: Path, scale: int, batch: int, tmp: Path):
    return asyncio.run(_segmented_fps(InProcessExecutor(worker), clip, scale, batch, tmp))


def in_worker_process(factory, clip: Path, scale: int, batch: int, tmp: Path) -> float:
    async def go() -> float:
        executor = ProcessExecutor(factory)
        await executor.start()  # the worker's start-up is not part of a job
        try:
            # Warm, as the other columns' engine is: the worker's engine makes its first-use
            # choices (auto's measurement, OpenVINO compiles per shape) once per size.
            (tmp / "warm-up").mkdir(exist_ok=True)
            await _segmented_fps(executor, clip, scale, batch, tmp / "warm-up")
            return (await _segmented_fps(executor, clip, scale, batch, tmp))[0]
        finally:
            await executor.close()

    return asyncio.run(go())


def naive(model: torch.nn.Module, clip: Path, scale: int, tmp: Path) -> float:
    start = time.perf_counter()
    frames = 0
    with av.open(str(clip)) as src, av.open(str(tmp / "naive.mp4"), "w") as out:
        in_stream = src.streams.video[0]
        stream = None
        for frame in src.decode(in_stream):
            sr = upscale_rgb(model, frame.to_ndarray(format="rgb24"), scale)
            if stream is None:
                stream = out.add_stream("libx264", rate=in_stream.average_rate or 25)
                stream.height, stream.width = (sr.shape[0] // 2 * 2, sr.shape[1] // 2 * 2)
                stream.pix_fmt = "yuv420p"
                stream.codec_context.options = {"crf": "18", "preset": "veryfast"}
            vf = av.VideoFrame.from_ndarray(sr, format="rgb24").reformat(format="yuv420p")
            out.mux(stream.encode(vf))
            frames += 1
        out.mux(stream.encode(None))
    return frames / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--frames", type=int, default=0, help="frames per case (default: by size)")
    parser.add_argument("--batch", type=int, default=0, help="default: 1 on CPU, 8 on CUDA")
    parser.add_argument("--precision", default="auto", help="engine precision (default auto)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--no-process", action="store_true", help="skip the worker-process column")
    parser.add_argument("--segment-seconds", type=float, default=1.0, help="default 1")
    args = parser.parse_args()
    global SEGMENT_SECONDS
    SEGMENT_SECONDS = args.segment_seconds
    tune_allocator()
    engine = Engine(official_model(), EngineConfig(device=args.device, precision=args.precision))
    cuda = engine.device.type == "cuda"
    batch = args.batch or (8 if cuda else 1)
    worker = InferenceWorker(engine)
    naive_model = official_model().to(engine.device)
    device = torch.cuda.get_device_name(engine.device) if cuda else cpu_name()
    header = (
        f"device: {engine.device} ({device}), precision {engine.precision}, batch {batch}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU threads"
    )
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            for label, name, w, h, scale in CASES + (GPU_CASES if cuda else []):
                tmp = Path(tmp_name) / label.replace(" ", "-")  # each case's outputs apart
                tmp.mkdir()
                frames = args.frames or (240 if cuda else (72 if w * h < 40000 else 48))
                clip = make_clip(DATA / "video" / name, w, h, frames, tmp / f"{w}x{h}.mp4")
                frames = probe(clip).frames  # a clip shorter than asked gives what it has
                m = model_only(engine, clip, scale, batch)
                e = end_to_end(worker, clip, scale, batch, tmp)
                s, count = segmented(worker, clip, scale, batch, tmp)
                factory = functools.partial(bench_worker, args.device, engine.precision)
                p = 0.0 if args.no_process else in_worker_process(factory, clip, scale, batch, tmp)
                n = naive(naive_model, clip, scale, tmp)
                rows.append((label, frames, count, m, e, s, p, n))
                print(
                    f"  {label}: model {m:.2f} fps, e2e {e:.2f} fps, segmented {s:.2f} fps "
                    f"({count} segments), worker process {p:.2f} fps, naive {n:.2f} fps",
                    file=sys.stderr,
                )
    finally:
        worker.close()
    lines = [
        header,
        "",
        "| case | frames | segments | model only fps | end-to-end fps | segmented fps "
        "| worker process fps | naive loop fps | e2e / model | segmented / e2e "
        "| process / e2e | e2e / naive |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, frames, count, m, e, s, p, n in rows:
        lines.append(
            f"| {label} | {frames} | {count} | {m:.2f} | {e:.2f} | {s:.2f} | {p:.2f} | {n:.2f} "
            f"| {e / m:.2f} | {s / e:.2f} | {p / e:.2f} | {e / n:.2f} |"
        )
    emit_table("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
