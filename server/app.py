"""The FastAPI application: routers, lifespan (store, model worker, job runner), metrics."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from carn_stream.pipeline.hls import hls_muxer_options
from carn_stream.pipeline.infer import InferenceWorker
from carn_stream.server import api_health, api_jobs, api_live, api_watch, pages
from carn_stream.server.fetch import FetchPolicy
from carn_stream.server.jobs import JobRunner
from carn_stream.server.live import BitratePolicy, LatencyPolicy, LiveSessions, restrict_ice_hosts
from carn_stream.server.metrics import Metrics
from carn_stream.server.store import JobStore
from carn_stream.settings import Settings

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


def fetch_policy(settings: Settings) -> FetchPolicy:
    allowed = frozenset(str(ipaddress.ip_address(h)) for h in settings.allowed_private_hosts)
    return FetchPolicy(
        allowed_hosts=allowed,
        allow_local_files=settings.allow_local_files,
        max_bytes=settings.max_input_bytes,
        timeout=settings.fetch_timeout_seconds,
        max_redirects=settings.max_redirects,
    )


def create_app(settings: Settings, worker_factory: Callable[[], InferenceWorker]) -> FastAPI:
    """The service. ``worker_factory`` loads the model and starts its inference worker."""
    hls_muxer_options(settings.data_dir, settings.segment_seconds)  # fail at start, not per job
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        store = JobStore(data_dir / "jobs.sqlite3")
        requeued, failed = store.recover(settings.max_attempts)
        if requeued or failed:
            log.warning("after restart: %d jobs re-queued, %d failed", len(requeued), len(failed))
        runner = JobRunner(
            store,
            data_dir,
            fetch_policy(settings),
            metrics,
            max_concurrent=settings.max_concurrent_jobs,
            max_duration=settings.max_duration_seconds,
            max_output_pixels=settings.max_output_pixels,
            batch_size=settings.batch_size,
            segment_seconds=settings.segment_seconds,
            retention_seconds=settings.retention_hours * 3600,
        )
        holder = WorkerHolder(worker_factory)
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
        scheduler = asyncio.create_task(runner.run_forever(lambda: holder.worker))
        try:
            yield
        finally:
            await live.close_all()
            await runner.shutdown()
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
            await asyncio.to_thread(holder.close)
            store.close()

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
