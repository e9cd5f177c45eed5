"""The executor interface: what callers read of any executor, and the batch size it implies."""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing
import time

import pytest
import torch

from carn_stream.pipeline.execution.choice import ExecutorChoice, open_executor
from carn_stream.pipeline.execution.executors import (
    InProcessExecutor,
    SegmentExecutor,
    batch_size,
)
from carn_stream.pipeline.execution.worker_process import ProcessExecutor
from carn_stream.server.workers import executor_choice
from carn_stream.settings import Settings


class _StandInWorker:
    """No GPU here: a worker that reports a CUDA device (all the executor reads of it)."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)


def test_an_in_process_executor_on_cuda_batches_as_every_executor_does():
    # Before the interface declared ``device``, the in-process executor had none, and jobs on
    # CUDA with CARN_STREAM_EXECUTOR=inprocess ran at batch size 1.
    executor = InProcessExecutor(_StandInWorker("cuda:0"))  # type: ignore[arg-type]
    assert executor.device == "cuda:0"
    assert batch_size(0, executor) == 8  # the default on CUDA
    assert batch_size(3, executor) == 3  # a configured size wins
    cpu = InProcessExecutor(_StandInWorker("cpu"))  # type: ignore[arg-type]
    assert batch_size(0, cpu) == 1


def _members(cls) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls)} | set(
        inspect.signature(cls.__init__).parameters
    )


@pytest.mark.parametrize("name", ["device", "slots", "engines", "start", "plan", "run", "remux",
                                  "close"])  # fmt: skip
def test_every_executor_has_what_the_interface_declares(name):
    declared = {n for n, _ in inspect.getmembers(SegmentExecutor) if not n.startswith("_")}
    assert name in declared
    ray = pytest.importorskip("carn_stream.pipeline.execution.ray_executor")
    for cls in (InProcessExecutor, ProcessExecutor, ray.RayExecutor):
        instance_attrs = inspect.getsource(cls.__init__)
        assert name in _members(cls) or f"self.{name}" in instance_attrs, (cls, name)


def test_the_service_and_the_command_line_choose_the_executor_in_one_place():
    assert executor_choice(Settings()).kind == "process"
    assert executor_choice(Settings(executor="inprocess")).kind == "inprocess"
    ray = executor_choice(Settings(ray_address="127.0.0.1:6379", ray_segments_per_actor=3))
    assert ray.kind == "ray" and ray.ray.address == "127.0.0.1:6379"
    assert ray.ray.segments_per_actor == 3
    process = open_executor(ExecutorChoice("process", slots=3), lambda: None)  # not started
    assert isinstance(process, ProcessExecutor) and process.slots == 3 and process.device == ""


def test_a_worker_process_closed_while_it_starts_stops_without_a_word(caplog):
    from tests.slow_worker import slow_to_start_worker

    caplog.set_level(logging.INFO, logger="carn_stream.pipeline.execution.worker_process")

    async def start_then_close() -> None:
        executor = ProcessExecutor(slow_to_start_worker)
        starting = asyncio.create_task(executor.start())
        await asyncio.sleep(0.5)  # the process is loading its model
        starting.cancel()  # as the service's shutdown after a failed start-up does
        await executor.close()

    earlier = set(multiprocessing.active_children())  # (other tests' processes, still ending)
    asyncio.run(start_then_close())  # returns once the start has finished, in its thread

    def its_own() -> list:  # (processes other tests started may come and go meanwhile)
        return [p for p in multiprocessing.active_children()
                if p.name == "carn-stream-worker" and p not in earlier]  # fmt: skip

    deadline = time.monotonic() + 10
    while its_own() and time.monotonic() < deadline:
        time.sleep(0.1)
    # Was: the process went on to load, said "worker process ... ready" after the service's
    # error, and lived until the service exited.
    assert its_own() == []
    assert not [r for r in caplog.records if "ready" in r.getMessage()]


def test_a_call_cancelled_while_it_waits_to_run_alone_lets_the_others_in():
    # After a crash of the worker process, a call waits to run alone; new calls wait behind
    # it. Before, a cancellation there (a player's seek, a cancelled job) left it counted as
    # waiting forever, and no call entered the worker process again.
    from tests.slow_worker import slow_to_start_worker

    async def go() -> tuple[bool, bool]:
        executor = ProcessExecutor(slow_to_start_worker)  # nothing is started
        await executor._enter(False)  # a call runs in the shared way
        solo = asyncio.create_task(executor._enter(True))  # a re-run waits to run alone
        await asyncio.sleep(0.05)
        behind = asyncio.create_task(executor._enter(False))  # a new call waits behind it
        await asyncio.sleep(0.05)
        held_back = not behind.done()
        solo.cancel()
        await asyncio.wait({solo, behind}, timeout=2.0)
        let_in = behind.done() and not behind.cancelled()
        behind.cancel()
        return held_back, let_in

    held_back, let_in = asyncio.run(go())
    assert held_back  # a call waiting to run alone goes first
    assert let_in, "the cancelled call kept the worker process closed to others"
