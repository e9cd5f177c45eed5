"""Liveness and readiness for orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from carn_stream.server.admission import data_dir_writable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready to run jobs: the model is loaded, the job store is writable and the data folder
    takes a real write (create, fsync, delete)."""
    state = request.app.state
    checks = {
        "model_loaded": state.worker_holder.worker is not None,
        "store_writable": state.store.writable(),
        "data_dir_writable": data_dir_writable(state.settings.data_dir),
    }
    if state.worker_holder.error:
        checks["model_error"] = state.worker_holder.error
    worker = state.worker_holder.worker
    if worker is not None:
        model = worker.engine.model
        checks["weights"] = str(getattr(model, "weights_file", "") or "") or None
        if getattr(model, "weights_warning", None):
            checks["weights_warning"] = model.weights_warning
    ready = checks["model_loaded"] and checks["store_writable"] and checks["data_dir_writable"]
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
