"""Segments in process vs on Ray actors, on the same clip in one run.

Columns: end-to-end seconds of a segmented MP4 run (plan, segments, join) and the mean wall time
of one segment as the run sees it (remux, transfer, decode, upscale, encode, return, publish),
for
- in-process: segments on this process's engine (the baseline; run before and after the others
  and averaged, since the machine is shared);
- Ray, 1 worker node: one CPU actor on a local cluster (head + one node, all on 127.0.0.1);
- Ray, 2 worker nodes: a second node added (on one machine the nodes share its cores).
Per-segment times come from a serial pass (one segment at a time) so that they are latencies;
end-to-end runs keep the executors' usual segments in flight. Also printed: the head's remux
time and bytes per segment and the encoded bytes that come back, which calibrate
bench/simulate_scale.py.

Run inside a loopback-only network namespace (Ray must not reach any other address):
    unshare -rn bash -c 'ip link set lo up && python bench/scale.py'
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import DATA, cpu_name, emit_table  # noqa: E402
from carn_stream.loading import start_worker  # noqa: E402
from carn_stream.pipeline.execution.executors import InProcessExecutor, PlanRequest  # noqa: E402
from carn_stream.pipeline.execution.segment_transport import cut_segment  # noqa: E402
from carn_stream.pipeline.execution.segmented import SegmentedRun  # noqa: E402
from carn_stream.pipeline.media.formats import FORMATS  # noqa: E402
from carn_stream.pipeline.run import PipelineOptions  # noqa: E402
from carn_stream.settings import Settings  # noqa: E402
from tests.media import decode_rgb, downscale_frames, write_clip  # noqa: E402


class Timed:
    """An executor wrapper that records each segment's wall time."""

    def __init__(self, inner) -> None:
        self.inner, self.times = inner, []

    @property
    def slots(self) -> int:
        return self.inner.slots

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def engines(self) -> dict[str, int]:
        return self.inner.engines

    async def start(self) -> None:
        await self.inner.start()

    async def plan(self, request):
        return await self.inner.plan(request)

    async def run(self, task, on_frame):
        started = time.monotonic()
        result = await self.inner.run(task, on_frame)
        self.times.append(time.monotonic() - started)
        return result


async def segmented(executor, clip: Path, out: Path, in_flight: int) -> float:
    plan = await executor.plan(PlanRequest(clip, 1.0))
    started = time.monotonic()
    run = SegmentedRun(
        source=clip, plan=plan, fmt=FORMATS["mp4"], output=out / "out.mp4", work_dir=out / "w",
        options=PipelineOptions(scale=2), executor=executor, in_flight=in_flight,
    )  # fmt: skip
    await run.execute()
    return time.monotonic() - started


async def measure(executor, clip: Path, tmp: Path) -> tuple[float, float]:
    """(end-to-end seconds, mean seconds per segment)."""
    timed = Timed(executor)
    await segmented(timed, clip, Path(tempfile.mkdtemp(dir=tmp)), in_flight=1)
    e2e = await segmented(executor, clip, Path(tempfile.mkdtemp(dir=tmp)), executor.slots)
    return e2e, statistics.mean(timed.times)


def make_clip(tmp: Path, seconds: int, size: tuple[int, int]) -> Path:
    source = DATA / "video" / "bigbuckbunny.mp4"
    frames = downscale_frames(decode_rgb(source, 25 * seconds), size)
    return write_clip(tmp / "clip.mp4", frames, audio_from=source, audio_seconds=seconds,
                      options={"crf": "18", "preset": "veryfast", "g": "25"})  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4, help="clip length (1 s segments)")
    parser.add_argument("--size", default="160x90", help="input size WxH (x2 output)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    if {name for _, name in socket.if_nameindex()} - {"lo"}:
        sys.exit("run inside a loopback-only namespace: unshare -rn (see the docstring)")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = str(ROOT)
    import ray
    from ray.cluster_utils import Cluster

    from carn_stream.pipeline.execution.choice import RayOptions
    from carn_stream.pipeline.execution.ray_executor import RayExecutor

    width, height = map(int, args.size.split("x"))
    settings = Settings(device="cpu", precision="fp32", allow_download=False,
                        weights=Path(os.environ.get("CARN_WEIGHTS",
                                                    DATA / "weights" / "carn_m.pth")))  # fmt: skip
    factory = functools.partial(start_worker, settings)
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        clip = make_clip(tmp, args.seconds, (width, height))

        async def local() -> tuple[float, float]:
            worker = start_worker(settings)
            try:
                return await measure(InProcessExecutor(worker), clip, tmp)
            finally:
                worker.close()

        before = asyncio.run(local())
        print(f"in-process (before): {before}", flush=True)
        node_args = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
        cluster = Cluster(initialize_head=True,
                          head_node_args={**node_args, "include_dashboard": False})  # fmt: skip
        try:
            cluster.add_node(resources={"carn_worker": 1}, **node_args)

            async def on_ray(nodes: int) -> tuple[float, float]:
                executor = RayExecutor(factory, RayOptions(address=cluster.address))
                await executor.start()
                try:
                    while len(executor.engines) < nodes:
                        await asyncio.sleep(0.2)
                    return await measure(executor, clip, tmp)
                finally:
                    await executor.close()

            rows["Ray, 1 worker node"] = asyncio.run(on_ray(1))
            print(f"Ray, 1 worker node: {rows['Ray, 1 worker node']}", flush=True)
            cluster.add_node(resources={"carn_worker": 1}, **node_args)
            rows["Ray, 2 worker nodes"] = asyncio.run(on_ray(2))
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
        after = asyncio.run(local())
        base = ((before[0] + after[0]) / 2, (before[1] + after[1]) / 2)
        rows = {"in-process (mean of before/after)": base, **rows}
        sizes = _segment_bytes(clip)

    lines = [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; CARN-M fp32 x2, "
        f"{args.seconds} s clip at {width}x{height}, 1 s segments",
        f"in-process before / after: {before[0]:.2f} / {after[0]:.2f} s end-to-end",
        f"head remux per segment: {sizes[0] * 1000:.1f} ms, {sizes[1] / 1e3:.0f} kB sent",
        "",
        "| executor | end-to-end s | vs in-process | per segment s | vs in-process |",
        "|---|---|---|---|---|",
    ]
    for name, (e2e, per) in rows.items():
        lines.append(
            f"| {name} | {e2e:.2f} | {e2e / base[0]:.3f} | {per:.3f} | {per / base[1]:.3f} |"
        )
    emit_table("\n".join(lines), args.markdown)
    return 0


def _segment_bytes(clip: Path) -> tuple[float, float]:
    """Mean seconds and bytes of the head's remux of one segment."""
    from carn_stream.pipeline.media.segments import plan_segments

    plan = plan_segments(clip, 1.0)
    times, sizes = [], []
    for segment in plan.segments:
        started = time.monotonic()
        data = cut_segment(clip, segment, plan.time_base, segment.index == len(plan.segments) - 1)
        times.append(time.monotonic() - started)
        sizes.append(len(data))
    return statistics.mean(times), statistics.mean(sizes)


if __name__ == "__main__":
    raise SystemExit(main())
