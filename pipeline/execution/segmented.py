"""A segmented run: a plan's missing segments through an executor, then the final output.

Segments start in index order with a bounded number in flight (so decoding segment i+1
overlaps encoding segment i), each is published by rename into the format's segment folder,
and a segment that fails for a reason worth retrying (its worker crashed, an unexpected error)
runs again up to ``max_attempts`` times. Segments already done (a resumed run) are skipped.
The command line and the job runner both drive this; they differ in where they record
progress (a work folder's manifest, or the job store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.execution.executors import (
    FrameCallback,
    PlanRequest,
    SegmentExecutor,
    SegmentResult,
    SegmentTask,
    WorkerCrashed,
)
from carn_stream.pipeline.execution.slots import Slots
from carn_stream.pipeline.media.formats import OutputFormat, format_for_path
from carn_stream.pipeline.media.hls import segment_name
from carn_stream.pipeline.media.join import finish_output
from carn_stream.pipeline.media.segments import WHOLE, Segment, SegmentPlan
from carn_stream.pipeline.run import PipelineOptions, first_error

log = logging.getLogger(__name__)


class SegmentFailed(PipelineError):
    """A segment could not be made; the message names its time range and the reason."""

    def __init__(self, segment: Segment, reason: str) -> None:
        super().__init__(f"{segment.describe()} failed: {reason}")
        self.segment = segment


@dataclass
class SegmentedRun:
    source: Path
    plan: SegmentPlan
    fmt: OutputFormat
    output: Path
    work_dir: Path
    options: PipelineOptions
    executor: SegmentExecutor
    done: dict[int, SegmentResult] = field(default_factory=dict)  #: already made (resume)
    max_attempts: int = 3
    #: this run's segments at the executor at once (a callable: follows a growing cluster)
    in_flight: int | Callable[[], int] = 2
    #: shared by the runs of one service, so that their segments take turns at the executor
    slots: asyncio.Semaphore | Slots | None = None
    on_frame: FrameCallback | None = None
    on_start: Callable[[int, int], None] | None = None  #: (segment index, attempt)
    on_done: Callable[[SegmentResult], None] | None = None
    on_retry: Callable[[int, str], None] | None = None  #: (segment index, reason)
    #: the output is whole and in place (also when the run was cancelled during its join)
    finished: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.fmt = self.fmt.for_codec(self.options.encoder.codec)

    @property
    def segment_dir(self) -> Path:
        return self.fmt.segment_dir(self.output, self.work_dir)

    def segment_path(self, index: int) -> Path:
        return self.segment_dir / segment_name(index)

    async def execute(self) -> Path:
        """Make every missing segment, then the output; returns the output's path."""
        self.fmt.prepare(self.output, self.work_dir)
        for index in sorted(self.done):  # a resumed run stopped before publishing them
            if not self.fmt.published(self.output, index):
                await asyncio.to_thread(self.fmt.publish, self.output, self.work_dir, index,
                                        self.plan.hdr)  # fmt: skip
        self.fmt.progress(self.output, self.plan, set(self.done))
        in_flight = self.in_flight
        own = Slots(in_flight if callable(in_flight) else lambda: in_flight)
        stopping = _cancel_watch()
        try:
            async with asyncio.TaskGroup() as group:
                for segment in self.plan.segments:
                    if segment.index in self.done:
                        continue
                    await own.acquire()  # start segments in order, a few at a time
                    group.create_task(self._one(segment, own, stopping),
                                      name=f"segment-{segment.index}")  # fmt: skip
        except BaseExceptionGroup as errors:
            raise first_error(errors) from None
        rotation = self.done[0].rotation if 0 in self.done else 0
        # The join runs in a thread: a cancel asks it to stop (at its next packet) and waits
        # for it, so that the output is whole (said so in ``finished``: a join past its last
        # packet ends) or not there with every segment kept, never half made.
        stop = threading.Event()
        finishing = asyncio.ensure_future(asyncio.to_thread(
            finish_output, self.fmt, self.output, self.work_dir, self.plan, self.source, rotation,
            stop.is_set,
        ))  # fmt: skip
        try:
            made = await asyncio.shield(finishing)
        except asyncio.CancelledError:
            stop.set()
            while not finishing.done():  # (every further cancel too)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({finishing})
            self.finished = finishing.exception() is None
            raise
        self.finished = True
        return made

    async def _one(self, segment: Segment, own: Slots, stopping: Callable[[], bool]) -> None:
        try:
            task = SegmentTask.of(
                self.source, self.plan, segment.index, self.segment_path(segment.index),
                self.options,
            )  # fmt: skip
            result = await self._attempts(task, stopping)
            try:
                await asyncio.to_thread(self.fmt.publish, self.output, self.work_dir,
                                        segment.index, self.plan.hdr)  # fmt: skip
            except PipelineError as exc:
                raise SegmentFailed(segment, str(exc)) from exc
            self.done[segment.index] = result
            if self.on_done is not None:
                self.on_done(result)
            self.fmt.progress(self.output, self.plan, set(self.done))
        finally:
            own.release()

    async def _attempts(self, task: SegmentTask, stopping: Callable[[], bool]) -> SegmentResult:
        """Run ``task`` until it succeeds, fails for good or runs out of attempts; never again
        once the run is ``stopping`` (an attempt that failed as the run was cancelled ends as
        cancelled, not as that failure)."""
        segment = task.segment
        attempt = 0
        while True:
            attempt += 1
            if self.on_start is not None:
                self.on_start(segment.index, attempt)
            try:
                async with self.slots if self.slots is not None else contextlib.nullcontext():
                    return await self.executor.run(task, self.on_frame)
            except PipelineError as exc:  # the input or the output is at fault: no retry
                raise SegmentFailed(segment, str(exc)) from exc
            except (WorkerCrashed, RuntimeError, OSError) as exc:
                if stopping():
                    raise asyncio.CancelledError from exc
                reason = str(exc) or type(exc).__name__
                if attempt >= self.max_attempts:
                    raise SegmentFailed(segment, f"{reason} (after {attempt} attempts)") from exc
                log.warning("%s: attempt %d failed (%s); retrying", segment.describe(), attempt,
                            reason)  # fmt: skip
                if self.on_retry is not None:
                    self.on_retry(segment.index, reason)


def _cancel_watch() -> Callable[[], bool]:
    """Whether the current task has been asked to stop since this call: cancelled by its owner,
    or by its own TaskGroup when a segment failed for good.

    A cancellation that arrives as a segment's stage fails can surface as that stage's error (the
    pipeline's TaskGroup reports its errors over a cancellation), so the segment cannot tell from
    what it catches; the run's own task still counts the request. Counted from this call on: on
    Python 3.11 a TaskGroup whose child failed may leave its parent's count raised for good."""
    task = asyncio.current_task()
    if task is None:
        return lambda: False
    before = task.cancelling()
    return lambda: task.cancelling() > before


async def run_whole(
    source: Path,
    output: Path,
    options: PipelineOptions,
    executor: SegmentExecutor,
    on_frame: FrameCallback | None = None,
    overwrite: bool = False,
) -> int:
    """Upscale all of ``source`` as one segment into ``output`` (the format its suffix names;
    no suffix: an HLS folder); returns the frames made. For benchmarks and checks of the
    pipeline itself: the service and the command line cut inputs into many segments. Nothing
    is left behind on failure."""
    fmt = format_for_path(output)
    fmt.claim(output, overwrite)
    plan = await executor.plan(PlanRequest(source, WHOLE))
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as work:
        run = SegmentedRun(source, plan, fmt, output, Path(work), options, executor,
                           max_attempts=1, on_frame=on_frame)  # fmt: skip
        try:
            await run.execute()
        except BaseException:
            await asyncio.to_thread(fmt.discard, output)
            raise
    return plan.frames
