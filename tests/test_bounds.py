"""Bounded cost, in process: limits judged on every decoded frame and while a plan is read, and
the service's shared pools and queues bounded so that no stranger can fill them. The service
end to end (on 127.0.0.1) is in test_hostile.py."""

from __future__ import annotations

import asyncio
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from carn_stream.model.baselines import Bicubic
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker
from carn_stream.pipeline.errors import LimitError
from carn_stream.pipeline.execution.executors import PLANS_AT_ONCE, InProcessExecutor, PlanRequest
from carn_stream.pipeline.execution.segmented import SegmentedRun, SegmentFailed
from carn_stream.pipeline.execution.worker_process import ProcessExecutor
from carn_stream.pipeline.media.formats import FORMATS
from carn_stream.pipeline.media.segments import InputLimits, plan_segments
from carn_stream.pipeline.run import PipelineOptions
from carn_stream.server.live import LatencyPolicy, UpscaleTrack
from carn_stream.server.metrics import Metrics
from tests.crashing import crashing_worker
from tests.media import concat_h264, write_clip, write_endless_mkv

X264 = {"crf": "30", "preset": "ultrafast", "g": "25"}


@pytest.fixture(scope="module")
def size_switch(tmp_path_factory) -> Path:
    """1 s at 64x48, then 1 s at 640x360, in one MPEG-TS stream whose header says 64x48."""
    folder = tmp_path_factory.mktemp("switch")
    rng = np.random.default_rng(1)
    small = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(25)]
    large = [rng.integers(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(25)]
    parts = [write_clip(folder / "small.mp4", small, options=X264),
             write_clip(folder / "large.mp4", large, options=X264)]  # fmt: skip
    return concat_h264(folder / "switch.ts", parts)


SEEN: list[tuple[int, int]] = []  #: (width, height) of every batch the model was given


class _Recording(Bicubic):
    def forward(self, x, scale=None):
        SEEN.append((x.shape[-1], x.shape[-2]))
        return super().forward(x, scale)


def test_a_stream_that_grows_after_its_header_fails_its_segment_before_the_model(
    size_switch, tmp_path
):
    # x2 with a limit of 100,000 output pixels: the header's 64x48 (128x96 = 12,288) passes,
    # the 640x360 pictures after it (1280x720 = 921,600, 9.2 times the limit) must not.
    limits = InputLimits(2, 100_000, 3600)
    plan = plan_segments(size_switch, 1.0, limits=limits)
    assert (plan.width, plan.height) == (64, 48) and len(plan.segments) == 2
    SEEN.clear()
    worker = InferenceWorker(Engine(_Recording(), EngineConfig(device="cpu", precision="fp32")))
    executor = InProcessExecutor(worker, slots=1, owns_worker=True)
    options = PipelineOptions(scale=2, max_output_pixels=100_000)
    starts: list[tuple[int, int]] = []
    run = SegmentedRun(source=size_switch, plan=plan, fmt=FORMATS["mp4"],
                       output=tmp_path / "out.mp4", work_dir=tmp_path / "work",
                       options=options, executor=executor, in_flight=1,
                       on_start=lambda index, attempt: starts.append((index, attempt)))  # fmt: skip

    async def go():
        try:
            await run.execute()
        finally:
            await executor.close()

    with pytest.raises(SegmentFailed) as failed:
        asyncio.run(go())
    message = str(failed.value)
    assert message.startswith(
        "segment 1 (1.00-2.00 s) failed: frame 25 is 640x360: its output "
        "would be 1280x720, over the limit of 100000 pixels"
    ), message
    assert starts == [(0, 1), (1, 1)]  # refused, not retried
    assert set(SEEN) == {(64, 48)}  # no 640x360 picture reached the model
    assert not (tmp_path / "out.mp4").exists()


@pytest.fixture(scope="module")
def endless(tmp_path_factory) -> Path:
    """200,000 tiny frames 40 ms apart (8,000 s, 3.6 MB), and no duration in the header."""
    return write_endless_mkv(tmp_path_factory.mktemp("endless") / "endless.mkv", 200_000)


@pytest.mark.parametrize(
    "limits,message,peak_mb",
    [
        # Without limits the index of all 200,000 packets peaked at 33 MB (traced); the plan
        # stops at 3,600 s (90,001 packets): 8.7 MB measured.
        (InputLimits(2, 10**9, 3600), "longer than the limit of 3600 s", 12),
        # Frames counted as they are read: 10,001 packets, 1.0 MB measured.
        (InputLimits(2, 10**9, 10**6, max_frames=10_000), "more than 10000 frames", 3),
    ],
    ids=["duration", "frames"],
)
def test_planning_stops_as_soon_as_the_input_passes_a_limit(endless, limits, message, peak_mb):
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match=message):
            plan_segments(endless, 4.0, limits=limits)
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert peak < peak_mb, peak


def test_the_worker_process_plans_a_bounded_number_of_inputs_at_once(monkeypatch, tmp_path):
    # Each plan holds an input's packet index in the worker process: eight ingests at once
    # must not hold eight. (The calls are counted where they would go to the process.)
    running, most = 0, 0

    async def slow_call(self, kind, payload, on_frame):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        raise LimitError("over")

    monkeypatch.setattr(ProcessExecutor, "_call", slow_call)
    executor = ProcessExecutor(crashing_worker, slots=1)  # nothing is started

    async def go():
        requests = [executor.plan(PlanRequest(tmp_path / f"{i}.mp4", 4.0)) for i in range(8)]
        return await asyncio.gather(*requests, return_exceptions=True)

    assert all(isinstance(r, LimitError) for r in asyncio.run(go()))
    assert most == PLANS_AT_ONCE == 2  # without the bound: 8


class _Frames(MediaStreamTrack):
    """A live source whose pictures change size: 64x48, then 640x360."""

    kind = "video"

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.sizes = list(sizes)

    async def recv(self) -> av.VideoFrame:
        if not self.sizes:
            raise MediaStreamError
        width, height = self.sizes.pop(0)
        frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), "rgb24")
        frame.pts, frame.time_base = len(self.sizes), Fraction(1, 90000)
        await asyncio.sleep(0.05)
        return frame


def test_a_live_source_that_grows_is_shrunk_to_the_limit_on_every_frame():
    SEEN.clear()
    worker = InferenceWorker(Engine(_Recording(), EngineConfig(device="cpu", precision="fp32")))

    async def go():
        source = _Frames([(64, 48), (640, 360)])
        policy = LatencyPolicy(adaptive=False)
        track = UpscaleTrack(source, worker, 2, Metrics(), policy, max_output_pixels=100_000)
        outputs = []
        for _ in range(2):
            frame = await track.recv()
            outputs.append((frame.width, frame.height))
        track.stop()
        return outputs

    try:
        outputs = asyncio.run(go())
    finally:
        worker.close()
    # 640x360 at x2 would be 921,600 pixels: that frame is shrunk to 210x118 (420x236 out,
    # 99,120 pixels) before the model sees it.
    assert outputs == [(128, 96), (420, 236)]
    assert SEEN == [(64, 48), (210, 118)]
