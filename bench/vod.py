"""Videos served on request: how long a player waits, and whether making keeps up with playback.

    python bench/vod.py [--device auto|cpu|cuda] [--precisions fp32,auto] [--markdown FILE]

For each case a real clip is cut to the case's size (a keyframe each second) and ingested by
the service's own video manager (fetch of a local file, plan, renditions) on an in-process
executor with 1 s segments and no prefetch, then, with the model warm:
- first segment: a cold request for the first upscaled segment, until its bytes are ready;
- seek to middle: a cold request for the middle segment;
- sustained real-time factor: the remaining segments requested in order, time to make them
  over their duration (below 1: making keeps up with playback).
The CPU cases run once per precision (``auto``: the fastest mode within 0.05 dB of fp32),
side by side in the same process, so the ratios hold on a busy machine: a size a few CPU
cores keep up with and the 320x180 x2 of the earlier runs. The CUDA cases (960x540 x2 and
480x270 x4, 1080p out, fp16) run as well when CUDA is present.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cpu_name, emit_table, make_clip, official_model

from carn_stream.allocator import tune_allocator
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker
from carn_stream.pipeline.execution.executors import InProcessExecutor
from carn_stream.pipeline.execution.slots import Slots
from carn_stream.server.metrics import Metrics
from carn_stream.server.vod.manager import VideoManager
from carn_stream.server.vod.store import VideoStore
from carn_stream.settings import Settings

CPU_CASES = [("160x90 x2", 160, 90, 2), ("320x180 x2", 320, 180, 2)]
GPU_CASES = [("960x540 x2", 960, 540, 2), ("480x270 x4", 480, 270, 4)]
CLIP = "bigbuckbunny.mp4"  # 132 frames at 25 fps: five 1 s segments


async def measure(worker: InferenceWorker, clip: Path, scale: int, tmp: Path) -> dict[str, float]:
    settings = Settings(data_dir=tmp / f"data-{time.monotonic_ns()}", allow_local_files=True,
                        segment_seconds=1, vod_prefetch_segments=0)  # fmt: skip
    store = VideoStore(settings.data_dir / "videos.sqlite3")
    executor = InProcessExecutor(worker, settings.worker_slots)
    manager = VideoManager(store, settings, Metrics(), lambda: executor,
                           Slots(settings.worker_slots, urgent_extra=1))  # fmt: skip
    try:
        began = time.perf_counter()
        video = await manager.ingest(str(clip), [scale])
        ingest = time.perf_counter() - began
        name = f"x{scale}"
        warm = await manager.ingest(str(clip), [scale])
        await manager.segment(warm, name, 0)  # model loaded, shapes compiled
        segments = video.plan.segments
        timings = {}
        for index in (0, len(segments) // 2):
            began = time.perf_counter()
            await manager.segment(video, name, index)
            timings[index] = time.perf_counter() - began
        rest = [s for s in segments if s.index not in timings]
        began = time.perf_counter()
        for s in rest:
            await manager.segment(video, name, s.index)
        made = time.perf_counter() - began
        return {
            "ingest": ingest,
            "first": timings[0],
            "seek": timings[len(segments) // 2],
            "rtf": made / sum(s.duration for s in rest),
            "segments": len(segments),
        }
    finally:
        await manager.close()
        await executor.close()
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", default="fp32,auto", help="CPU modes, side by side")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    tune_allocator()
    probe = Engine(official_model(), EngineConfig(device=args.device, precision="fp32"))
    cuda = probe.device.type == "cuda"
    cases = [(c, p, "cpu") for c in CPU_CASES for p in args.precisions.split(",")]
    if cuda:
        cases += [(c, "fp16", args.device) for c in GPU_CASES]
    device = torch.cuda.get_device_name(probe.device) if cuda else cpu_name()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for (label, w, h, scale), precision, device_name in cases:
            clip = tmp / f"{w}x{h}.mp4"
            if not clip.exists():
                make_clip(DATA / "video" / CLIP, w, h, 132, clip)
            engine = Engine(official_model(), EngineConfig(device=device_name, precision=precision))
            worker = InferenceWorker(engine)
            try:
                result = asyncio.run(measure(worker, clip, scale, tmp))
            finally:
                worker.close()
            rows.append((label, engine.describe_precision(), result))
            print(f"  {label} {engine.precision}: {result}", file=sys.stderr)
    lines = [
        f"device: {probe.device} ({device}), torch {torch.__version__}, "
        f"{os.cpu_count()} CPU threads; 1 s segments, batch 1 on CPU and 8 on CUDA",
        "",
        "| case | precision | segments | ingest s | first segment s | seek to middle s "
        "| sustained real-time factor |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, precision, r in rows:
        lines.append(
            f"| {label} | {precision} | {r['segments']} | {r['ingest']:.2f} | {r['first']:.2f} "
            f"| {r['seek']:.2f} | {r['rtf']:.2f} |"
        )
    emit_table("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
