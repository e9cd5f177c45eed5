"""Segments on a real Ray cluster on this machine: a head and worker nodes as separate processes,
all bound to 127.0.0.1, inside the suite's loopback-only network namespace (scripts/test.sh).
Worker nodes advertise the custom resource ``carn_worker`` and run CPU engines."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from carn_stream.loading import start_worker
from carn_stream.pipeline.execution.executors import InProcessExecutor, PlanRequest, SegmentResult
from carn_stream.pipeline.execution.segmented import SegmentedRun
from carn_stream.pipeline.execution.slots import Slots
from carn_stream.pipeline.media.formats import FORMATS
from carn_stream.pipeline.run import PipelineOptions
from carn_stream.settings import Settings
from tests.helpers import REPO_ROOT
from tests.media import decode_rgb, downscale_frames, facts, write_clip
from tests.service import ServerProcess, media_server, wait_for
from tests.slow_worker import slow_worker

ray = pytest.importorskip("ray", reason="Ray is the optional extra '.[ray]' (in the test extra)")
from ray.cluster_utils import Cluster  # noqa: E402

from carn_stream.pipeline.execution.choice import RayOptions  # noqa: E402
from carn_stream.pipeline.execution.ray_executor import RayExecutor, node_name  # noqa: E402

pytestmark = pytest.mark.slow
RESOURCE = {"carn_worker": 1}
X264 = {"crf": "20", "preset": "veryfast", "g": "25"}  # a keyframe each second: 1 s segments


def _loopback_only() -> bool:
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head (no worker resource) and two worker nodes, shared by the module's tests."""
    if not _loopback_only():
        pytest.skip("the Ray tests run only in the suite's loopback-only namespace")
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "PYTHONPATH")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Actors on the worker nodes import the test workers (tests.slow_worker) too.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), saved["PYTHONPATH"]) if p
    )
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "node_ip_address": "127.0.0.1",
                "include_dashboard": False,
            },
        )
        for _ in range(2):
            add_worker_node(cluster)
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def add_worker_node(cluster: Cluster):
    return cluster.add_node(num_cpus=1, resources=RESOURCE, node_ip_address="127.0.0.1")


def worker_nodes(cluster: Cluster) -> dict[str, object]:
    """Live worker nodes by the name results give them."""
    return {node_name(n.node_id): n for n in cluster.worker_nodes}


@pytest.fixture(scope="module")
def clip(tmp_path_factory, data_dir: Path) -> Path:
    """4 s of Big Buck Bunny at 112x64 with its audio, a keyframe each second."""
    source = data_dir / "video" / "bigbuckbunny.mp4"
    frames = downscale_frames(decode_rgb(source, 100), (112, 64))
    path = tmp_path_factory.mktemp("ray") / "clip.mp4"
    return write_clip(path, frames, options=X264, audio_from=source, audio_seconds=4.0)


@dataclass
class Record:
    """What a run saw: results, retried segments, and segment starts per node."""

    results: dict[int, SegmentResult] = field(default_factory=dict)
    retried: list[int] = field(default_factory=list)
    started: list[str] = field(default_factory=list)


class Observer:
    def __init__(self, on_start: Callable[[str], None] | None = None) -> None:
        self.on_start = on_start
        self.record = Record()

    def started(self, node: str) -> None:
        self.record.started.append(node)
        if self.on_start is not None:
            self.on_start(node)

    def finished(self, node: str, seconds: float | None, lost: bool) -> None:
        pass


async def segmented(executor, clip: Path, out: Path, record: Record) -> Path:
    plan = await executor.plan(PlanRequest(clip, 1.0))
    run = SegmentedRun(
        source=clip, plan=plan, fmt=FORMATS["mp4"], output=out / "out.mp4",
        work_dir=out / "work", options=PipelineOptions(scale=2), executor=executor,
        in_flight=lambda: executor.slots, max_attempts=3,
        on_done=lambda r: record.results.__setitem__(r.index, r),
        on_retry=lambda index, reason: record.retried.append(index),
    )  # fmt: skip
    return await run.execute()


def ray_executor(cluster: Cluster, factory, observer=None, per_actor: int = 2) -> RayExecutor:
    options = RayOptions(address=cluster.address, segments_per_actor=per_actor, poll_seconds=0.5)
    return RayExecutor(factory, options, observer)


def test_shared_slots_follow_a_growing_pool_and_serve_jobs_in_turn():
    capacity = [1]
    order: list[str] = []

    async def go():
        slots = Slots(lambda: capacity[0], recheck=0.05)
        await slots.acquire()  # a long job holds the only slot
        waiters = [asyncio.create_task(slots.acquire()) for _ in range(2)]  # more of it
        await asyncio.sleep(0)
        short = asyncio.create_task(slots.acquire())  # a short job, submitted after them
        for name, task in (("long", waiters[0]), ("long", waiters[1]), ("short", short)):
            task.add_done_callback(lambda _, name=name: order.append(name))
        await asyncio.sleep(0.2)
        assert order == [] and slots.busy == 1
        capacity[0] = 3  # two actors joined: the first two waiters get in, in order
        await asyncio.sleep(0.2)
        assert order == ["long", "long"] and slots.busy == 3
        slots.release()
        await asyncio.sleep(0.1)
        assert order == ["long", "long", "short"]

    asyncio.run(go())


def test_segments_spread_over_both_nodes_and_match_the_in_process_output(
    cluster, clip, weights_path, tmp_path
):
    settings = Settings(weights=weights_path, device="cpu", precision="fp32", allow_download=False)
    factory = functools.partial(start_worker, settings)
    record = Record()

    async def on_ray():
        executor = ray_executor(cluster, factory)
        await executor.start()
        try:
            while len(executor.engines) < 2:  # both nodes' engines warm, so both get work
                await asyncio.sleep(0.2)
            return await segmented(executor, clip, tmp_path / "ray", record)
        finally:
            await executor.close()

    async def in_process():
        worker = start_worker(settings)
        try:
            return await segmented(InProcessExecutor(worker), clip, tmp_path / "local", Record())
        finally:
            worker.close()

    ray_out = asyncio.run(on_ray())
    local_out = asyncio.run(in_process())
    nodes = {r.node for r in record.results.values()}
    assert nodes == set(worker_nodes(cluster)), nodes  # 4 segments, 2 in flight per node
    assert record.retried == []
    got, want = decode_rgb(ray_out), decode_rgb(local_out)
    assert len(got) == len(want) == 100
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert facts(ray_out).pts == facts(local_out).pts == facts(clip).pts
    assert facts(ray_out).audio_packets == facts(clip).audio_packets


def test_the_service_runs_a_job_on_the_cluster_and_records_each_segments_node(
    cluster, clip, tmp_path
):
    while len(cluster.worker_nodes) < 2:
        add_worker_node(cluster)
    nodes = set(worker_nodes(cluster))
    server = ServerProcess(tmp_path / "data", CARN_STREAM_RAY_ADDRESS=cluster.address)
    try:
        server.start(timeout=240)
        wait_for(lambda: len(server.call("GET", "/readyz").json()["engines"]) == 2, 120,
                 "an engine on each worker node")  # fmt: skip
        with media_server(clip.parent) as base:
            job = server.call(
                "POST", "/jobs", {"url": f"{base}/{clip.name}", "format": "mp4"}
            ).json()
            done = server.wait_job(job["id"], ("succeeded", "failed"), timeout=300)
        assert done["state"] == "succeeded", done["error"]
        segments = server.call("GET", f"/jobs/{job['id']}/segments").json()
        assert {s["node"] for s in segments} == nodes  # 4 segments, 2 engines
        assert all(s["state"] == "done" and s["attempts"] == 1 for s in segments)
        output = tmp_path / "data" / "jobs" / job["id"] / "output.mp4"
        assert facts(output).pts == facts(clip).pts
        scrape = server.call("GET", "/metrics").body.decode()
        assert all(f'carn_stream_cluster_segment_seconds_count{{node="{n}"}}' in scrape
                   for n in nodes)  # fmt: skip
    finally:
        server.stop()


def test_a_node_killed_mid_run_loses_no_frame(cluster, clip, tmp_path):
    while len(cluster.worker_nodes) < 2:
        add_worker_node(cluster)
    nodes = worker_nodes(cluster)
    victim: list[str] = []

    async def go():
        loop = asyncio.get_running_loop()

        def on_start(node: str) -> None:
            if not victim:  # the first node to get a segment goes down while working on it
                victim.append(node)
                loop.run_in_executor(None, cluster.remove_node, nodes[node], False)

        observer = Observer(on_start)
        executor = ray_executor(cluster, slow_worker, observer)
        await executor.start()
        try:
            while len(executor.engines) < 2:
                await asyncio.sleep(0.2)
            out = await segmented(executor, clip, tmp_path, observer.record)
            return out, observer.record
        finally:
            await executor.close()

    out, record = asyncio.run(go())
    assert record.retried, "no segment was lost with the killed node"
    assert all(record.results[i].node != victim[0] for i in record.retried)
    assert {r.node for r in record.results.values()} == set(nodes) - set(victim)
    result, source = facts(out), facts(clip)
    assert result.pts == source.pts  # every frame once, with its timestamp
    assert result.audio_packets == source.audio_packets


def test_a_node_added_mid_run_receives_segments(cluster, clip, tmp_path):
    while len(cluster.worker_nodes) > 1:  # start from one worker node
        cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)
    if not cluster.worker_nodes:
        add_worker_node(cluster)
    before = set(worker_nodes(cluster))
    clip8 = write_clip(tmp_path / "clip8.mp4", decode_rgb(clip) * 2, options=X264)  # 8 segments
    first_start = threading.Event()

    async def go():
        observer = Observer(lambda node: first_start.set())
        executor = ray_executor(cluster, slow_worker, observer, per_actor=1)
        await executor.start()
        try:
            return await segmented(executor, clip8, tmp_path, observer.record), observer.record
        finally:
            await executor.close()

    # Ray starts nodes from the main thread only: the run goes on in another one meanwhile.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(asyncio.run, go())
        assert first_start.wait(timeout=120), "no segment started"
        add_worker_node(cluster)
        out, record = running.result(timeout=300)
    added = set(worker_nodes(cluster)) - before
    assert len(added) == 1
    assert added <= {r.node for r in record.results.values()}, record.results
    assert facts(out).pts == facts(clip8).pts
