"""The FastAPI application: routers, lifespan (store, model worker, job runner), metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from carn_stream.pipeline.infer import InferenceWorker
from carn_stream.pipeline.slots import Slots
from carn_stream.server import api_health, api_jobs, api_live, api_videos, api_watch, pages
from carn_stream.server.blocking import BlockingPool
from carn_stream.server.jobs import JobRunner
from carn_stream.server.live import BitratePolicy, LatencyPolicy, LiveSessions, restrict_ice_hosts
from carn_stream.server.metrics import Metrics
from carn_stream.server.middleware import Gate, RequestMetrics
from carn_stream.server.store import JobStore
from carn_stream.server.video_store import VideoStore
from carn_stream.server.vod import VideoManager
from carn_stream.server.workers import ExecutorHolder, WorkerHolder
from carn_stream.settings import Settings

if TYPE_CHECKING:  # Ray is an optional extra, imported only when a cluster is configured
    pass

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


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
        blocking = BlockingPool(settings.max_concurrent_jobs + 2)
        holder = WorkerHolder(worker_factory)
        executors = ExecutorHolder(settings, worker_factory, holder, metrics)
        # Jobs and videos share the executor's slots, which follow it (a cluster grows).
        slots = Slots(lambda: executors.slots(settings.worker_slots), urgent_extra=1)
        runner = JobRunner(
            store, settings, metrics, executors.get, offload=blocking.run, slots=slots
        )
        video_store = VideoStore(data_dir / "jobs.sqlite3")
        videos = VideoManager(video_store, settings, metrics, executors.get, slots)
        app.state.videos = videos
        restrict_ice_hosts(settings.live_ice_hosts)
        live = LiveSessions(
            metrics,
            settings.live_max_sessions,
            BitratePolicy(bits_per_pixel=settings.live_bits_per_pixel,
                          ceiling=settings.live_max_bitrate),
            LatencyPolicy(settings.live_max_latency, settings.live_adaptive),
            connect_seconds=settings.live_connect_seconds,
            max_output_pixels=settings.max_output_pixels,
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
            await videos.close()
            await runner.shutdown()
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
            await executors.close()
            await asyncio.to_thread(holder.close)
            blocking.close()
            store.close()
            video_store.close()

    app = FastAPI(
        title="carn-stream",
        summary="Real-time video super-resolution with CARN-M",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: server/pages.py, with local assets
        redoc_url=None,
    )
    app.include_router(api_jobs.router)
    app.include_router(api_watch.router)
    app.include_router(api_health.router)
    app.include_router(api_live.router)
    app.include_router(api_videos.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        """Prometheus exposition of every metric of this process's service."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Gate, token=lambda: settings.api_token)  # type: ignore[arg-type]
    app.add_middleware(RequestMetrics, metrics=metrics)  # type: ignore[arg-type]  # outermost
    return app
