"""A worker for the isolation tests: bicubic upscaling that brings its process down (SIGSEGV,
as a demuxer bug on a hostile file would) on frames that are almost white. Module-level, so
that a spawned worker process can build it."""

from __future__ import annotations

import os
import signal

from torch import Tensor

from carn_stream.model.baselines import Bicubic
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker


class CrashOnWhite(Bicubic):
    def forward(self, x: Tensor, scale: int | None = None) -> Tensor:
        if float(x.mean()) > 0.9:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().forward(x, scale)


def crashing_worker() -> InferenceWorker:
    return InferenceWorker(Engine(CrashOnWhite(), EngineConfig(device="cpu", precision="fp32")))


def crashing_planner() -> InferenceWorker:
    """:func:`crashing_worker`, in a worker process that also comes down (SIGSEGV) planning
    an input whose name starts with ``hostile``, as a demuxer bug would."""
    from carn_stream.pipeline.execution import worker_process

    plan = worker_process.plan_in_thread

    async def planning(request):
        if request.source.name.startswith("hostile"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return await plan(request)

    worker_process.plan_in_thread = planning
    return crashing_worker()
