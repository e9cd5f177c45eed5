"""Where a segment runs: one small interface, and the in-process implementation.

A :class:`SegmentExecutor` plans inputs and upscales segments. Implementations differ only in where
the work happens: in this process on a shared inference worker (:class:`InProcessExecutor`), in a
supervised worker process that owns its own engine
(:class:`carn_stream.pipeline.execution.worker_process.ProcessExecutor`: a crash while decoding a
hostile input kills that process, not the caller), or on a cluster. Tasks and results are plain,
picklable dataclasses."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from carn_stream.pipeline.media.decode import describe, open_input
from carn_stream.pipeline.media.elementary import copy_with_times, is_raw_stream
from carn_stream.pipeline.media.listing import has_audio_apart, join_apart
from carn_stream.pipeline.media.remux import RemuxTask, remux_segment
from carn_stream.pipeline.media.segments import InputLimits, Segment, SegmentPlan, plan_segments
from carn_stream.pipeline.run import FrameReport, PipelineOptions, SegmentSource, run_pipeline

if TYPE_CHECKING:  # the engine (torch) is the caller's; planning and remuxing need none
    from carn_stream.pipeline.engine.infer import InferenceWorker

FrameCallback = Callable[[FrameReport], None]
#: Inputs an executor plans at once (each holds an input's packet index while it reads it).
PLANS_AT_ONCE = 2


class WorkerCrashed(Exception):
    """The process that ran a segment died; the segment may be retried."""


@dataclass(frozen=True)
class PlanRequest:
    source: Path
    target_seconds: float
    limits: InputLimits | None = None  #: checked from the header before the plan is made
    #: Where a raw H.264/HEVC stream's copy with timestamps, or a listed input's video joined
    #: with its audio delivered apart, goes, to be planned and read in its place (it may be
    #: ``source`` itself, replaced); None: raw streams are refused.
    timed_copy: Path | None = None
    #: A raw stream's frame rate (None: the one its header gives, else 25 fps).
    raw_rate: Fraction | None = None


@dataclass(frozen=True)
class SegmentTask:
    """Upscale one segment of ``source`` into the MPEG-TS file ``target`` (published by rename)."""

    source: Path
    segment: Segment
    time_base: Fraction
    last: bool  #: the plan's last segment
    target: Path
    options: PipelineOptions
    decode_order: bool = False  #: the plan's: packets numbered in decode order (AVI)
    #: seconds taken off every time as it is decoded: the plan's origin (see
    #: ``SegmentPlan.origin``; 0 on a cluster worker, whose copy counts from it already)
    time_shift: int = 0

    @classmethod
    def of(
        cls, source: Path, plan: SegmentPlan, index: int, target: Path, options: PipelineOptions
    ) -> SegmentTask:
        """Segment ``index`` of ``plan``, encoded with ``options`` and the title's HDR10
        metadata (each segment writes it, however the run was asked for)."""
        return cls(
            source=source,
            segment=plan.segments[index],
            time_base=plan.time_base,
            last=index == len(plan.segments) - 1,
            target=target,
            options=replace(options, encoder=replace(options.encoder, hdr=plan.hdr)),
            decode_order=plan.decode_order,
            time_shift=plan.origin,
        )


@dataclass(frozen=True)
class SegmentResult:
    index: int
    frames: int
    bytes: int
    seconds: float
    rotation: int
    node: str  #: where it ran


class SegmentExecutor(Protocol):
    """Plans inputs and upscales segments, ``slots`` segments at a time, on ``device``."""

    @property
    def device(self) -> str:
        """Where the model runs (``cpu``, ``cuda:0``); known once started ("" before)."""
        ...

    @property
    def slots(self) -> int:
        """Segments it works on at once (a cluster's grow and shrink with it)."""
        ...

    @property
    def engines(self) -> dict[str, int]:
        """Ready engines per node (a process, a cluster node) now."""
        ...

    async def start(self) -> None:
        """Get ready for work (load the model, start processes or actors)."""
        ...

    async def plan(self, request: PlanRequest) -> SegmentPlan: ...

    async def run(self, task: SegmentTask, on_frame: FrameCallback | None) -> SegmentResult: ...

    async def remux(self, task: RemuxTask) -> int:
        """Copy a segment without upscaling (the original rendition); returns its bytes."""
        ...

    async def close(self) -> None: ...


def default_batch_size(device: str) -> int:
    """Frames per inference batch when none is configured: 8 on CUDA (the GPU stays busy while
    frames are decoded), 1 on a CPU (batching gains nothing there and adds latency)."""
    return 8 if device.startswith("cuda") else 1


def batch_size(configured: int, executor: SegmentExecutor) -> int:
    """The configured batch size, or the default for the executor's device (``configured`` 0)."""
    return configured or default_batch_size(executor.device)


def plan_for(request: PlanRequest, stop: threading.Event | None = None) -> SegmentPlan:
    """The plan a request asks for (what every executor runs, wherever it runs); ``stop``
    ends a raw stream's copy early (its caller has given up)."""
    source = request.source
    if source == request.timed_copy and has_audio_apart(source):
        # (an HLS or DASH input's video and its audio delivered apart, as fetched: joined here,
        # where inputs are first read, once the video's header is within the limits)
        if request.limits is not None:
            with open_input(source) as container:
                info = describe(container)
            request.limits.check(info.width, info.height, info.duration)
        join_apart(source, request.timed_copy, stop)
    elif request.timed_copy is not None and is_raw_stream(source):
        copy_with_times(source, request.timed_copy, request.limits, request.raw_rate, stop)
        source = request.timed_copy
    return plan_segments(source, request.target_seconds, limits=request.limits)


async def plan_in_thread(request: PlanRequest, threads: Executor | None = None) -> SegmentPlan:
    """:func:`plan_for` on a thread of ``threads`` (None: asyncio's own); cancelling the call
    stops the plan's work soon after, not only the wait for it."""
    stop = threading.Event()
    try:
        return await asyncio.get_running_loop().run_in_executor(threads, plan_for, request, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


async def upscale_segment(
    task: SegmentTask, worker: InferenceWorker, on_frame: FrameCallback | None, node: str
) -> SegmentResult:
    """Run the decode -> batch -> infer -> encode pipeline over one segment."""
    part = SegmentSource(
        task.segment, task.time_base, task.last, task.decode_order, task.time_shift
    )
    result = await run_pipeline(task.source, part, task.target, task.options, worker, on_frame)
    return SegmentResult(
        index=task.segment.index,
        frames=result.frames,
        bytes=task.target.stat().st_size,
        seconds=result.seconds,
        rotation=result.rotation,
        node=node,
    )


class InProcessExecutor:
    """Segments run in this process on ``worker`` (shared with other pipelines)."""

    def __init__(self, worker: InferenceWorker, slots: int = 2, owns_worker: bool = False) -> None:
        """``owns_worker``: close the worker with the executor (else it is shared)."""
        self.worker, self.slots, self.owns_worker = worker, slots, owns_worker
        self.device = str(worker.device)
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="carn-plan")
        self._plans = asyncio.Semaphore(PLANS_AT_ONCE)
        self.node = f"local:{os.getpid()}"

    @property
    def engines(self) -> dict[str, int]:
        return {self.node: 1}

    async def start(self) -> None:
        """Nothing to start: the worker is running."""

    async def plan(self, request: PlanRequest) -> SegmentPlan:
        async with self._plans:
            return await plan_in_thread(request, self._threads)

    async def run(self, task: SegmentTask, on_frame: FrameCallback | None) -> SegmentResult:
        return await upscale_segment(task, self.worker, on_frame, self.node)

    async def remux(self, task: RemuxTask) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, remux_segment, task)

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self.owns_worker:
            await asyncio.to_thread(self.worker.close)
