"""The one call for a lent GPU, and the same checks at small sizes on a CPU.

    python bench/gpu_check.py [--device cuda|cpu] [--out DIR] [--sections a,b,...]

Sections, in order (each writes its rows as it goes; a failing section is reported and the
next one runs):
- env: the device, its driver, torch and CUDA versions, the CPU;
- correctness: the device against the CPU's fp32 per precision, CUDA graphs off and on (and a
  replay), tiles against whole frames, the out-of-memory fallback (split, then tiles), input
  sizes changing from batch to batch;
- model: model-only frames per second per precision, size, batch and graphs, with memory; the
  eager backend's forms (the network as trained, its deployed form from ``model/deployed.py``
  with and without the cascades' concatenations), in the first precision;
- pipeline: end to end from a file to an MP4 at 1080p out (decode, infer, encode), with the
  encoder threads the pipeline chooses and a sweep of other counts;
- service: ``carn-stream serve`` on the device: HLS jobs at x2 and x4 on a real clip (every
  frame, audio kept), four jobs at once, a video served on request (time to the first x2
  segment, real-time factor), the batch size the service's executors really used (the worker
  process, and in-process);
- live: the WebRTC client of the test suite against the service: fps and latency at x2;
- title: a title's compression-aware model: its stored copy, its training at the default
  budget (time against a minute), and the held-out gain over the generic model as training
  goes on (against +1.0 dB). If the whole run does not fit one call, ``--sections title``
  runs it alone.
The last output is the summary table (also ``summary.md`` under ``--out``), so a run cut
short still says what it measured. Targets apply on CUDA; a CPU run reports its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import DATA, cpu_name, make_clip, official_model, real_frames  # noqa: E402

from carn_stream.pipeline.colour import ColourSpec  # noqa: E402
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker  # noqa: E402
from carn_stream.pipeline.execution.executors import InProcessExecutor  # noqa: E402
from carn_stream.pipeline.execution.segmented import run_whole  # noqa: E402
from carn_stream.pipeline.run import PipelineOptions, codec_threads  # noqa: E402


@dataclass
class Row:
    section: str
    what: str
    value: str
    target: str = ""
    ok: bool | None = None  #: None: no target here

    def line(self) -> str:
        mark = {True: "yes", False: "NO", None: ""}[self.ok]
        return f"| {self.section} | {self.what} | {self.value} | {self.target} | {mark} |"


@dataclass(frozen=True)
class Sizes:
    """What a run measures: a GPU's sizes, or a CPU's small ones."""

    check: tuple[int, int, int]  #: correctness frames: width, height, scale
    models: tuple[tuple[int, int, int], ...]  #: model-only cases
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    repeats: int
    e2e: tuple[int, int, int, int]  #: end to end: width, height, scale, frames
    threads: tuple[int, ...]  #: encoder threads tried end to end
    job: tuple[int, int]  #: the jobs' clip size (x2 and x4 of it)
    job_frames: int
    vod: tuple[int, int]  #: the video served on request (x2 of it)
    live: tuple[int, int]  #: the live camera (x2 of it)
    live_seconds: float
    title: tuple[int, int, int]  #: a title's source: width, height, frames it trains on
    title_steps: tuple[int, ...]  #: training steps at which its held-out gain is measured


GPU = Sizes(
    check=(160, 90, 4), models=((480, 270, 4), (960, 540, 2)), batches=(1, 8),
    precisions=("fp16", "bf16"), repeats=30, e2e=(480, 270, 4, 132), threads=(2, 4, 8, 16),
    job=(480, 270), job_frames=132, vod=(640, 360), live=(640, 360), live_seconds=10.0,
    title=(1280, 720, 48), title_steps=(150, 600, 1500, 3000),
)  # fmt: skip
CPU = Sizes(
    check=(160, 96, 2), models=((64, 36, 2),), batches=(1, 2), precisions=("fp32",), repeats=3,
    e2e=(64, 36, 2, 12), threads=(1, 2), job=(64, 36), job_frames=25, vod=(64, 36),
    live=(64, 48), live_seconds=3.0, title=(192, 108, 12), title_steps=(2, 4),
)  # fmt: skip
#: Targets on a GPU (the service's promise there).
TARGETS = {
    "model 480x270 x4 fp16": 500.0,  # fps, model only, batched
    "model 960x540 x2 fp16": 200.0,
    "e2e 1080p": 120.0,  # fps, decode + infer + encode
    "live fps": 30.0,
    "live added latency ms": 100.0,  # at most
    "vod rtf": 0.2,  # at most
    "title seconds": 60.0,  # at most: a 720p title's copy and model at the default budget
    "title gain dB": 1.0,  # at least: over the generic model, held-out frames of the copy
}


class Report:
    """Rows as they come: printed, appended to ``rows.jsonl``; the summary at the end."""

    def __init__(self, out: Path) -> None:
        self.out, self.rows = out, []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.section}: {row.what} = {row.value}"
              + (f" (target {row.target}: {'met' if row.ok else 'MISSED'})" if row.target else ""),
              flush=True)  # fmt: skip
        with open(self.out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row.__dict__) + "\n")

    def summary(self) -> str:
        lines = ["| section | what | measured | target | met |", "|---|---|---|---|---|"]
        lines += [row.line() for row in self.rows]
        table = "\n".join(lines)
        (self.out / "summary.md").write_text(table + "\n")
        return table


def at_least(value: float, target: float) -> tuple[str, bool]:
    return f">= {target:g}", value >= target


def at_most(value: float, target: float) -> tuple[str, bool]:
    return f"<= {target:g}", value <= target


# --------------------------------------------------------------------------- env


def section_env(report: Report, device: torch.device, sizes: Sizes) -> None:
    report.add(Row("env", "cpu", f"{cpu_name()}, {os.cpu_count()} threads"))
    report.add(Row("env", "python / torch", f"{platform.python_version()} / {torch.__version__}"))
    if device.type == "cuda":
        report.add(Row("env", "gpu", torch.cuda.get_device_name(device)))
        report.add(Row("env", "cuda", str(torch.version.cuda)))
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            ).stdout.strip()  # fmt: skip
            report.add(Row("env", "driver, memory", smi))


# --------------------------------------------------------------------------- correctness


def _planes(width: int, height: int, count: int) -> tuple[list[np.ndarray], ColourSpec]:
    return [np.stack(real_frames(width, height, count))], ColourSpec("rgb")


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b, strict=True))


def _psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    y1, y2 = a[0].astype(np.float64), b[0].astype(np.float64)
    mse = float(np.mean((y1 - y2) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


class _TightMemory(torch.nn.Module):
    """A CPU stand-in for a device that runs out of memory above ``pixels`` per call."""

    def __init__(self, inner: torch.nn.Module, pixels: int) -> None:
        super().__init__()
        self.inner, self.pixels, self.scales = inner, pixels, inner.scales

    def forward(self, x, scale):
        if x.shape[0] * x.shape[-1] * x.shape[-2] > self.pixels:
            raise RuntimeError("out of memory (a small device, on purpose)")
        return self.inner(x, scale)


def section_correctness(report: Report, device: torch.device, sizes: Sizes) -> None:
    width, height, scale = sizes.check
    model = official_model()
    planes, spec = _planes(width, height, 4)
    out = ColourSpec("yuv")
    reference = Engine(model, EngineConfig(device="cpu", precision="fp32")).upscale(
        planes, spec, scale, out
    )
    cuda = device.type == "cuda"
    precisions = ("fp32", "fp16", "bf16") if cuda else ("fp32",)
    for precision in precisions:
        for graphs in (False, True) if cuda else (False,):
            engine = Engine(model, EngineConfig(device=str(device), precision=precision,
                                                cuda_graphs=graphs))  # fmt: skip
            first = engine.upscale(planes, spec, scale, out)
            again = engine.upscale(planes, spec, scale, out)  # a graph's replay when on
            psnr = _psnr(reference, first)
            floor = 50.0 if precision != "fp32" else 60.0
            target, ok = at_least(psnr, floor)
            what = f"{precision} graphs {'on' if graphs else 'off'}: luma PSNR vs cpu fp32 dB"
            report.add(Row("correctness", what, f"{psnr:.1f}", target, ok))
            same = _max_diff(first, again) == 0
            report.add(Row("correctness", f"{precision} graphs {'on' if graphs else 'off'}: "
                           "second call identical", str(same), "True", same))  # fmt: skip
    whole = Engine(model, EngineConfig(device=str(device), precision="fp32")).upscale(
        planes, spec, scale, out
    )
    tiled = Engine(model, EngineConfig(device=str(device), precision="fp32", tile=32)).upscale(
        planes, spec, scale, out
    )
    diff = _max_diff(whole, tiled)
    report.add(Row("correctness", "tiles of 32 vs whole frames: max code difference", str(diff),
                   "<= 1", diff <= 1))  # fmt: skip
    _check_out_of_memory(report, device, model, planes, spec, scale, out, whole)
    _check_shape_changes(report, device, model, sizes)


def _check_out_of_memory(report, device, model, planes, spec, scale, out, whole) -> None:
    if device.type == "cuda":
        engine = Engine(model, EngineConfig(device=str(device), precision="fp32",
                                            cuda_graphs=False))  # fmt: skip
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        used = torch.cuda.memory_allocated(device)
        # room for the model and a quarter of one frame's activations: the batch must split,
        # then tile
        need = 4 * 64 * planes[0].shape[1] * planes[0].shape[2] * scale * scale
        torch.cuda.set_per_process_memory_fraction(min(1.0, (used + need // 4) / total), device)
        try:
            got = engine.upscale(planes, spec, scale, out)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            torch.cuda.empty_cache()
    else:
        pixels = planes[0].shape[1] * planes[0].shape[2] // 2  # half a frame: split, then tile
        engine = Engine(_TightMemory(model, pixels), EngineConfig(device="cpu", precision="fp32"))
        got = engine.upscale(planes, spec, scale, out)
    diff = _max_diff(whole, got)
    report.add(Row("correctness", "out of memory: retries, then max code difference",
                   f"{engine.oom_retries}, {diff}", "> 0, <= 1",
                   engine.oom_retries > 0 and diff <= 1))  # fmt: skip


def _check_shape_changes(report, device, model, sizes: Sizes) -> None:
    width, height, scale = sizes.check
    cuda = device.type == "cuda"
    engine = Engine(model, EngineConfig(device=str(device), precision="fp16" if cuda else "fp32",
                                        cuda_graphs=cuda))  # fmt: skip
    fresh = Engine(model, EngineConfig(device=str(device), precision="fp16" if cuda else "fp32",
                                       cuda_graphs=False))  # fmt: skip
    out = ColourSpec("yuv")
    worst = 0
    for w, h, n in ((width, height, 2), (width // 2 * 2 + 8, height // 2 * 2 + 6, 1),
                    (width, height, 2), (width, height, 3)):  # fmt: skip
        planes, spec = _planes(w, h, n)
        worst = max(worst, _max_diff(engine.upscale(planes, spec, scale, out),
                                     fresh.upscale(planes, spec, scale, out)))  # fmt: skip
    report.add(Row("correctness", "sizes and batches changing: max difference to a plain engine",
                   str(worst), "<= 1", worst <= 1))  # fmt: skip


# --------------------------------------------------------------------------- model only


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up: first-use choices, graph capture
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def section_model(report: Report, device: torch.device, sizes: Sizes) -> None:
    model = official_model()
    cuda = device.type == "cuda"
    for width, height, scale in sizes.models:
        for precision in sizes.precisions:
            for graphs in (False, True) if cuda else (False,):
                config = EngineConfig(device=str(device), precision=precision, cuda_graphs=graphs)
                engine = Engine(model, config)
                for batch in sizes.batches:
                    planes, spec = _planes(width, height, batch)
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    times = _time(lambda e=engine, p=planes, s=spec, k=scale: e.upscale(p, s, k),
                                  sizes.repeats, device)  # fmt: skip
                    fps = batch / statistics.median(times)
                    memory = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
                    what = (f"model {width}x{height} x{scale} {precision} batch {batch} graphs "
                            f"{'on' if graphs else 'off'}: fps")  # fmt: skip
                    key = f"model {width}x{height} x{scale} {precision}"
                    target, ok = ("", None)
                    if cuda and key in TARGETS and batch > 1 and graphs:
                        target, ok = at_least(fps, TARGETS[key])
                    value = f"{fps:.1f}" + (f" ({memory:.2f} GiB peak)" if cuda else "")
                    report.add(Row("model", what, value, target, ok))


def section_deployed(report: Report, device: torch.device, sizes: Sizes) -> None:
    """The engine's eager backend in each form (``pipeline/engine/backends.py``: the network
    as trained, the deployed form of ``model/deployed.py``, the deployed form with the
    cascades' concatenations kept), channels-last as the engine runs CUDA, in the first
    precision, one batch: which form the CUDA path should take (on the AMX Xeon's CPU the
    deployed form ran fp32 1.05-1.15x the network, and neither deployed form gained in bf16:
    docs/PERFORMANCE.md)."""
    from carn_stream.pipeline.engine.backends import FORMS, TorchBackend

    model = official_model()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(sizes.precisions[0], torch.float32)
    batch = sizes.batches[-1]
    for width, height, scale in sizes.models:
        forms = {form: TorchBackend(model, device, dtype, True, form) for form in FORMS}
        x = torch.rand(batch, 3, height, width, device=device)
        with torch.inference_mode():
            want = forms["network"](x, scale).float()
            errors = {f: (run(x, scale).float() - want).abs().max().item()
                      for f, run in forms.items()}  # fmt: skip
            times = {f: _time(partial(run, x, scale), sizes.repeats, device)
                     for f, run in forms.items()}  # fmt: skip
        fps = {form: batch / statistics.median(runs) for form, runs in times.items()}
        what = f"eager forms {width}x{height} x{scale} {sizes.precisions[0]} batch {batch}"
        value = " / ".join(f"{fps[form]:.1f}" for form in FORMS)
        report.add(Row("model", f"{what}: fps {' / '.join(FORMS)}", value, "", None))
        error = max(errors.values())
        report.add(Row("model", f"{what}: largest difference", f"{error:.2g}", "at most 0.02",
                       error <= 0.02))  # fmt: skip


# --------------------------------------------------------------------------- pipeline


def section_pipeline(report: Report, device: torch.device, sizes: Sizes, tmp: Path) -> None:
    width, height, scale, frames = sizes.e2e
    clip = make_clip(DATA / "video" / "bigbuckbunny.mp4", width, height, frames,
                     tmp / f"e2e-{width}x{height}.mp4")  # fmt: skip
    precision = "fp16" if device.type == "cuda" else "fp32"
    worker = InferenceWorker(Engine(official_model(), EngineConfig(str(device), precision)))
    batch = 8 if device.type == "cuda" else 1
    chosen = codec_threads(device.type)
    out_w, out_h = width * scale, height * scale
    report.add(Row("pipeline", "encoder threads the pipeline chooses", f"{chosen} "
                   f"({os.cpu_count()} CPU threads, 2 segments in flight)"))  # fmt: skip
    try:
        best = 0.0
        for threads in dict.fromkeys((None, *sizes.threads)):
            options = PipelineOptions(scale=scale, batch_size=batch, codec_threads=threads)
            executor = InProcessExecutor(worker, slots=1)
            run_whole_sync = lambda o=options, e=executor: asyncio.run(  # noqa: E731
                run_whole(clip, tmp / "e2e.mp4", o, e, overwrite=True)
            )
            run_whole_sync()  # warm: first-use choices per size
            start = time.perf_counter()
            made = run_whole_sync()
            fps = made / (time.perf_counter() - start)
            best = max(best, fps)
            label = "chosen" if threads is None else str(threads)
            what = f"e2e {width}x{height} x{scale} -> {out_w}x{out_h} {precision}, {label} threads"
            target, ok = ("", None)
            if device.type == "cuda" and threads is None and out_h >= 1080:
                target, ok = at_least(fps, TARGETS["e2e 1080p"])
            report.add(Row("pipeline", f"{what}: fps", f"{fps:.1f}", target, ok))
    finally:
        worker.close()


# --------------------------------------------------------------------------- the service


def _clip_with_audio(width: int, height: int, frames: int, dest: Path) -> Path:
    from tests.media import decode_rgb, downscale_frames, write_clip

    video = DATA / "video" / "bigbuckbunny.mp4"
    pictures = downscale_frames(decode_rgb(video, frames), (width, height))
    return write_clip(dest, pictures, audio_from=video, audio_seconds=frames / 25,
                      options={"crf": "16", "preset": "veryfast", "g": "25"})  # fmt: skip


def _server(device: torch.device, data: Path, **env: str):
    from tests.service import ServerProcess

    settings = {
        "CARN_STREAM_DEVICE": device.type,
        "CARN_STREAM_PRECISION": "fp16" if device.type == "cuda" else "fp32",
        "CARN_STREAM_ALLOW_LOCAL_FILES": "1",
        "CARN_STREAM_LIVE_ICE_HOSTS": "127.0.0.1",
        "CARN_STREAM_MIN_FREE_DISK_BYTES": "0",
        **env,
    }
    return ServerProcess(data, **settings).start(timeout=240)


def _batch_sizes(server) -> float:
    """The mean inference batch size the service has reported so far."""
    from prometheus_client.parser import text_string_to_metric_families

    text = server.call("GET", "/metrics").body.decode()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "carn_stream_inference_batch_frames_sum":
                total += sample.value
            elif sample.name == "carn_stream_inference_batch_frames_count":
                count += sample.value
    return total / count if count else 0.0


def _job(server, source: Path, scale: int, fmt: str = "hls") -> dict:
    response = server.call("POST", "/jobs", {"url": source.as_uri(), "scale": scale,
                                             "format": fmt})  # fmt: skip
    if response.status != 201:
        raise RuntimeError(f"job refused: {response.status} {response.body[:300]!r}")
    return response.json()


def _segments_have_audio(server, job: dict) -> bool:
    import av

    playlist = server.call("GET", job["links"]["playlist"]).body.decode()
    names = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "first.ts"
        path.write_bytes(server.call("GET", f"/jobs/{job['id']}/hls/{names[0]}").body)
        with av.open(str(path), format="mpegts") as container:
            return bool(container.streams.audio)


def section_service(report: Report, device: torch.device, sizes: Sizes, tmp: Path) -> None:
    width, height = sizes.job
    clip = _clip_with_audio(width, height, sizes.job_frames, tmp / "job.mp4")
    server = _server(device, tmp / "service")
    try:
        for scale in (2, 4):
            start = time.monotonic()
            job = _job(server, clip, scale)
            done = server.wait_job(job["id"], ("succeeded", "failed"), timeout=300)
            seconds = time.monotonic() - start
            every = done["progress"]["frames_done"] == done["progress"]["frames_total"]
            every = every and done["progress"]["frames_total"] == sizes.job_frames
            audio = done["state"] == "succeeded" and _segments_have_audio(server, done)
            what = f"HLS job {width}x{height} x{scale}"
            report.add(Row("service", f"{what}: state, fps", f"{done['state']}, "
                           f"{sizes.job_frames / seconds:.1f}"))  # fmt: skip
            report.add(Row("service", f"{what}: every frame, audio kept", f"{every}, {audio}",
                           "True, True", every and audio))  # fmt: skip
        start = time.monotonic()
        jobs = [_job(server, clip, 2) for _ in range(4)]
        states = [server.wait_job(j["id"], ("succeeded", "failed"), 600)["state"] for j in jobs]
        seconds = time.monotonic() - start
        report.add(Row("service", "4 jobs at once x2: states, total fps",
                       f"{','.join(sorted(set(states)))}, {4 * sizes.job_frames / seconds:.1f}"))
        report.add(Row("service", "mean batch size, worker process executor",
                       f"{_batch_sizes(server):.2f}"))  # fmt: skip
        _videos(report, server, device, sizes, tmp)
    finally:
        server.stop()
    inprocess = _server(device, tmp / "service-inprocess", CARN_STREAM_EXECUTOR="inprocess")
    try:
        job = _job(inprocess, clip, 2)
        inprocess.wait_job(job["id"], ("succeeded", "failed"), 300)
        report.add(Row("service", "mean batch size, in-process executor",
                       f"{_batch_sizes(inprocess):.2f}"))  # fmt: skip
    finally:
        inprocess.stop()


def _videos(report: Report, server, device: torch.device, sizes: Sizes, tmp: Path) -> None:
    width, height = sizes.vod
    clip = _clip_with_audio(width, height, 50, tmp / "vod.mp4")
    response = server.call("POST", "/videos", {"url": clip.as_uri(), "scales": [2]})
    if response.status != 201:
        raise RuntimeError(f"ingest refused: {response.status} {response.body[:300]!r}")
    video = response.json()
    segment = video["segments"][0]
    start = time.monotonic()
    got = server.call("GET", f"/videos/{video['id']}/x2/segment_00000.ts", timeout=300)
    seconds = time.monotonic() - start
    rtf = seconds / segment["duration"]
    target, ok = at_most(rtf, TARGETS["vod rtf"]) if device.type == "cuda" else ("", None)
    report.add(Row("service", f"video {width}x{height} x2: first segment's first byte, s",
                   f"{seconds:.2f} ({got.status}, {len(got.body)} bytes)"))  # fmt: skip
    report.add(Row("service", f"video {width}x{height} x2: real-time factor", f"{rtf:.3f}",
                   target, ok))  # fmt: skip


# --------------------------------------------------------------------------- live


LIVE_FPS = 30


def section_live(report: Report, device: torch.device, sizes: Sizes, tmp: Path) -> None:
    import av
    from aiortc import VideoStreamTrack

    from carn_stream.server.live import restrict_ice_hosts
    from tests.test_live import connect

    class Camera(VideoStreamTrack):
        """Real frames at 30 fps, numbered by pts (the test suite's camera runs at 15)."""

        def __init__(self, frames: list[np.ndarray]) -> None:
            super().__init__()
            self.frames, self.index, self.sent_at = frames, 0, {}

        async def recv(self) -> av.VideoFrame:
            await asyncio.sleep(1 / LIVE_FPS)
            rgb = self.frames[self.index % len(self.frames)]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = self.index * (90000 // LIVE_FPS), Fraction(1, 90000)
            self.sent_at[frame.pts] = time.monotonic()
            self.index += 1
            return frame

    width, height = sizes.live
    frames = real_frames(width, height, 16)
    server = _server(device, tmp / "live")
    restrict_ice_hosts(("127.0.0.1",))

    async def run() -> tuple[list[float], int, float]:
        track = Camera(frames)
        pc, _, received = await connect(server.port, track)
        latencies: list[float] = []
        count, first = 0, None
        deadline = time.monotonic() + sizes.live_seconds + 60
        while time.monotonic() < deadline:
            try:
                frame, at = await asyncio.wait_for(received.get(), 30)
            except TimeoutError:
                break
            if (frame.width, frame.height) == (width, height):
                continue  # the original, mirrored for the page's wipe
            first = first or at
            count += 1
            sent = track.sent_at.get(frame.pts)
            if sent is not None:
                latencies.append(at - sent)
            if at - first >= sizes.live_seconds:
                break
        await pc.close()
        return latencies, count, (time.monotonic() - first) if first else 0.0

    try:
        latencies, count, seconds = asyncio.run(run())
    finally:
        server.stop()
    fps = count / seconds if seconds else 0.0
    latency = 1000 * statistics.median(latencies) if latencies else float("inf")
    cuda = device.type == "cuda"
    what = f"live {width}x{height} x2 (camera {LIVE_FPS} fps)"
    target, ok = at_least(fps, TARGETS["live fps"]) if cuda else ("", None)
    report.add(Row("live", f"{what}: fps received", f"{fps:.1f}", target, ok))
    target, ok = at_most(latency, TARGETS["live added latency ms"]) if cuda else ("", None)
    report.add(Row("live", f"{what}: median latency ms", f"{latency:.0f}", target, ok))


# --------------------------------------------------------------------------- a title's model


def section_title(report: Report, device: torch.device, sizes: Sizes, tmp: Path) -> None:
    """A title's compression-aware model (docs/MODEL.md): its x2 copy at the stored CRF, its
    model trained at the default budget (an ingest's copy and training; the report is not
    timed here), then trained on to see how the held-out gain over the generic model grows."""
    from carn_stream.model.recipe import TITLE_DEFAULTS, TITLE_STORE_CRF, TrainConfig
    from carn_stream.pipeline.media.delivery import encode_copy
    from carn_stream.pipeline.title_model import train_title_model

    width, height, frames = sizes.title
    bunny = DATA / "video" / "bigbuckbunny.mp4"
    if (width, height) == (1280, 720):
        source = bunny
    else:
        source = make_clip(bunny, width, height, 2 * frames, tmp / "title-source.mp4")
    what = f"title {width}x{height} x2, x264 CRF {TITLE_STORE_CRF} copy"
    began = time.perf_counter()
    copy = encode_copy(source, tmp / "title-copy.mp4", scale=2, crf=TITLE_STORE_CRF,
                       preset="veryfast")  # fmt: skip
    copy_seconds = time.perf_counter() - began
    report.add(Row("title", f"{what}: seconds, kbps",
                   f"{copy_seconds:.1f}, {copy.bitrate / 1000:.0f}"))  # fmt: skip
    run_dir = tmp / "title-run"
    cuda, generic = device.type == "cuda", None
    for k, steps in enumerate(sizes.title_steps):  # each run resumes the one before
        config = TrainConfig(**{**TITLE_DEFAULTS, "scales": (2,), "steps": steps})
        # (from the official weights, as the run began: its checkpoint holds what it learned)
        trained = train_title_model(official_model(), source, copy.path, 2, tmp / "title.pth",
                                    config, run_dir, frames=frames, device=device)  # fmt: skip
        if generic is None:  # later runs start from the model trained so far
            generic = trained.generic_psnr
            total = copy_seconds + trained.read_seconds + trained.train_seconds
            target, ok = at_most(total, TARGETS["title seconds"]) if cuda else ("", None)
            report.add(Row("title", f"{what}: copy + {frames} frames read + {steps} steps, "
                           f"seconds ({trained.train_seconds:.1f} training)", f"{total:.1f}",
                           target, ok))  # fmt: skip
        gain, last = trained.tuned_psnr - generic, k == len(sizes.title_steps) - 1
        target, ok = at_least(gain, TARGETS["title gain dB"]) if cuda and last else ("", None)
        report.add(Row("title", f"{what}: held-out gain over the generic model after {steps} "
                       f"steps, dB ({generic:.2f} -> {trained.tuned_psnr:.2f})", f"{gain:+.3f}",
                       target, ok))  # fmt: skip


# --------------------------------------------------------------------------- main

SECTIONS: dict[str, Callable[[Report, torch.device, Sizes, Path], None]] = {
    "env": lambda report, device, sizes, tmp: section_env(report, device, sizes),
    "correctness": lambda report, device, sizes, tmp: section_correctness(report, device, sizes),
    "model": lambda report, device, sizes, tmp: (
        section_model(report, device, sizes),
        section_deployed(report, device, sizes),
    ),
    "pipeline": section_pipeline,
    "service": section_service,
    "live": section_live,
    "title": section_title,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --device cpu", file=sys.stderr)
        return 1
    sizes = GPU if device.type == "cuda" else CPU
    report = Report(args.out)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        for name in wanted:
            started = time.monotonic()
            print(f"== {name}", flush=True)
            try:
                SECTIONS[name](report, device, sizes, tmp)
            except Exception as exc:
                failed.append(name)
                traceback.print_exc()
                report.add(Row(name, "section failed", f"{type(exc).__name__}: {exc}"[:200],
                               "", False))  # fmt: skip
            report.add(Row(name, "seconds", f"{time.monotonic() - started:.1f}"))
    print()
    print(report.summary())
    missed = [r for r in report.rows if r.ok is False]
    return 1 if failed or (missed and device.type == "cpu") else 0


if __name__ == "__main__":
    sys.exit(main())
