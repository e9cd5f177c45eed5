"""The FastAPI application: routers, lifespan (store, model worker, job runner), metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from carn_stream.pipeline.executors import InProcessExecutor, SegmentExecutor
from carn_stream.pipeline.infer import InferenceWorker
from carn_stream.pipeline.worker_process import ProcessExecutor, ProcessLimits
from carn_stream.server import api_health, api_jobs, api_live, pages
from carn_stream.server.jobs import JobRunner
from carn_stream.server.live import BitratePolicy, LatencyPolicy, LiveSessions, restrict_ice_hosts
from carn_stream.server.metrics import Metrics
from carn_stream.server.store import JobStore
from carn_stream.settings import Settings

if TYPE_CHECKING:  # Ray is an optional extra, imported only when a cluster is configured
    from carn_stream.pipeline.ray_executor import RayExecutor

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


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
            from carn_stream.pipeline.ray_executor import RayExecutor, RayOptions

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


def create_app(settings: Settings, worker_factory: Callable[[], InferenceWorker]) -> FastAPI:
    """The service. ``worker_factory`` loads the model and starts an inference worker; with the
    ``process`` executor it runs in the worker process too, so it must be picklable."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        store = JobStore(data_dir / "jobs.sqlite3")
        requeued, failed = store.recover(settings.max_attempts)
        if requeued or failed:
            log.warning("after restart: %d jobs re-queued, %d failed", len(requeued), len(failed))
        holder = WorkerHolder(worker_factory)
        executors = ExecutorHolder(settings, worker_factory, holder, metrics)
        runner = JobRunner(store, settings, metrics, executors.get)
        restrict_ice_hosts(settings.live_ice_hosts)
        live = LiveSessions(
            metrics,
            settings.live_max_sessions,
            BitratePolicy(bits_per_pixel=settings.live_bits_per_pixel,
                          ceiling=settings.live_max_bitrate),
            LatencyPolicy(settings.live_max_latency, settings.live_adaptive),
        )  # fmt: skip
        app.state.live = live
        app.state.settings, app.state.store, app.state.runner = settings, store, runner
        app.state.worker_holder, app.state.metrics = holder, metrics
        app.state.executors = executors
        scheduler = asyncio.create_task(runner.run_forever())
        try:
            yield
        finally:
            await live.close_all()
            await runner.shutdown()
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
            await executors.close()
            await asyncio.to_thread(holder.close)
            store.close()

    app = FastAPI(
        title="carn-stream",
        summary="Real-time video super-resolution with CARN-M",
        lifespan=lifespan,
    )
    app.include_router(api_jobs.router)
    app.include_router(api_health.router)
    app.include_router(api_live.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        """Prometheus exposition of every metric of this process's service."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or _mounted_prefix(request.url.path)
        metrics.http_requests.labels(
            request.method, template, f"{response.status_code // 100}xx"
        ).inc()
        metrics.http_seconds.labels(request.method, template).observe(time.perf_counter() - started)
        return response

    return app


def _mounted_prefix(path: str) -> str:
    return "/static" if path.startswith("/static/") else "unmatched"
