"""Workers for the cluster and executor tests: bicubic upscaling that takes a fixed time per
batch, so that a segment is still running when a test removes or adds a node, and one that
takes a while to start. Module-level, so that a Ray actor on another node (or a spawned worker
process) can build them."""

from __future__ import annotations

import time

from torch import Tensor

from carn_stream.model.baselines import Bicubic
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker

SECONDS_PER_BATCH = 0.08


class SlowBicubic(Bicubic):
    def forward(self, x: Tensor, scale: int | None = None) -> Tensor:
        time.sleep(SECONDS_PER_BATCH)
        return super().forward(x, scale)


def slow_worker() -> InferenceWorker:
    return InferenceWorker(Engine(SlowBicubic(), EngineConfig(device="cpu", precision="fp32")))


def slow_to_start_worker() -> InferenceWorker:
    """Bicubic, after two seconds of "loading"."""
    time.sleep(2.0)
    return InferenceWorker(Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32")))


def slow_writing_worker() -> InferenceWorker:
    """Bicubic, in a worker process whose every write of frames to a segment takes a second
    (a slow disk, a slow encoder): a write, in its thread, is not cut short by a cancel."""
    from carn_stream.pipeline import run

    write = run._write

    def slow_write(sink, frames, *rest):
        if frames:
            time.sleep(1.0)
        return write(sink, frames, *rest)

    run._write = slow_write
    return InferenceWorker(Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32")))


def stuck_on_hang_worker() -> InferenceWorker:
    """Bicubic, in a worker process whose decoding of an input named ``hang*`` never ends
    (a demuxer stuck in a loop on a hostile file)."""
    from pathlib import Path

    from carn_stream.pipeline import run

    frames_of = run.segment_frames

    def segment_frames(container, *args, **kwargs):
        if Path(container.name).name.startswith("hang"):
            while True:
                time.sleep(0.01)
        return frames_of(container, *args, **kwargs)

    run.segment_frames = segment_frames
    return InferenceWorker(Engine(Bicubic(), EngineConfig(device="cpu", precision="fp32")))

