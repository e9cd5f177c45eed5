"""Segments in a supervised worker process: untrusted input is parsed and decoded away from the
service, so a crash (a demuxer bug, a hostile file) ends that process, not the service.

The worker process owns its own inference engine (built by a picklable factory), runs several
segments at once on it and streams per-frame reports back over a pipe. When it dies, the segments it
was working on fail with :class:`~carn_stream.pipeline.execution.executors.WorkerCrashed` and a
fresh process is started for what comes next. A crash while several segments were in flight does not
blame them all: each is run again *alone*, and only a segment that crashes the worker on its own is
reported as crashed (so an innocent job running beside a hostile one succeeds). The process runs
with a cap on open files and no core dumps."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.execution.executors import (
    PLANS_AT_ONCE,
    FrameCallback,
    PlanRequest,
    SegmentResult,
    SegmentTask,
    WorkerCrashed,
    plan_in_thread,
    upscale_segment,
)
from carn_stream.pipeline.media.remux import RemuxTask, remux_segment
from carn_stream.pipeline.media.segments import SegmentPlan

if TYPE_CHECKING:  # the engine (torch) is the caller's; planning and remuxing need none
    from carn_stream.pipeline.engine.infer import InferenceWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessLimits:
    max_open_files: int = 1024
    start_timeout: float = 180.0  #: seconds for a new worker process to load its model
    stop_timeout: float = 3.0  #: seconds a stopping worker gets before it is killed
    #: seconds a segment may go without a frame (a demuxer stuck on a hostile input) before
    #: its worker process is killed and the segment counted as having crashed it
    stall_timeout: float = 300.0


# --------------------------------------------------------------------------- the worker side


def _apply_limits(limits: ProcessLimits) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = (
        limits.max_open_files
        if hard == resource.RLIM_INFINITY
        else min(hard, limits.max_open_files)
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, cap), cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _worker_main(conn, factory: Callable[[], InferenceWorker], limits: ProcessLimits) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process stops
    try:
        _apply_limits(limits)
        worker = factory()
    except Exception as exc:  # report why the worker could not start, then stop
        conn.send(("failed", None, _portable(exc)))
        return
    conn.send(("ready", None, str(worker.device)))
    code = 0
    try:
        asyncio.run(_serve(conn, worker))
    except BaseException:
        code = 1
        traceback.print_exc()
    finally:
        worker.close(timeout=limits.stop_timeout)
        # A batch still computing holds PyTorch's threads; the interpreter's shutdown would
        # abort under it. Nothing is left to clean up here, so end without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


async def _serve(conn, worker: InferenceWorker) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    node = f"process:{os.getpid()}"

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("stop", None, None)
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message[0] == "stop":
                return

    threading.Thread(target=read, name="carn-worker-inbox", daemon=True).start()
    tasks: dict[int, asyncio.Task] = {}

    def send(message: tuple) -> None:
        with contextlib.suppress(OSError, ValueError):  # the parent has gone; "stop" follows
            conn.send(message)

    async def handle(call_id: int, kind: str, payload: Any) -> None:
        try:
            if kind == "plan":
                result = await plan_in_thread(payload)
            elif kind == "remux":
                result = await asyncio.to_thread(remux_segment, payload)
            else:
                result = await upscale_segment(
                    payload, worker, lambda report: send(("frame", call_id, report)), node
                )
            send(("done", call_id, result))
        except asyncio.CancelledError:
            send(("cancelled", call_id, None))
        except Exception as exc:
            send(("error", call_id, _portable(exc)))
        finally:
            tasks.pop(call_id, None)

    while True:
        kind, call_id, payload = await inbox.get()
        if kind == "stop":
            break
        if kind == "cancel":
            task = tasks.get(call_id)
            if task is not None:
                task.cancel()
            continue
        tasks[call_id] = asyncio.create_task(handle(call_id, kind, payload))
    for task in list(tasks.values()):
        task.cancel()
    if tasks:
        await asyncio.wait(list(tasks.values()), timeout=2)


def _portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling, else a RuntimeError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- the service side


@dataclass
class _Call:
    future: asyncio.Future
    on_frame: FrameCallback | None
    child: _Child
    heard: float = field(default_factory=time.monotonic)  #: its last word (a frame)


class _Crash(Exception):
    def __init__(self, how: str, alone: bool) -> None:
        super().__init__(how)
        self.how, self.alone = how, alone


@dataclass
class _Child:
    process: Any
    conn: Any
    calls: dict[int, _Call] = field(default_factory=dict)
    dead: bool = False
    #: stopped on purpose (a cancelled call that would not stop): its calls are not to blame
    killed: bool = False
    #: the call it was stopped for, having stalled (to blame alone)
    stalled: int | None = None
    heard: float = 0.0  #: when any of its calls last made a frame


class ProcessExecutor:
    """Segments run in one supervised worker process (restarted when it dies)."""

    def __init__(
        self,
        worker_factory: Callable[[], InferenceWorker],
        slots: int = 2,
        limits: ProcessLimits = ProcessLimits(),
        on_rerun: Callable[[], None] | None = None,
    ) -> None:
        """``on_rerun`` hears of every call run again after a crash of the process."""
        self.slots, self.limits, self.on_rerun = slots, limits, on_rerun
        self._factory = worker_factory
        self._context = multiprocessing.get_context("spawn")
        self._child: _Child | None = None
        self._starting: asyncio.Lock | None = None
        self._ids = itertools.count()
        self._active = 0  #: calls running in shared mode
        self._solo = False  #: a call runs alone
        self._solo_waiting = 0
        self._turn: asyncio.Condition | None = None
        self._closed = False
        self._plans = asyncio.Semaphore(PLANS_AT_ONCE)
        self.device = ""  #: the worker process's, once it has started
        self.restarts = 0
        #: how often a running call is looked at for a stall (seconds)
        self._stall_check = min(5.0, limits.stall_timeout / 4)
        #: work that crashed the worker process running alone: its later attempts run alone
        #: from the start (they brought down every segment beside them, attempt after attempt)
        self._crashers: OrderedDict[tuple, None] = OrderedDict()

    # ------------------------------------------------------------------ interface

    @property
    def engines(self) -> dict[str, int]:
        child = self._child
        if child is None or child.dead:
            return {}
        return {f"process:{child.process.pid}": 1}

    async def start(self) -> None:
        """Start the worker process now (else it starts with the first call)."""
        await self._ensure_child()

    async def plan(self, request: PlanRequest) -> SegmentPlan:
        """The input's plan; an input whose reading alone brings the worker process down is an
        :class:`InputError` (as a demuxer's crash on a hostile file)."""
        async with self._plans:
            try:
                return await self._call("plan", request, None)
            except WorkerCrashed as exc:
                if self._closed:  # (stopped under it: not the input's doing)
                    raise
                raise InputError(f"the input could not be read: reading it alone crashed the "
                                 f"worker process ({exc})") from None  # fmt: skip

    async def run(self, task: SegmentTask, on_frame: FrameCallback | None) -> SegmentResult:
        return await self._call("run", task, on_frame)

    async def remux(self, task: RemuxTask) -> int:
        return await self._call("remux", task, None)

    async def close(self) -> None:
        self._closed = True
        child, self._child = self._child, None
        if child is not None:
            await asyncio.to_thread(self._stop, child)

    # ------------------------------------------------------------------ calls

    async def _call(self, kind: str, payload: Any, on_frame: FrameCallback | None) -> Any:
        known = _work_key(kind, payload)
        alone = known in self._crashers
        while True:
            mode = alone
            await self._enter(mode)
            try:
                return await self._attempt(kind, payload, on_frame)
            except _Crash as crash:
                if crash.alone:
                    self._crashers[known] = None
                    while len(self._crashers) > MAX_CRASHERS_KEPT:
                        self._crashers.popitem(last=False)
                    raise WorkerCrashed(f"the worker process {crash.how}") from None
                log.warning("worker process %s; re-running its work one at a time", crash.how)
                alone = True
                if self.on_rerun is not None:
                    self.on_rerun()
            finally:
                await self._leave(mode)

    async def _attempt(self, kind: str, payload: Any, on_frame: FrameCallback | None) -> Any:
        child = await self._ensure_child()
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        child.calls[call_id] = _Call(future, on_frame, child)
        with contextlib.suppress(OSError, ValueError):  # a dead process fails the call anyway
            child.conn.send((kind, call_id, payload))
        try:
            while True:  # (a segment that stalls takes its worker process down with it)
                await asyncio.wait({future}, timeout=self._stall_check)  # (never cancels it)
                if future.done():
                    return future.result()
                # Silent, and the process too: a segment waiting while others of higher
                # priority keep the model busy is not stuck.
                silent = time.monotonic() - max(child.calls[call_id].heard, child.heard)
                if kind == "run" and silent > self.limits.stall_timeout and not child.dead:
                    log.warning("a segment made nothing for %.0f s; stopping the worker "
                                "process", silent)  # fmt: skip
                    child.stalled, child.killed, child.dead = call_id, True, True
                    child.process.kill()
        except asyncio.CancelledError:
            with contextlib.suppress(OSError, ValueError):
                child.conn.send(("cancel", call_id, None))
            # Return once the worker has stopped the call (and cleaned up), so that the caller
            # may remove or make again what the call was writing (it returned at once, and the
            # call's clean-up later removed a new attempt's file). A call that does not stop in
            # time takes its worker process with it: nothing outlives its caller.
            await _wait_for_end(future, self.limits.stop_timeout)
            if not future.done():
                log.warning("a cancelled call did not stop within %g s; stopping the worker "
                            "process", self.limits.stop_timeout)  # fmt: skip
                child.killed = child.dead = True
                child.process.kill()
                await _wait_for_end(future, self.limits.stop_timeout)
            if future.done() and not future.cancelled():
                future.exception()  # (its end, whatever it was: nobody reads it now)
            raise
        finally:
            child.calls.pop(call_id, None)

    async def _enter(self, alone: bool) -> None:
        if self._turn is None:
            self._turn = asyncio.Condition()
        async with self._turn:
            if alone:
                self._solo_waiting += 1
                try:
                    await self._turn.wait_for(lambda: not self._solo and self._active == 0)
                except BaseException:  # cancelled while waiting: shared calls may go on
                    self._turn.notify_all()
                    raise
                finally:
                    self._solo_waiting -= 1
                self._solo = True
            else:
                await self._turn.wait_for(lambda: not self._solo and not self._solo_waiting)
                self._active += 1

    async def _leave(self, alone: bool) -> None:
        assert self._turn is not None
        async with self._turn:
            if alone and self._solo:
                self._solo = False
            elif not alone:
                self._active -= 1
            self._turn.notify_all()

    # ------------------------------------------------------------------ the process

    async def _ensure_child(self) -> _Child:
        if self._closed:
            raise RuntimeError("the worker process pool is closed")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._child is not None and not self._child.dead:
                return self._child
            if self._child is not None:
                self.restarts += 1
            self._child = await asyncio.to_thread(self._spawn)
            loop = asyncio.get_running_loop()
            threading.Thread(
                target=self._read, args=(self._child, loop), name="carn-worker-outbox", daemon=True
            ).start()
            return self._child

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child_end, self._factory, self.limits),
            name="carn-stream-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        if not parent_end.poll(self.limits.start_timeout):
            process.kill()
            raise RuntimeError("the worker process did not start in time")
        try:
            kind, _, detail = parent_end.recv()
        except (EOFError, OSError):
            process.join(1)
            raise RuntimeError(
                f"the worker process {_how_it_ended(process.exitcode)} while starting"
            ) from None
        if kind != "ready":
            process.join(self.limits.stop_timeout)
            if isinstance(detail, Exception):
                raise detail  # what stopped it (missing weights, a device that is not there)
            raise RuntimeError(f"the worker process could not start: {detail}")
        if self._closed:  # closed while it started (the service's start-up failed): quietly
            self._stop(_Child(process, parent_end))
            raise RuntimeError("the worker process pool is closed")
        self.device = detail
        log.info("worker process %d ready on %s", process.pid, detail)
        return _Child(process, parent_end)

    def _read(self, child: _Child, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while True:
                try:
                    message = child.conn.recv()
                except (EOFError, OSError):
                    break
                loop.call_soon_threadsafe(self._deliver, child, message)
            child.process.join(self.limits.stop_timeout)
            loop.call_soon_threadsafe(self._died, child, _how_it_ended(child.process.exitcode))
        except RuntimeError:  # the event loop has closed: nobody waits for this process
            pass

    def _deliver(self, child: _Child, message: tuple) -> None:
        kind, call_id, payload = message
        call = child.calls.get(call_id)
        if call is None or call.future.done():
            return
        if kind == "frame":
            call.heard = child.heard = time.monotonic()
            if call.on_frame is not None:
                call.on_frame(payload)
        elif kind == "done":
            call.future.set_result(payload)
        elif kind == "error":
            call.future.set_exception(payload)
        elif kind == "cancelled":
            call.future.cancel()

    def _died(self, child: _Child, how: str) -> None:
        child.dead = True
        if self._closed:
            how = "was stopped"
        elif child.stalled is not None:
            how = (f"was stopped: a segment made nothing for {self.limits.stall_timeout:g} s "
                   "(a stuck decoder)")  # fmt: skip
        elif child.killed:
            how = "was stopped (a cancelled call in it would not stop)"
        pending = {i: c for i, c in child.calls.items() if not c.future.done()}
        if pending:
            log.error("worker process %s with %d call(s) in flight", how, len(pending))
        for call_id, call in pending.items():  # (alone: the process died of it)
            if child.stalled is not None:
                alone = call_id == child.stalled
            else:
                alone = len(pending) == 1 and not child.killed
            call.future.set_exception(_Crash(how, alone=alone))

    def _stop(self, child: _Child) -> None:
        with contextlib.suppress(OSError, ValueError):
            child.conn.send(("stop", None, None))
        child.process.join(self.limits.stop_timeout)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(1)


#: How many pieces of work that crashed the worker process alone are remembered.
MAX_CRASHERS_KEPT = 256


def _work_key(kind: str, payload: Any) -> tuple:
    """What identifies a call's work across attempts: a segment of an input (else the call's
    kind and payload's text)."""
    if isinstance(payload, SegmentTask):
        return kind, str(payload.source), payload.segment.index, str(payload.target)
    return kind, repr(payload)


async def _wait_for_end(future: asyncio.Future, seconds: float) -> None:
    """Wait up to ``seconds`` for ``future`` to end, however often the waiter is cancelled
    meanwhile (a shutdown cancelling again)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not future.done() and loop.time() < deadline:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future}, timeout=max(deadline - loop.time(), 0))


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"crashed ({name})"
    return f"exited with code {exitcode}"
