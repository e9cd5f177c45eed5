"""The model workers the service holds: its own inference worker (live sessions; loaded in
the background so health checks answer meanwhile) and the segment executor of jobs and videos,
as the settings choose it (:func:`executor_choice`, also what the command line runs)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from carn_stream.pipeline.engine.infer import InferenceWorker
from carn_stream.pipeline.execution.choice import (
    ExecutorChoice,
    RayOptions,
    open_executor,
)
from carn_stream.pipeline.execution.executors import SegmentExecutor
from carn_stream.server.metrics import Metrics
from carn_stream.settings import Settings

log = logging.getLogger(__name__)


def executor_choice(settings: Settings) -> ExecutorChoice:
    """The executor the settings ask for: a Ray cluster when an address is set, else
    ``CARN_STREAM_EXECUTOR``'s kind."""
    ray = RayOptions(
        address=settings.ray_address or "auto",
        segments_per_actor=settings.ray_segments_per_actor,
        cpu_resource=settings.ray_cpu_resource,
    )
    kind = "ray" if settings.ray_address else settings.executor
    return ExecutorChoice(kind, settings.worker_slots, settings.worker_max_open_files, ray)


def _say_failure(what: str, reason: str) -> None:
    """One console line (the reason is in ``/readyz`` too); the traceback at debug level."""
    log.error("%s failed: %s; not ready (GET /readyz says why)", what, reason)
    log.debug("%s failed", what, exc_info=True)


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
            self.error = f"{type(exc).__name__}: {exc}"
            _say_failure("loading the model", self.error)

    def close(self) -> None:
        self._thread.join(timeout=60)
        if self.worker is not None:
            self.worker.close()


class ExecutorHolder:
    """The segment executor, as :func:`executor_choice` picks it: actors on a Ray cluster or a
    supervised worker process (both started in the background), or this process's own
    inference worker (once it has loaded)."""

    def __init__(
        self,
        settings: Settings,
        worker_factory: Callable[[], InferenceWorker],
        local: WorkerHolder,
        metrics: Metrics | None = None,
    ) -> None:
        self.choice = executor_choice(settings)
        self.local, self._factory = local, worker_factory
        self.error: str | None = None
        self._executor: SegmentExecutor | None = None
        self._starting: asyncio.Task | None = None
        self._own: SegmentExecutor | None = None  #: started here (not the local worker's)
        if self.choice.kind != "inprocess":
            observer = metrics.cluster if metrics is not None else None
            retried = metrics.segment_retries.inc if metrics is not None else None
            self._own = open_executor(
                self.choice, worker_factory, observer=observer, on_retry=retried
            )
            self._starting = asyncio.create_task(self._start(self._own))

    async def _start(self, executor: SegmentExecutor) -> None:
        try:
            await executor.start()
            self._executor = executor
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            _say_failure("starting the segment executor", self.error)

    def slots(self, default: int) -> int:
        """Segments the executor takes at once (a cluster's grow with it)."""
        executor = self.get()
        return executor.slots if executor is not None else default

    def get(self) -> SegmentExecutor | None:
        """The executor once it can take work."""
        if self._executor is None and self._own is None and self.local.worker is not None:
            self._executor = open_executor(self.choice, self._factory, self.local.worker)
        return self._executor

    async def close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self._executor is not None:
            await self._executor.close()
        elif self._own is not None:
            await self._own.close()
