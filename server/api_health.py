"""Liveness and readiness for orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready to run jobs: the model is loaded, segments can run, the job store is writable."""
    state = request.app.state
    checks = {
        "model_loaded": state.worker_holder.worker is not None,
        "executor": "ray" if state.settings.ray_address else state.settings.executor,
        "executor_ready": state.executors.get() is not None,
        "store_writable": state.store.writable(),
    }
    if state.worker_holder.error:
        checks["model_error"] = state.worker_holder.error
    if state.executors.error:
        checks["executor_error"] = state.executors.error
    actors = getattr(state.executors.get(), "actors", None)
    if actors is not None:  # on a cluster: ready engines per node
        checks["cluster_actors"] = actors
    worker = state.worker_holder.worker
    if worker is not None:
        model = worker.engine.model
        checks["precision"] = worker.engine.describe_precision()
        checks["weights"] = str(getattr(model, "weights_file", "") or "") or None
        if getattr(model, "weights_warning", None):
            checks["weights_warning"] = model.weights_warning
    ready = checks["model_loaded"] and checks["executor_ready"] and checks["store_writable"]
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
