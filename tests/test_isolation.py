"""Isolation: segments in a supervised worker process; a crash fails only what caused it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.execution.executors import PlanRequest, SegmentTask, WorkerCrashed
from carn_stream.pipeline.execution.segmented import SegmentedRun, SegmentFailed
from carn_stream.pipeline.execution.worker_process import ProcessExecutor
from carn_stream.pipeline.media.formats import FORMATS
from carn_stream.pipeline.run import PipelineOptions
from tests.crashing import crashing_planner, crashing_worker
from tests.media import facts, write_clip

X264 = {"crf": "20", "preset": "ultrafast", "g": "25"}  # two segments of 1 s each


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("isolation")
    rng = np.random.default_rng(0)
    dark = [rng.integers(0, 80, (48, 64, 3), dtype=np.uint8) for _ in range(50)]
    white = [np.full((48, 64, 3), 250, np.uint8) for _ in range(50)]
    return {
        "innocent": write_clip(d / "innocent.mp4", dark, options=X264),
        "hostile": write_clip(d / "hostile.mp4", white, options=X264),
    }


def run_both(clips, tmp_path, executor):
    async def one(name: str):
        plan = await executor.plan(PlanRequest(clips[name], 1.0))
        task = SegmentTask.of(clips[name], plan, 0, tmp_path / f"{name}.ts",
                              PipelineOptions(scale=2))  # fmt: skip
        return await executor.run(task, None)

    async def go():
        await executor.start()
        try:
            return await asyncio.gather(one("innocent"), one("hostile"), return_exceptions=True)
        finally:
            await executor.close()

    return asyncio.run(go())


def test_an_input_that_crashes_its_planning_is_an_input_error(clips):
    """Jobs failed with "internal error: WorkerCrashed", and POST /videos answered 500, where
    an input's reading (alone) crashed the worker process."""
    executor = ProcessExecutor(crashing_planner, slots=1)

    async def go():
        await executor.start()
        try:
            with pytest.raises(InputError) as caught:
                await executor.plan(PlanRequest(clips["hostile"], 1.0))
            return caught.value, await executor.plan(PlanRequest(clips["innocent"], 1.0))
        finally:
            await executor.close()

    error, plan = asyncio.run(go())
    assert "reading it alone crashed the worker process" in str(error)
    assert "SIGSEGV" in str(error)
    assert plan.frames == 50  # the next input is read by a fresh worker process


def test_a_crash_fails_only_the_segment_that_caused_it(clips, tmp_path):
    reruns: list[int] = []
    executor = ProcessExecutor(crashing_worker, slots=2, on_rerun=lambda: reruns.append(1))
    innocent, hostile = run_both(clips, tmp_path, executor)
    assert isinstance(hostile, WorkerCrashed) and "SIGSEGV" in str(hostile)
    assert not isinstance(innocent, BaseException), innocent
    assert innocent.frames == 25 and innocent.node.startswith("process:")
    assert (tmp_path / "innocent.ts").is_file() and not (tmp_path / "hostile.ts").exists()
    assert executor.restarts >= 1  # a fresh worker process took over after each crash
    # Both segments in flight were run again alone, and the metric hears of each
    # (carn_stream_segment_retries_total stayed 0 after such re-runs).
    assert len(reruns) == 2


def test_a_crashing_segment_is_retried_a_bounded_number_of_times(clips, tmp_path):
    attempts: list[int] = []

    async def go():
        executor = ProcessExecutor(crashing_worker, slots=1)
        plan = await executor.plan(PlanRequest(clips["hostile"], 1.0))
        run = SegmentedRun(source=clips["hostile"], plan=plan, fmt=FORMATS["mp4"],
                           output=tmp_path / "out.mp4", work_dir=tmp_path / "work",
                           options=PipelineOptions(scale=2), executor=executor,
                           max_attempts=2, in_flight=1,
                           on_start=lambda index, attempt: attempts.append(attempt))  # fmt: skip
        try:
            await run.execute()
        finally:
            await executor.close()

    with pytest.raises(
        SegmentFailed, match=r"segment 0 .* crashed \(SIGSEGV\) \(after 2 attempts\)"
    ):
        asyncio.run(go())
    assert attempts == [1, 2] and not (tmp_path / "out.mp4").exists()


def test_the_worker_process_makes_the_same_segments_as_this_process(clips, tmp_path):
    executor = ProcessExecutor(crashing_worker, slots=2)

    async def go():
        plan = await executor.plan(PlanRequest(clips["innocent"], 1.0))
        run = SegmentedRun(source=clips["innocent"], plan=plan, fmt=FORMATS["mp4"],
                           output=tmp_path / "out.mp4", work_dir=tmp_path / "work",
                           options=PipelineOptions(scale=2), executor=executor)  # fmt: skip
        try:
            await run.execute()
        finally:
            await executor.close()
        return plan

    plan = asyncio.run(go())
    assert len(plan.segments) == 2
    got = facts(tmp_path / "out.mp4")
    assert got.pts == facts(clips["innocent"]).pts and (got.width, got.height) == (128, 96)


def test_a_run_stopped_during_its_join_ends_it_at_once_and_keeps_every_segment(
    clips, tmp_path, monkeypatch
):
    """The join runs in a thread. A stop during it ended the run at once while the thread
    went on (the output appeared afterwards, its segments gone); then a stop waited for the
    whole join (a DELETE of a long job answered after 5 s, the job still running). Now the
    join ends at its next packet: no output, nothing half-written, every segment kept."""
    import threading
    import time

    from carn_stream.pipeline.execution import segmented
    from carn_stream.pipeline.media.hls import segment_name

    joining = threading.Event()
    looked = []
    real = segmented.finish_output

    def slow_join(*args):
        *rest, stop = args

        def slowed() -> bool:  # each packet takes 20 ms: the join lasts seconds
            joining.set()
            looked.append(time.monotonic())
            time.sleep(0.02)
            return stop()

        return real(*rest, slowed)

    monkeypatch.setattr(segmented, "finish_output", slow_join)
    executor = ProcessExecutor(crashing_worker, slots=2)
    output = tmp_path / "out.mp4"

    async def go():
        plan = await executor.plan(PlanRequest(clips["innocent"], 1.0))
        run = SegmentedRun(source=clips["innocent"], plan=plan, fmt=FORMATS["mp4"],
                           output=output, work_dir=tmp_path / "work",
                           options=PipelineOptions(scale=2), executor=executor)  # fmt: skip
        task = asyncio.create_task(run.execute())
        try:
            while not joining.is_set():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # a few packets in
            task.cancel()
            stopped = time.monotonic()
            await asyncio.sleep(0.01)
            task.cancel()  # a second stop (a service's shutdown cancels every job it runs)
            with pytest.raises(asyncio.CancelledError):
                await task
            return run, plan, time.monotonic() - stopped
        finally:
            await executor.close()

    run, plan, took = asyncio.run(go())
    assert len(looked) > 3 and took < 0.5, (len(looked), took)
    assert not run.finished and not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no part
    folder = FORMATS["mp4"].segment_dir(output, tmp_path / "work")
    assert all((folder / segment_name(s.index)).is_file() for s in plan.segments)
    # The join alone, as a rerun makes it, gives the whole output.
    real(FORMATS["mp4"], output, tmp_path / "work", plan, clips["innocent"], 0)
    assert facts(output).pts == facts(clips["innocent"]).pts


@pytest.mark.parametrize("stop_timeout", [3.0, 0.3], ids=["stops", "killed"])
def test_a_cancelled_segment_returns_once_its_worker_has_let_go_of_it(
    clips, tmp_path, stop_timeout
):
    """A cancel returned at once while the worker went on with the segment (a write in its
    thread cannot be cut short), and its clean-up later removed the part file of the same
    segment made again (a player asking again, a retry): that attempt failed. Now the cancel
    returns once the worker has stopped the call (its part file gone), or, past the stop
    timeout, with the worker process killed (nothing writes the part file any more)."""
    import time

    from carn_stream.pipeline.execution.worker_process import ProcessLimits
    from tests.slow_worker import slow_writing_worker

    executor = ProcessExecutor(slow_writing_worker, limits=ProcessLimits(stop_timeout=stop_timeout))
    target = tmp_path / "segment_00000.ts"
    part = target.with_name(f".{target.name}.part")

    async def go():
        plan = await executor.plan(PlanRequest(clips["innocent"], 1.0))
        task = SegmentTask.of(clips["innocent"], plan, 0, target, PipelineOptions(scale=2))
        writing = asyncio.Event()

        def on_frame(report) -> None:
            if part.exists():  # (the encoder's first packets are out)
                writing.set()

        running = asyncio.ensure_future(executor.run(task, on_frame))
        try:
            await asyncio.wait_for(writing.wait(), 60)
            await asyncio.sleep(0.1)  # (within its next one-second write)
            cancelled = time.monotonic()
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            took = time.monotonic() - cancelled
            left = part.exists()
            again = await executor.run(task, None)  # the same segment, made again
        finally:
            await executor.close()
        return took, left, again, plan.segments[0].frames

    took, left, again, frames = asyncio.run(go())
    assert again.frames == frames and len(facts(target).pts) == frames
    if stop_timeout < 1:  # (its write outlasted the stop timeout: the process was killed)
        assert 0.3 <= took < 1.5 and executor.restarts == 1, (took, executor.restarts)
    else:
        assert not left  # its clean-up was done when the cancel returned
        assert 0.3 <= took < 2.5 and executor.restarts == 0, (took, executor.restarts)


def test_a_segment_that_crashed_the_worker_alone_runs_alone_when_tried_again(clips, tmp_path):
    """Its later attempts shared the worker again and brought down the segments beside them
    every time (6 crashes for 3 attempts, each an innocent segment made again)."""
    reruns: list[int] = []
    executor = ProcessExecutor(crashing_worker, slots=2, on_rerun=lambda: reruns.append(1))

    async def go():
        await executor.start()
        plans = {name: await executor.plan(PlanRequest(clips[name], 1.0)) for name in clips}

        def task(name, attempt):
            return SegmentTask.of(clips[name], plans[name], 0, tmp_path / f"{name}{attempt}.ts",
                                  PipelineOptions(scale=2))  # fmt: skip

        outcomes = []
        try:
            for attempt in range(3):  # (the hostile segment's target is the same each time)
                hostile = task("hostile", 0)
                outcomes.append(await asyncio.gather(
                    executor.run(task("innocent", attempt), None), executor.run(hostile, None),
                    return_exceptions=True))  # fmt: skip
        finally:
            await executor.close()
        return outcomes

    outcomes = asyncio.run(go())
    for innocent, hostile in outcomes:
        assert not isinstance(innocent, BaseException) and isinstance(hostile, WorkerCrashed)
    assert len(reruns) == 2  # both of the first attempt's calls, alone; then it was known


def test_a_segment_that_stalls_takes_its_worker_down_and_only_it_is_blamed(clips, tmp_path):
    """A segment whose decoder never returned held its slot for good, and its worker process
    went on burning a core for it, cancelled or not."""
    import shutil
    import time

    from carn_stream.pipeline.execution.worker_process import ProcessLimits
    from tests.slow_worker import stuck_on_hang_worker

    hang = shutil.copy(clips["innocent"], tmp_path / "hang.mp4")
    executor = ProcessExecutor(stuck_on_hang_worker, slots=2,
                               limits=ProcessLimits(stall_timeout=1.0))  # fmt: skip

    async def go():
        await executor.start()
        try:
            plans = {p: await executor.plan(PlanRequest(p, 1.0)) for p in (hang, clips["innocent"])}

            def task(source, name):
                return SegmentTask.of(source, plans[source], 0, tmp_path / name,
                                      PipelineOptions(scale=2))  # fmt: skip

            started = time.monotonic()
            stuck, innocent = await asyncio.gather(
                executor.run(task(hang, "hang.ts"), None),
                executor.run(task(clips["innocent"], "innocent.ts"), None),
                return_exceptions=True,
            )
            return stuck, innocent, time.monotonic() - started
        finally:
            await executor.close()

    stuck, innocent, took = asyncio.run(go())
    assert isinstance(stuck, WorkerCrashed) and "made nothing for 1 s" in str(stuck), stuck
    assert not isinstance(innocent, BaseException)  # made again, not blamed
    assert took < 30, took  # (it waited for good)

