"""Liveness and readiness for orchestrators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from carn_stream.server.admission import data_dir_writable
from carn_stream.server.deps import (
    get_executors,
    get_runner,
    get_settings,
    get_speed,
    get_store,
    get_worker_holder,
)
from carn_stream.server.jobs.runner import JobRunner
from carn_stream.server.jobs.store import JobStore
from carn_stream.server.speed import SpeedBook
from carn_stream.server.workers import ExecutorHolder, WorkerHolder
from carn_stream.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(
    settings: Annotated[Settings, Depends(get_settings)],
    store: Annotated[JobStore, Depends(get_store)],
    holder: Annotated[WorkerHolder, Depends(get_worker_holder)],
    executors: Annotated[ExecutorHolder, Depends(get_executors)],
    runner: Annotated[JobRunner, Depends(get_runner)],
    speed: Annotated[SpeedBook, Depends(get_speed)],
) -> JSONResponse:
    """Ready to run jobs: the model is loaded, segments can run, the job scheduler runs, the
    job store is writable and the data folder takes a real write (create, fsync, delete).
    ``speed``: the model's measured frames per second at each input size it has upscaled, on
    the live path and in segments, and whether that keeps up with the source's frame rate."""
    checks = {
        "model_loaded": holder.worker is not None,
        "executor": executors.choice.kind,
        "executor_ready": executors.get() is not None,
        "job_runner": runner.alive,
        "store_writable": store.writable(),
        "data_dir_writable": data_dir_writable(settings.data_dir),
    }
    if holder.error:
        checks["model_error"] = holder.error
    if executors.error:
        checks["executor_error"] = executors.error
    if runner.failure:
        checks["job_runner_error"] = runner.failure
    executor = executors.get()
    if executor is not None:  # ready engines per node (a worker process, a cluster's nodes)
        checks["engines"] = executor.engines
    worker = holder.worker
    if worker is not None:
        checks["precision"] = worker.engine.describe_precision()
        weights = worker.engine.weights
        checks["weights"] = weights.name if weights else None  # public: no server path
        if weights is not None and weights.warning:
            checks["weights_warning"] = weights.warning
    checks["speed"] = speed.seen()
    required = ("model_loaded", "executor_ready", "job_runner", "store_writable",
                "data_dir_writable")  # fmt: skip
    ready = all(checks[name] for name in required)
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
