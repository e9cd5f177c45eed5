"""Liveness and readiness for orchestrators."""

from __future__ import annotations

import threading
import time
from pathlib import Path
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
from carn_stream.server.inputs.exposure import without_paths
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


#: How long the write checks' answers are reused: ``/readyz`` needs no token, and each check
#: is a database transaction and a file written, synced and removed.
WRITE_CHECKS_SECONDS = 1.0
_last_write_checks: dict[Path, tuple[float, bool, bool]] = {}
_write_checks_lock = threading.Lock()


def _write_checks(settings: Settings, store: JobStore) -> tuple[bool, bool]:
    """Whether the job store and the data folder take writes, checked at most once a second
    however often ``/readyz`` is asked."""
    with _write_checks_lock:
        last = _last_write_checks.get(settings.data_dir)
        if last is not None and time.monotonic() - last[0] < WRITE_CHECKS_SECONDS:
            return last[1], last[2]
        found = store.writable(), data_dir_writable(settings.data_dir)
        _last_write_checks[settings.data_dir] = (time.monotonic(), *found)
        return found


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
    store_ok, data_ok = _write_checks(settings, store)
    checks = {
        "model_loaded": holder.worker is not None,
        "executor": executors.choice.kind,
        "executor_ready": executors.get() is not None,
        "job_runner": runner.alive,
        "store_writable": store_ok,
        "data_dir_writable": data_ok,
    }
    # (public: the reasons without the server's paths; the log has them whole)
    if holder.error:
        checks["model_error"] = without_paths(holder.error)
    if executors.error:
        checks["executor_error"] = without_paths(executors.error)
    if runner.failure:
        checks["job_runner_error"] = without_paths(runner.failure)
    executor = executors.get()
    if executor is not None:  # ready engines per node (a worker process, a cluster's nodes)
        checks["engines"] = executor.engines
    worker = holder.worker
    if worker is not None:
        checks["precision"] = worker.engine.describe_precision()
        weights = worker.engine.weights
        checks["weights"] = weights.name if weights else None  # public: no server path
        if weights is not None and weights.warning:
            checks["weights_warning"] = without_paths(weights.warning)
    checks["speed"] = speed.seen()
    required = ("model_loaded", "executor_ready", "job_runner", "store_writable",
                "data_dir_writable")  # fmt: skip
    ready = all(checks[name] for name in required)
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
