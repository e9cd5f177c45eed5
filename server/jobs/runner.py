"""Run queued jobs: fetch the input, plan it as segments, make the segments, finish the output.

Jobs are claimed first in, first out, at most ``max_concurrent_jobs`` at a time. Their segments go
to one :class:`~carn_stream.pipeline.execution.executors.SegmentExecutor` (by default a supervised
worker process, so a hostile input can crash only that process) and take turns at its slots. Every
published segment is recorded in the store, so a job interrupted by a crash or a restart continues
from the segments that are not done; a graceful stop does not count as an attempt. A cancelled or
failed job keeps no output: nothing half-made is served."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.execution.executors import PlanRequest, SegmentExecutor, SegmentResult
from carn_stream.pipeline.execution.segmented import SegmentedRun
from carn_stream.pipeline.execution.slots import Slots
from carn_stream.pipeline.media.elementary import partial_name
from carn_stream.pipeline.media.encode import EncoderOptions
from carn_stream.pipeline.media.formats import FORMATS
from carn_stream.pipeline.media.hls import segment_name
from carn_stream.pipeline.media.listing import remove_apart
from carn_stream.pipeline.media.segments import SegmentPlan
from carn_stream.pipeline.run import FrameReport, PipelineOptions
from carn_stream.pipeline.waiting import wait_at_most
from carn_stream.progress_rate import RateMeter
from carn_stream.server.disk import disk_space
from carn_stream.server.inputs.exposure import redact_paths
from carn_stream.server.inputs.fetch import FetchError, fetch
from carn_stream.server.jobs.compare import save_comparison
from carn_stream.server.jobs.media import JobMedia
from carn_stream.server.jobs.store import Job, JobStore
from carn_stream.server.limits import Intake
from carn_stream.server.metrics import Metrics
from carn_stream.settings import Settings

log = logging.getLogger(__name__)



class JobRunner:
    #: Seconds a cancel waits for a running job to end before it answers (still stopping).
    cancel_wait: float = 5.0

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        metrics: Metrics,
        executor: Callable[[], SegmentExecutor | None],
        offload: Callable[..., Awaitable] | None = None,
        slots: Slots | None = None,
        intake: Intake | None = None,
        checks: Callable[..., Awaitable] | None = None,
    ) -> None:
        """``executor()`` gives the segment executor once it is ready (None until then);
        ``offload`` runs downloads (default: asyncio's thread pool); ``slots``, the executor's
        slots when shared with other users (else the runner's own); ``intake``, the service's
        rules for inputs (else made from ``settings``); ``checks`` runs a submission's address
        checks (default: ``offload``)."""
        self.store, self.settings, self.metrics = store, settings, metrics
        self.data_dir = settings.data_dir
        self.intake = intake or Intake.from_settings(settings)
        self._executor = executor
        self._slots: Slots | None = slots
        self.offload = offload or asyncio.to_thread
        self.checks = checks or self.offload
        self._running: dict[str, asyncio.Task] = {}
        self._cancel_flags: dict[str, threading.Event] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._scheduler: asyncio.Task | None = None
        self._failing: dict[str, str] = {}  #: running jobs being stopped -> why they fail
        self._cancelled: set[str] = set()  #: running jobs being stopped at a user's request
        self.failure: str | None = None  #: why the scheduler ended, when it did

    def media(self, job: Job) -> JobMedia:
        """Where the job's files are, and their URLs."""
        return JobMedia.of(job, self.data_dir / "jobs")

    def wake(self) -> None:
        self._wake.set()

    def discard_files(self, job_ids: list[str]) -> None:
        """Remove what jobs that ended without success left (output, work files, our copy of
        the input): jobs failed at start-up after too many interrupted runs, queued jobs
        cancelled."""
        for job_id in job_ids:
            job = self.store.get(job_id)
            if job is None:
                continue
            media = self.media(job)
            _discard(media)
            media.input.unlink(missing_ok=True)
            remove_apart(media.input)
            partial_name(media.input).unlink(missing_ok=True)  # a copy or join cut short

    def refresh_gauges(self) -> None:
        counts = self.store.count_by_state()
        for state, n in counts.items():
            self.metrics.jobs.labels(state).set(n)
        self.metrics.queue_depth.set(counts["queued"])

    # ------------------------------------------------------------------ scheduling

    def start(self) -> asyncio.Task:
        """Start the scheduler (:meth:`run_forever`); its end, whatever the cause, is logged
        and makes :attr:`alive` False (readiness says so)."""
        self._scheduler = asyncio.create_task(self.run_forever(), name="job-scheduler")
        self._scheduler.add_done_callback(self._scheduler_ended)
        return self._scheduler

    @property
    def alive(self) -> bool:
        """The scheduler runs (False before :meth:`start` and once it has ended)."""
        return self._scheduler is not None and not self._scheduler.done()

    def _scheduler_ended(self, task: asyncio.Task) -> None:
        if self._stopping:
            return
        if task.cancelled():
            self.failure = "the job scheduler was cancelled"
        else:
            exc = task.exception()
            self.failure = f"the job scheduler stopped: {type(exc).__name__}: {exc}" if exc \
                else "the job scheduler stopped"  # fmt: skip
        log.error("%s; no job will start until the service restarts", self.failure,
                  exc_info=None if task.cancelled() else task.exception())  # fmt: skip

    async def run_forever(self) -> None:
        """Claim queued jobs while there is room, until :meth:`shutdown`. A round that fails
        (the store cannot be read or written) is logged, and the next one tries again."""
        last_cleanup = 0.0
        failing = False
        while not self._stopping:
            try:
                if time.monotonic() - last_cleanup > 600:
                    last_cleanup = time.monotonic()
                    await asyncio.to_thread(self.remove_expired)
                self._schedule()
                self.refresh_gauges()
                failing = False
            except Exception:
                if not failing:  # one line per stretch of failures, not one per round
                    log.exception("the job scheduler failed a round; it keeps trying")
                failing = True
            self._wake.clear()
            await wait_at_most(0.5, self._wake.wait())

    def _schedule(self) -> None:
        if self._below_floor():
            return  # queued jobs wait for space
        executor = self._executor()
        if executor is None:
            return
        if self._slots is None:
            self._slots = Slots(lambda ex=executor: ex.slots)  # a cluster grows, shrinks
        while len(self._running) < self.settings.max_concurrent_jobs:
            job = self.store.claim_next()
            if job is None:
                break
            flag = self._cancel_flags[job.id] = threading.Event()
            task = asyncio.create_task(self._run(job, executor, flag), name=f"job-{job.id}")
            self._running[job.id] = task

    def _below_floor(self) -> bool:
        """Whether the data folder's disk is below its floor; running jobs are then stopped
        and failed with the reason (before the disk fills up and the store cannot write)."""
        space = disk_space(self.data_dir, self.settings.min_free_disk_bytes)
        if not space.shortfall():
            return False
        reason = f"the server ran low on disk space ({space.describe()}); the job was stopped"
        for job_id, task in self._running.items():
            if job_id not in self._failing and not self._cancel_flags[job_id].is_set():
                log.warning("job %s: %s", job_id, reason)
                self._failing[job_id] = reason
                self._cancel_flags[job_id].set()
                task.cancel()
        return True

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job, waiting :attr:`cancel_wait` seconds at most for a
        running one to end (see :meth:`cancelling`); False when it had already finished."""
        task = self._running.get(job_id)
        if task is None:
            ok = self.store.finish(job_id, "cancelled", "cancelled by request")
            if ok:  # (queued after an earlier run: what it made and fetched goes now)
                await asyncio.to_thread(self.discard_files, [job_id])
            self.wake()
            return ok
        self._cancelled.add(job_id)  # even when a shutdown is stopping it already
        flag = self._cancel_flags[job_id]
        if not flag.is_set():  # a job already being stopped is not interrupted again
            flag.set()
            task.cancel()
        await asyncio.wait({task}, timeout=self.cancel_wait)
        return True

    def cancelling(self, job_id: str) -> bool:
        """Whether the job was cancelled and is still stopping (its files going): it ends
        ``cancelled``."""
        return job_id in self._cancelled and job_id in self._running

    async def shutdown(self, timeout: float = 10) -> None:
        """Stop the scheduler; running jobs go back to the queue, their finished segments kept."""
        self._stopping = True
        self.wake()
        tasks = list(self._running.values())
        for flag in self._cancel_flags.values():
            flag.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # ------------------------------------------------------------------ one job

    async def _run(self, job: Job, executor: SegmentExecutor, cancelled: threading.Event) -> None:
        media = self.media(job)
        finished = False
        try:
            await asyncio.to_thread(media.folder.mkdir, parents=True, exist_ok=True)
            source = media.input
            if not source.is_file():
                policy = self.intake.policy
                source = await self.offload(fetch, job.url, media.input, policy, cancelled)
            plan = job.plan
            if plan is not None and not plan.current:  # planned before an upgrade
                await asyncio.to_thread(_discard, media)  # its segments follow the old plan
                plan = None
            if plan is None:
                limits = self.intake.limits(job.params.scale)
                # a raw stream is copied with timestamps to our copy of the input (a local
                # input file is never written)
                request = PlanRequest(source, self.intake.segment_seconds, limits,
                                      timed_copy=media.input,
                                      raw_rate=job.params.raw_rate)  # fmt: skip
                plan = await executor.plan(request)
                if media.input.is_file():
                    source = media.input
                self.store.save_plan(job.id, plan)
            else:
                self.store.reset_unfinished_segments(job.id)
            await self._make(job, plan, source, media, executor)
            # a few frames kept for comparing CARN-M with bicubic (the input goes next)
            await self.offload(save_comparison, source, media.output, media.folder, plan.frames,
                               self._deinterlace(job))  # fmt: skip
            self.store.finish(job.id, "succeeded")
            finished = True
            log.info("job %s succeeded", job.id)
        except asyncio.CancelledError:
            reason = self._failing.pop(job.id, None)
            if reason is None and self._stopping and job.id not in self._cancelled:
                self.store.requeue(job.id)  # finished segments stay for the next start
            else:
                finished = True
                ending = ("failed", reason) if reason else ("cancelled", "cancelled by request")
                await self._end(job.id, media, *ending)
        except (FetchError, PipelineError, ValueError) as exc:
            finished = True
            log.info("job %s failed: %s", job.id, exc)
            await self._end(job.id, media, "failed", redact_paths(str(exc), media.folder, job.url))
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job.id)
            finished = True
            reason = f"internal error: {type(exc).__name__}: {exc}"
            await self._end(job.id, media, "failed", redact_paths(reason, media.folder, job.url))
        finally:
            if finished:  # our copy of the input only, never a local input file
                media.input.unlink(missing_ok=True)
                partial_name(media.input).unlink(missing_ok=True)  # a copy or join cut short
                remove_apart(media.input)  # audio fetched apart, not joined
                shutil.rmtree(media.work, ignore_errors=True)
            self._running.pop(job.id, None)
            self._cancel_flags.pop(job.id, None)
            self._failing.pop(job.id, None)
            self._cancelled.discard(job.id)
            self.refresh_gauges()
            self.wake()

    async def _end(self, job_id: str, media: JobMedia, state: str, reason: str) -> None:
        """Remove what the job leaves (output, work files), then record how it ended. The record
        is written whatever happens to the removal: a second cancellation arriving while the
        files go (a cancel racing a shutdown or a full disk) cannot leave the job "running"
        with nothing running it, to be started again at the next start-up."""
        try:
            await asyncio.to_thread(_discard, media)
        finally:
            self.store.finish(job_id, state, reason)

    def _deinterlace(self, job: Job) -> bool:
        """The job's choice (fixed when it was created), else the service's setting."""
        chosen = job.params.deinterlace
        return self.intake.deinterlace if chosen is None else chosen

    def _options(self, job: Job, executor: SegmentExecutor) -> PipelineOptions:
        params = job.params
        batch = self.intake.batch(executor)
        return PipelineOptions(
            scale=params.scale,
            encoder=EncoderOptions(params.codec, params.crf, params.preset),
            batch_size=batch,
            weights=params.weights,
            max_output_pixels=self.intake.max_output_pixels,
            upright=FORMATS[params.format].segments_served,
            deinterlace=self._deinterlace(job),
        )

    async def _make(
        self, job: Job, plan: SegmentPlan, source: Path, media: JobMedia,
        executor: SegmentExecutor,
    ) -> None:  # fmt: skip
        """Make the segments not done yet, then the output; progress goes to the store."""
        done = self._segments_done(job, media)
        progress = _Progress(self, job.id, plan.frames, sum(r.frames for r in done.values()))
        run = SegmentedRun(
            source=source,
            plan=plan,
            fmt=media.fmt,
            output=media.output,
            work_dir=media.work,
            options=self._options(job, executor),
            executor=executor,
            done=done,
            max_attempts=self.settings.segment_attempts,
            in_flight=lambda: executor.slots,
            slots=self._slots,
            on_frame=progress.frame,
            on_start=progress.started,
            on_done=progress.done,
            on_retry=progress.retried,
        )
        try:
            await run.execute()
        except PipelineError as exc:
            failed = getattr(exc, "segment", None)
            if failed is not None:
                reason = redact_paths(str(exc), media.folder, job.url)
                self.store.segment_failed(job.id, failed.index, reason)
            raise
        progress.finished()

    def _segments_done(self, job: Job, media: JobMedia) -> dict[int, SegmentResult]:
        """The segments recorded as done whose files are there, whole (a resumed job)."""
        done: dict[int, SegmentResult] = {}
        folder = media.fmt.segment_dir(media.output, media.work)
        for record in self.store.segments(job.id):
            result = record.result()
            path = folder / segment_name(record.index)
            if result is not None and path.is_file() and path.stat().st_size == result.bytes:
                done[record.index] = result
        return done

    def remove_expired(self) -> None:
        hours = self.settings.retention_hours
        if hours <= 0:
            return
        for job_id in self.store.expired(time.time() - hours * 3600):
            shutil.rmtree(self.data_dir / "jobs" / job_id, ignore_errors=True)
            self.store.delete(job_id)


class _Progress:
    """A running job's progress: frames done (segments done, and frames of the segments in
    flight), the recent rate, each segment's state; written to the store at most twice a
    second, and at every segment's end."""

    def __init__(self, runner: JobRunner, job_id: str, total: int, frames_done: int) -> None:
        self.store, self.metrics, self.job_id = runner.store, runner.metrics, job_id
        self.total, self.frames_done = total, frames_done
        self.in_flight: dict[int, int] = {}  #: segment index -> frames made so far
        self.rate = RateMeter()  # recent fps: the average since the start misled the ETA
        self._written = 0.0

    def frame(self, report: FrameReport) -> None:
        self.metrics.observe_frame(report, "job")
        self.in_flight[report.segment] = self.in_flight.get(report.segment, 0) + 1
        self.rate.add()
        self._write()

    def started(self, index: int, attempt: int) -> None:
        self.in_flight[index] = 0
        self.store.segment_started(self.job_id, index)

    def done(self, result: SegmentResult) -> None:
        self.in_flight.pop(result.index, None)
        self.frames_done += result.frames
        self.store.segment_done(self.job_id, result)
        self._write(force=True)

    def retried(self, index: int, reason: str) -> None:
        self.in_flight.pop(index, None)
        self.metrics.segment_retries.inc()

    def finished(self) -> None:
        fps = self.rate.average() or self.rate.rate() or 0.0
        self.store.progress(self.job_id, self.total, self.total, fps)

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._written >= 0.5:
            self._written = now
            frames = self.frames_done + sum(self.in_flight.values())
            self.store.progress(self.job_id, frames, self.total, self.rate.rate() or 0.0)


def _discard(media: JobMedia) -> None:
    """A job that did not succeed keeps no output and no work files."""
    media.fmt.discard(media.output)
    shutil.rmtree(media.work, ignore_errors=True)
