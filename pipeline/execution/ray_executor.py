"""Segments on a Ray cluster: one actor per GPU (or per CPU worker slot), each with a warm engine.

The head (this process) plans the input and, for every segment, remuxes the packets it needs into a
small MOV file in memory (:mod:`carn_stream.pipeline.execution.segment_transport`: compressed, no
decoding). The original rendition of a video served on request is a remux too, so the head makes it
itself (no upscaling, nothing to send). An actor writes it to a temporary file, decodes, upscales
and encodes it with the same :func:`~carn_stream.pipeline.execution.executors.upscale_segment` every
executor uses, and returns the encoded MPEG-TS segment, which the head publishes by rename. Neither
decoded frames nor a shared filesystem are needed.

The pool follows the cluster: every few seconds the head reads the node table and starts one
actor per GPU of each live node (or, on nodes without GPUs, one per unit of the custom CPU
resource, ``carn_worker`` by default), pinned to that node; actors of nodes that died are
dropped. Each actor works on a few segments at once so that transfers overlap compute. A
segment whose actor or node dies fails with :class:`WorkerCrashed`, which the segmented run
retries on another actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ray
import ray.exceptions
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from carn_stream.pipeline.execution.choice import RayOptions
from carn_stream.pipeline.execution.executors import (
    PLANS_AT_ONCE,
    FrameCallback,
    PlanRequest,
    SegmentResult,
    SegmentTask,
    WorkerCrashed,
    plan_in_thread,
)
from carn_stream.pipeline.execution.segment_transport import cut_segment, upscale_copy
from carn_stream.pipeline.media.remux import RemuxTask, remux_segment
from carn_stream.pipeline.media.segments import SegmentPlan
from carn_stream.pipeline.waiting import wait_at_most

if TYPE_CHECKING:  # the engine (torch) is the caller's; planning and remuxing need none
    from carn_stream.pipeline.engine.infer import InferenceWorker

log = logging.getLogger(__name__)

#: What a dead actor, node or object looks like to the caller: worth running again elsewhere.
_LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.LocalRayletDiedError,
)


def node_name(node_id: str) -> str:
    """How results, the job record and metrics name a Ray node: ``ray:`` and 12 hex digits."""
    return f"ray:{node_id[:12]}"


class SegmentObserver(Protocol):
    """Told when a segment attempt starts and ends on a node (``seconds`` is None when it did
    not complete; ``lost`` when it went down with its actor or node)."""

    def started(self, node: str) -> None: ...

    def finished(self, node: str, seconds: float | None, lost: bool) -> None: ...


# --------------------------------------------------------------------------- the actor side


class SegmentActor:
    """One engine on one GPU (or CPU slot); an async actor, so it runs several segments."""

    def __init__(self, factory: Callable[[], InferenceWorker], share: int = 1) -> None:
        # Ray limits a worker process to one OpenMP thread; a CPU engine gets its share of the
        # node's cores instead (``share``: the engines on this node).
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // share))
        self.worker = factory()
        self.node = node_name(ray.get_runtime_context().get_node_id())

    async def ready(self) -> tuple[str, str]:
        """(node, device) once the engine is loaded."""
        return self.node, str(self.worker.device)

    async def run(self, data: bytes, task: SegmentTask) -> tuple[SegmentResult, bytes, list[Any]]:
        """Upscale the segment in ``data`` (from :func:`cut_segment`); returns the result, the
        encoded segment and its per-frame reports."""
        reports: list[Any] = []
        result, encoded = await upscale_copy(data, task, self.worker, reports.append, self.node)
        return result, encoded, reports

    def close(self) -> None:
        self.worker.close()


# --------------------------------------------------------------------------- the head side


@dataclass(eq=False)
class _Actor:
    handle: Any
    node_id: str
    ready: bool = False
    dead: bool = False
    in_flight: int = 0

    @property
    def node(self) -> str:
        return node_name(self.node_id)


class RayExecutor:
    """Segments run on a pool of Ray actors that follows the cluster's nodes."""

    def __init__(
        self,
        worker_factory: Callable[[], InferenceWorker],
        options: RayOptions | None = None,
        observer: SegmentObserver | None = None,
    ) -> None:
        self.options, self.observer = options or RayOptions(), observer
        self._factory = worker_factory
        self._actors: list[_Actor] = []
        self._changed: asyncio.Condition | None = None
        self._poller: asyncio.Task | None = None
        self._starting: set[asyncio.Task] = set()  #: actors loading their engines
        self._failed_nodes: dict[str, float] = {}  #: node id -> when an actor failed to start
        self._connected = False
        self._closed = False
        self._plans = asyncio.Semaphore(PLANS_AT_ONCE)
        self.device = ""  #: the first ready actor's
        self.error: str | None = None  #: why the last actor could not start
        self.replaced = 0  #: actors lost with their node or process

    # ------------------------------------------------------------------ interface

    @property
    def slots(self) -> int:
        """Segments the pool can work on at once now (at least 1)."""
        ready = sum(1 for a in self._actors if a.ready and not a.dead)
        return max(1, ready * self.options.segments_per_actor)

    @property
    def engines(self) -> dict[str, int]:
        """Ready actors per node."""
        counts: dict[str, int] = {}
        for actor in self._actors:
            if actor.ready and not actor.dead:
                counts[actor.node] = counts.get(actor.node, 0) + 1
        return counts

    async def start(self) -> None:
        """Join the cluster, start the pool and wait for its first actor."""
        if not ray.is_initialized():
            await asyncio.to_thread(
                ray.init,
                address=self.options.address,
                log_to_driver=False,
                configure_logging=False,
            )
            self._connected = True
        self._changed = asyncio.Condition()
        self._poller = asyncio.create_task(self._follow_cluster(), name="ray-pool")
        deadline = time.monotonic() + self.options.start_timeout
        async with self._changed:
            while not any(a.ready and not a.dead for a in self._actors):
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = self.error or (
                        f"no node offers a GPU or the {self.options.cpu_resource!r} resource"
                    )
                    raise RuntimeError(f"the Ray cluster has no ready worker: {reason}")
                await wait_at_most(min(left, 1.0), self._changed.wait())

    async def plan(self, request: PlanRequest) -> SegmentPlan:
        async with self._plans:
            return await plan_in_thread(request)

    async def run(self, task: SegmentTask, on_frame: FrameCallback | None) -> SegmentResult:
        segment = task.segment
        data = await asyncio.to_thread(
            cut_segment, task.source, segment, task.time_base, task.last, task.time_shift
        )
        actor = await self._acquire()
        started = time.monotonic()
        if self.observer is not None:
            self.observer.started(actor.node)
        seconds: float | None = None
        lost = False
        try:
            # The actor never sees the head's paths: it reads its copy and writes beside it.
            remote = replace(task, source=Path(task.source.name), target=Path(task.target.name))
            ref = actor.handle.run.remote(data, remote)
            try:
                result, encoded, reports = await ref
            except asyncio.CancelledError:
                ray.cancel(ref)
                raise
            seconds = time.monotonic() - started
        except _LOST as exc:
            lost = True
            await self._lost(actor)
            raise WorkerCrashed(f"{segment.describe()} was lost with {actor.node}: {exc}") from None
        finally:
            await self._release(actor)
            if self.observer is not None:
                self.observer.finished(actor.node, seconds, lost)
        await asyncio.to_thread(_publish, task.target, encoded)
        if on_frame is not None:
            for report in reports:
                on_frame(report)
        return replace(result, bytes=len(encoded))

    async def remux(self, task: RemuxTask) -> int:
        return await asyncio.to_thread(remux_segment, task)

    async def close(self) -> None:
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for task in list(self._starting):
            task.cancel()
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor.handle, no_restart=True)
        self._actors.clear()
        if self._connected:
            await asyncio.to_thread(ray.shutdown)
            self._connected = False

    # ------------------------------------------------------------------ actors

    async def _acquire(self) -> _Actor:
        assert self._changed is not None, "start() the executor first"
        deadline = time.monotonic() + self.options.wait_timeout
        async with self._changed:
            while True:
                actor = self._pick()
                if actor is not None:
                    actor.in_flight += 1
                    return actor
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("no Ray worker became free in time")
                await wait_at_most(min(left, 1.0), self._changed.wait())

    def _pick(self) -> _Actor | None:
        """The least busy ready actor with room, preferring nodes with less work."""
        per_node: dict[str, int] = {}
        for a in self._actors:
            if not a.dead:
                per_node[a.node_id] = per_node.get(a.node_id, 0) + a.in_flight
        free = [
            a
            for a in self._actors
            if a.ready and not a.dead and a.in_flight < self.options.segments_per_actor
        ]
        if not free:
            return None
        return min(free, key=lambda a: (a.in_flight, per_node[a.node_id]))

    async def _release(self, actor: _Actor) -> None:
        assert self._changed is not None
        async with self._changed:
            actor.in_flight -= 1
            self._changed.notify_all()

    async def _lost(self, actor: _Actor) -> None:
        assert self._changed is not None
        async with self._changed:
            if not actor.dead:
                actor.dead = True
                self.replaced += 1
                log.warning("Ray actor on %s was lost; the pool replaces it", actor.node)
            self._changed.notify_all()

    # ------------------------------------------------------------------ the cluster

    async def _follow_cluster(self) -> None:
        while not self._closed:
            try:
                nodes = await asyncio.to_thread(ray.nodes)
                await self._reconcile(nodes)
            except Exception:
                log.exception("reading the Ray cluster's nodes failed")
            await asyncio.sleep(self.options.poll_seconds)

    def _capacity(self, resources: dict[str, float]) -> tuple[int, dict[str, Any]]:
        """Actors a node takes, and the resources each one claims."""
        gpus = int(resources.get("GPU", 0))
        if gpus >= 1:
            return gpus, {"num_gpus": 1, "num_cpus": 0}
        slots = int(resources.get(self.options.cpu_resource, 0))
        return slots, {"resources": {self.options.cpu_resource: 1}, "num_cpus": 0}

    async def _reconcile(self, nodes: list[dict[str, Any]]) -> None:
        assert self._changed is not None
        alive = {n["NodeID"]: n.get("Resources", {}) for n in nodes if n.get("Alive")}
        async with self._changed:
            for actor in self._actors:
                if actor.node_id not in alive and not actor.dead:
                    actor.dead = True
                    self.replaced += 1
                    log.warning("Ray node %s left the cluster", actor.node)
            self._actors = [a for a in self._actors if not a.dead or a.in_flight]
            self._changed.notify_all()
        now = time.monotonic()
        for node_id, resources in alive.items():
            if now - self._failed_nodes.get(node_id, -1e9) < 30:
                continue  # an actor failed to start there a moment ago
            want, claim = self._capacity(resources)
            have = sum(1 for a in self._actors if a.node_id == node_id and not a.dead)
            for _ in range(want - have):
                self._spawn(node_id, claim, want)

    def _spawn(self, node_id: str, claim: dict[str, Any], share: int) -> None:
        handle = (
            ray.remote(SegmentActor)
            .options(
                max_concurrency=self.options.segments_per_actor + 1,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                **claim,
            )
            .remote(self._factory, share)
        )
        actor = _Actor(handle, node_id)
        self._actors.append(actor)
        task = asyncio.create_task(self._wait_ready(actor), name=f"ray-actor-{actor.node}")
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _wait_ready(self, actor: _Actor) -> None:
        assert self._changed is not None
        try:
            _, device = await actor.handle.ready.remote()
        except Exception as exc:
            self.error = f"{actor.node}: {type(exc).__name__}: {exc}"
            log.error("a Ray actor could not start on %s: %s", actor.node, exc)
            self._failed_nodes[actor.node_id] = time.monotonic()
            async with self._changed:
                actor.dead = True
                self._changed.notify_all()
            return
        async with self._changed:
            actor.ready = True
            self.device = self.device or device
            log.info("Ray actor ready on %s (%s)", actor.node, device)
            self._changed.notify_all()


def _publish(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` under a temporary name, then rename it into place."""
    part = target.with_name(f".{target.name}.part")
    part.write_bytes(data)
    os.replace(part, target)
