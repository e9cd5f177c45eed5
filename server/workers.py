"""The model workers the service holds: its own inference worker (live sessions; loaded in
the background so health checks answer meanwhile) and the job runner's segment executor."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from carn_stream.pipeline.engine.infer import InferenceWorker
from carn_stream.pipeline.execution.executors import InProcessExecutor, SegmentExecutor
from carn_stream.pipeline.execution.worker_process import ProcessExecutor, ProcessLimits

if TYPE_CHECKING:
    from carn_stream.pipeline.execution.ray_executor import RayExecutor
from carn_stream.server.metrics import Metrics
from carn_stream.settings import Settings

log = logging.getLogger(__name__)


class WorkerHolder:
    """Loads the model in the background so the server answers health checks meanwhile."""

    def __init__(self, factory: Callable[[], InferenceWorker]) -> None:
        self.worker: InferenceWorker | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._load, args=(factory,), daemon=True)
        self._thread.start()

    def _load(self, factory: Callable[[], InferenceWorker]) -> None:
        try:
            self.worker = factory()
        except Exception as exc:
            log.exception("loading the model failed")
            self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self._thread.join(timeout=60)
        if self.worker is not None:
            self.worker.close()


class ExecutorHolder:
    """The job runner's segment executor, as the settings ask: actors on a Ray cluster, a
    supervised worker process (both started in the background) or this process's own inference
    worker."""

    def __init__(
        self,
        settings: Settings,
        worker_factory: Callable[[], InferenceWorker],
        local: WorkerHolder,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings, self.local = settings, local
        self.error: str | None = None
        self._executor: SegmentExecutor | None = None
        self._process: ProcessExecutor | RayExecutor | None = None
        self._starting: asyncio.Task | None = None
        if settings.ray_address:
            from carn_stream.pipeline.execution.ray_executor import RayExecutor, RayOptions

            options = RayOptions(
                address=settings.ray_address,
                segments_per_actor=settings.ray_segments_per_actor,
                cpu_resource=settings.ray_cpu_resource,
            )
            observer = metrics.cluster if metrics is not None else None
            self._process = RayExecutor(worker_factory, options, observer)
            self._starting = asyncio.create_task(self._start(self._process))
        elif settings.executor == "process":
            limits = ProcessLimits(max_open_files=settings.worker_max_open_files)
            self._process = ProcessExecutor(worker_factory, settings.worker_slots, limits)
            self._starting = asyncio.create_task(self._start(self._process))

    async def _start(self, executor: ProcessExecutor | RayExecutor) -> None:
        try:
            await executor.start()
            self._executor = executor
        except Exception as exc:
            log.exception("starting the segment executor failed")
            self.error = f"{type(exc).__name__}: {exc}"

    def slots(self, default: int) -> int:
        """Segments the executor takes at once (a cluster's grow with it)."""
        executor = self.get()
        return executor.slots if executor is not None else default

    def get(self) -> SegmentExecutor | None:
        """The executor once it can take work."""
        if self._executor is None and self._process is None and self.local.worker is not None:
            self._executor = InProcessExecutor(self.local.worker, self.settings.worker_slots)
        return self._executor

    async def close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self._executor is not None:
            await self._executor.close()
        elif self._process is not None:
            await self._process.close()
