"""Which executor runs segments, chosen in one place for the service and the command line.

The edge (server start-up, the command line) turns its settings into an
:class:`ExecutorChoice`; :func:`open_executor` builds the executor it names. Nothing here loads
Ray or torch until an executor of that kind is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from carn_stream.pipeline.execution.executors import InProcessExecutor, SegmentExecutor

if TYPE_CHECKING:
    from carn_stream.pipeline.engine.infer import InferenceWorker

ExecutorKind = Literal["process", "inprocess", "ray"]
EXECUTOR_KINDS: tuple[ExecutorKind, ...] = ("process", "inprocess", "ray")


@dataclass(frozen=True)
class RayOptions:
    address: str = "auto"  #: the cluster to join (``auto``: a cluster started on this machine)
    segments_per_actor: int = 2  #: segments one actor works on at once
    cpu_resource: str = "carn_worker"  #: the custom resource CPU worker nodes advertise
    poll_seconds: float = 2.0  #: how often the node table is read
    start_timeout: float = 300.0  #: seconds to wait for the first actor
    wait_timeout: float = 600.0  #: seconds a segment waits for a free actor before failing


@dataclass(frozen=True)
class ExecutorChoice:
    """``process``: a supervised worker process with its own model (a crash on a hostile input
    ends that process only); ``inprocess``: this process's inference worker; ``ray``: actors on
    a Ray cluster (one per GPU, or per CPU worker slot)."""

    kind: ExecutorKind = "process"
    slots: int = 2  #: segments worked on at once (a cluster's follow its actors)
    max_open_files: int = 1024  #: of a worker process
    ray: RayOptions = field(default_factory=RayOptions)


def open_executor(
    choice: ExecutorChoice,
    worker_factory: Callable[[], InferenceWorker],
    local_worker: InferenceWorker | None = None,
    observer: object | None = None,
    on_retry: Callable[[], None] | None = None,
) -> SegmentExecutor:
    """The executor ``choice`` names, not started yet (call ``start()``). ``worker_factory``
    builds an inference worker where the executor needs its own (a worker process, each Ray
    actor; it must be picklable); ``inprocess`` runs on ``local_worker`` (made by the factory
    when not given). ``observer`` hears of a cluster's segments per node; ``on_retry``, of a
    segment the executor runs again by itself (a worker process's crash)."""
    if choice.kind == "ray":
        from carn_stream.pipeline.execution.ray_executor import RayExecutor

        return RayExecutor(worker_factory, choice.ray, observer)  # type: ignore[arg-type]
    if choice.kind == "process":
        from carn_stream.pipeline.execution.worker_process import ProcessExecutor, ProcessLimits

        limits = ProcessLimits(max_open_files=choice.max_open_files)
        return ProcessExecutor(worker_factory, choice.slots, limits, on_retry)
    if local_worker is not None:
        return InProcessExecutor(local_worker, choice.slots)
    return InProcessExecutor(worker_factory(), choice.slots, owns_worker=True)
