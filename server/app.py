"""The FastAPI application: routers, lifespan (store, model worker, job runner), metrics."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from carn_stream.pipeline.engine.infer import InferenceWorker
from carn_stream.pipeline.execution.slots import Slots
from carn_stream.server import pages
from carn_stream.server.api import health as health_api
from carn_stream.server.api import jobs as jobs_api
from carn_stream.server.api import live as live_api
from carn_stream.server.api import videos as videos_api
from carn_stream.server.api import watch as watch_api
from carn_stream.server.blocking import BlockingPool
from carn_stream.server.database import Database
from carn_stream.server.jobs import media as job_media
from carn_stream.server.jobs.runner import JobRunner
from carn_stream.server.jobs.store import JobStore
from carn_stream.server.limits import Intake
from carn_stream.server.live import LiveSessions, restrict_ice_hosts
from carn_stream.server.metrics import Metrics
from carn_stream.server.middleware import CrossOrigin, Gate, HeadAsGet, RequestMetrics
from carn_stream.server.player_library import PlayerLibraryFiles
from carn_stream.server.vod import media as video_media
from carn_stream.server.vod.manager import VideoManager
from carn_stream.server.vod.store import VideoStore
from carn_stream.server.workers import ExecutorHolder, WorkerHolder
from carn_stream.settings import Settings

log = logging.getLogger(__name__)
DATABASE_NAME = "jobs.sqlite3"  #: in the data folder: jobs and videos
#: What a signed media link may open: one job's media, or one video's.
MEDIA_SCOPES = (job_media.SCOPE, video_media.SCOPE)


@dataclass
class Services:
    """What the service runs between start-up and shutdown."""

    store: JobStore
    video_store: VideoStore
    pools: tuple[BlockingPool, ...]
    holder: WorkerHolder
    executors: ExecutorHolder
    runner: JobRunner
    videos: VideoManager
    live: LiveSessions


async def start_services(
    settings: Settings,
    worker_factory: Callable[[], InferenceWorker],
    metrics: Metrics,
    executor_factory: Callable[[], InferenceWorker] | None = None,
) -> Services:
    """Open the store (interrupted jobs re-queued, or failed and cleaned up once out of
    attempts), and build the workers, the executor, the job runner, videos and live sessions.
    ``executor_factory`` is what the executor's worker processes or actors call (default:
    ``worker_factory``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.data_dir / DATABASE_NAME)
    store = JobStore(database)
    requeued, failed = store.recover(settings.max_attempts)
    if requeued or failed:
        log.warning("after restart: %d jobs re-queued, %d failed", len(requeued), len(failed))
    # Each kind of blocking work on threads of its own: a stuck source slows only its kind.
    blocking = BlockingPool(settings.max_concurrent_jobs + 2, "carn-jobs")
    checks = BlockingPool(8, "carn-checks", max_waiting=64)  #: DNS lookups of submissions
    ingests = BlockingPool(settings.max_concurrent_ingests, "carn-ingests")
    holder = WorkerHolder(worker_factory)
    executors = ExecutorHolder(settings, executor_factory or worker_factory, holder, metrics)
    # Jobs and videos share the executor's slots, which follow it (a cluster grows).
    slots = Slots(lambda: executors.slots(settings.worker_slots), urgent_extra=1)
    intake = Intake.from_settings(settings)
    runner = JobRunner(
        store, settings, metrics, executors.get, blocking.run, slots, intake, checks.run
    )
    await asyncio.to_thread(runner.discard_files, failed)  # failed jobs serve nothing
    video_store = VideoStore(database)
    videos = VideoManager(
        video_store, settings, metrics, executors.get, slots, ingests.run, intake, checks.run
    )
    restrict_ice_hosts(settings.live_ice_hosts)
    live = LiveSessions.from_settings(metrics, settings)
    pools = (blocking, checks, ingests)
    return Services(store, video_store, pools, holder, executors, runner, videos, live)


async def stop_services(services: Services, scheduler: asyncio.Task) -> None:
    """Close live sessions, then videos and jobs (running jobs re-queued), then the workers."""
    await services.live.close_all()
    await services.videos.close()
    await services.runner.shutdown()
    scheduler.cancel()
    await asyncio.gather(scheduler, return_exceptions=True)
    await services.executors.close()
    await asyncio.to_thread(services.holder.close)
    for pool in services.pools:
        pool.close()
    services.store.close()
    services.video_store.close()


def _json_safe(value):
    """``value`` with what JSON in UTF-8 cannot carry written as text: numbers (inf, NaN) and
    lone surrogates (``"\\udcff"`` in a request's JSON, echoed back in its error: a 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with pydantic's list of errors, also for inputs such as ``1e400`` (read as inf),
    which FastAPI's own handler cannot encode."""
    detail = _json_safe(jsonable_encoder(exc.errors()))
    return JSONResponse({"detail": detail}, status_code=422)


def create_app(
    settings: Settings,
    worker_factory: Callable[[], InferenceWorker],
    executor_factory: Callable[[], InferenceWorker] | None = None,
) -> FastAPI:
    """The service. ``worker_factory`` loads the model and starts an inference worker; with the
    ``process`` executor it (or ``executor_factory``, when given: the same model, loaded without
    saying again what the service's own worker says) runs in the worker process too, so it
    must be picklable."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = await start_services(settings, worker_factory, metrics, executor_factory)
        state = app.state  # what the routes' dependencies read (server/deps.py)
        state.settings, state.metrics = settings, metrics
        state.store, state.runner, state.videos = services.store, services.runner, services.videos
        state.live, state.worker_holder = services.live, services.holder
        state.executors = services.executors
        scheduler = services.runner.start()
        services.videos.start()
        try:
            yield
        finally:
            await stop_services(services, scheduler)

    app = FastAPI(
        title="carn-stream",
        summary="Real-time video super-resolution with CARN-M",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: server/pages.py, with local assets
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.include_router(jobs_api.router)
    app.include_router(watch_api.router)
    app.include_router(health_api.router)
    app.include_router(live_api.router)
    app.include_router(videos_api.router)
    app.state.player_library = PlayerLibraryFiles(
        settings.cache_dir, url=settings.hls_js_url, allow_download=settings.allow_download
    )
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")

    @app.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        """Prometheus exposition of every metric of this process's service."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.media_scopes = MEDIA_SCOPES
    gate = {"token": lambda: settings.api_token, "scopes": MEDIA_SCOPES,
            "hosts": settings.allowed_hosts}  # fmt: skip
    app.add_middleware(HeadAsGet, routes=lambda: app.routes)  # type: ignore[arg-type]
    app.add_middleware(Gate, **gate)  # type: ignore[arg-type]
    app.add_middleware(CrossOrigin, origins=settings.cors_origins,  # type: ignore[arg-type]
                       signed_links=lambda: bool(settings.api_token))  # fmt: skip
    app.add_middleware(RequestMetrics, metrics=metrics)  # type: ignore[arg-type]  # outermost
    return app
