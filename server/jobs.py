"""Run queued jobs: fetch the input, check the limits, run the pipeline, record the outcome.

Jobs are claimed first in, first out, at most ``max_concurrent_jobs`` at a time; they share the
one inference worker. A cancelled job stops within a second (the pipeline is cancelled, the
download checks a flag between chunks) and its files are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from carn_stream.pipeline.decode import probe
from carn_stream.pipeline.encode import EncoderOptions
from carn_stream.pipeline.errors import PipelineError
from carn_stream.pipeline.infer import InferenceWorker
from carn_stream.pipeline.progress_rate import RateMeter
from carn_stream.pipeline.run import FrameReport, PipelineOptions, RunResult, run_pipeline
from carn_stream.server.compare import save_comparison
from carn_stream.server.fetch import FetchError, FetchPolicy, fetch
from carn_stream.server.metrics import Metrics
from carn_stream.server.store import Job, JobStore

log = logging.getLogger(__name__)


class LimitError(Exception):
    """The input is over one of the service's limits."""


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        data_dir: Path,
        policy: FetchPolicy,
        metrics: Metrics,
        *,
        max_concurrent: int,
        max_duration: float,
        max_output_pixels: int,
        batch_size: int,
        segment_seconds: float,
        retention_seconds: float,
    ) -> None:
        self.store, self.data_dir, self.policy, self.metrics = store, data_dir, policy, metrics
        self.max_concurrent = max_concurrent
        self.max_duration, self.max_output_pixels = max_duration, max_output_pixels
        self.batch_size, self.segment_seconds = batch_size, segment_seconds
        self.retention_seconds = retention_seconds
        self.worker: InferenceWorker | None = None
        self._running: dict[str, asyncio.Task] = {}
        self._cancel_flags: dict[str, threading.Event] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    def wake(self) -> None:
        self._wake.set()

    def refresh_gauges(self) -> None:
        counts = self.store.count_by_state()
        for state, n in counts.items():
            self.metrics.jobs.labels(state).set(n)
        self.metrics.queue_depth.set(counts["queued"])

    # ------------------------------------------------------------------ scheduling

    async def run_forever(self, worker_ready: Callable[[], InferenceWorker | None]) -> None:
        last_cleanup = 0.0
        while not self._stopping:
            self.worker = worker_ready()
            if time.monotonic() - last_cleanup > 600:
                last_cleanup = time.monotonic()
                await asyncio.to_thread(self.remove_expired)
            if self.worker is not None:
                while len(self._running) < self.max_concurrent:
                    job = self.store.claim_next()
                    if job is None:
                        break
                    flag = self._cancel_flags[job.id] = threading.Event()
                    task = asyncio.create_task(self._run(job, flag), name=f"job-{job.id}")
                    self._running[job.id] = task
            self.refresh_gauges()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it had already finished."""
        task = self._running.get(job_id)
        if task is None:
            ok = self.store.finish(job_id, "cancelled", "cancelled by request")
            self.wake()
            return ok
        self._cancel_flags[job_id].set()
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        return True

    async def shutdown(self) -> None:
        """Stop the scheduler; running jobs go back to the queue for the next start."""
        self._stopping = True
        self.wake()
        tasks = list(self._running.values())
        for flag in self._cancel_flags.values():
            flag.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # ------------------------------------------------------------------ one job

    async def _run(self, job: Job, cancelled: threading.Event) -> None:
        folder = self.job_dir(job.id)
        download = source = folder / "input"
        try:
            await asyncio.to_thread(_fresh_dir, folder)
            source = await asyncio.to_thread(fetch, job.url, source, self.policy, cancelled)
            info = await asyncio.to_thread(probe, source)
            self._check_limits(info, job.params["scale"])
            self.store.progress(job.id, 0, info.frames, 0.0)
            result = await self._upscale(job, source, folder, info.frames)
            await asyncio.to_thread(save_comparison, source, result.output, folder, result.frames)
            self.store.finish(job.id, "succeeded")
            log.info("job %s succeeded", job.id)
        except asyncio.CancelledError:
            await asyncio.to_thread(_clear_outputs, folder)
            if self._stopping:
                self.store.requeue(job.id)
            else:
                self.store.finish(job.id, "cancelled", "cancelled by request")
        except (FetchError, PipelineError, LimitError, ValueError) as exc:
            await asyncio.to_thread(_clear_outputs, folder)
            self.store.finish(job.id, "failed", str(exc))
            log.info("job %s failed: %s", job.id, exc)
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job.id)
            await asyncio.to_thread(_clear_outputs, folder)
            self.store.finish(job.id, "failed", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            download.unlink(missing_ok=True)  # our copy only, never a local input file
            self._running.pop(job.id, None)
            self._cancel_flags.pop(job.id, None)
            self.refresh_gauges()
            self.wake()

    def _check_limits(self, info, scale: int) -> None:
        if info.duration is not None and info.duration > self.max_duration:
            raise LimitError(
                f"input is {info.duration:.0f} s long, over the limit of {self.max_duration:g} s"
            )
        pixels = info.width * info.height * scale * scale
        if pixels > self.max_output_pixels:
            raise LimitError(
                f"output would be {info.width * scale}x{info.height * scale}, over the limit of "
                f"{self.max_output_pixels} pixels per frame"
            )

    async def _upscale(self, job: Job, source: Path, folder: Path, total: int) -> RunResult:
        assert self.worker is not None
        params = job.params
        fmt = params["output"]
        target = folder / ("hls" if fmt == "hls" else "output.mp4")
        batch = self.batch_size or (8 if self.worker.device.type == "cuda" else 1)
        options = PipelineOptions(
            scale=params["scale"],
            fmt=fmt,
            encoder=EncoderOptions(
                params["codec"], params["crf"], params.get("preset"), self.segment_seconds
            ),
            batch_size=batch,
            weights=params.get("weights"),
        )
        meter = RateMeter()  # recent fps: the average since the start misled the ETA
        last_write = 0.0

        def on_frame(report: FrameReport) -> None:
            nonlocal last_write
            self.metrics.observe_frame(report, "job")
            meter.add()
            now = time.monotonic()
            if now - last_write >= 0.5:
                last_write = now
                fps = meter.rate() or 0.0
                self.store.progress(job.id, report.done, max(total, report.done), fps)

        result = await run_pipeline(source, target, options, self.worker, on_frame)
        self.store.progress(job.id, result.frames, result.frames, result.fps)
        return result

    def remove_expired(self) -> None:
        if self.retention_seconds <= 0:
            return
        for job_id in self.store.expired(time.time() - self.retention_seconds):
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            self.store.delete(job_id)


def _fresh_dir(folder: Path) -> None:
    """An empty job folder (a re-run after a crash starts from scratch)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _clear_outputs(folder: Path) -> None:
    shutil.rmtree(folder / "hls", ignore_errors=True)
    for leftover in folder.glob("*output.mp4*"):
        leftover.unlink(missing_ok=True)
