"""One pipeline run: decode -> batch -> infer -> encode as an ``asyncio.TaskGroup``.

Stages are joined by bounded queues, so memory stays bounded however long the input is and a
slow stage slows its producers. Blocking PyAV work runs on one thread per stage (a container
is only ever touched by its own thread); model work runs on the shared
:class:`~carn_stream.pipeline.infer.InferenceWorker`. The first error or a cancellation stops
every stage, closes both containers and removes the partial output.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from carn_stream.pipeline.colour import output_spec
from carn_stream.pipeline.decode import AudioItem, VideoInfo, demux_frames, describe, open_input
from carn_stream.pipeline.encode import EncoderOptions, VideoSink
from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.frames import FrameBatch, SourceFrame, UpscaledFrame
from carn_stream.pipeline.infer import BatchResult, InferenceWorker, output_size

STAGES = ("decode", "wait", "inference", "encode")  #: defined in docs/SERVICE.md, Metrics
_END = object()


@dataclass(frozen=True)
class PipelineOptions:
    scale: int
    fmt: str = "mp4"  #: "mp4" (a file) or "hls" (a folder with index.m3u8)
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    batch_size: int = 4
    max_wait: float = 0.05  #: seconds a partial batch waits for more frames
    queue_frames: int = 16  #: decoded frames buffered ahead of batching
    in_flight_batches: int = 2  #: batches queued at the worker or awaiting encode
    priority: int = InferenceWorker.JOB_PRIORITY
    weights: str | None = None  #: named weights the worker loads (None: its own model)
    #: Decoder and encoder threads. None: 1 when the model runs on the CPU (the model needs
    #: every core, and spinning OpenMP threads suffer badly from oversubscription), else
    #: FFmpeg's choice.
    codec_threads: int | None = None


@dataclass(frozen=True)
class FrameReport:
    """Sent once per frame when it has been muxed; timings in seconds, per stage."""

    index: int
    done: int
    total: int  #: expected frame count (0 when unknown)
    timings: dict[str, float]
    batch_frames: int = 1  #: size of the inference batch the frame travelled in
    batch_start: bool = True  #: the first frame of its batch (count each batch once)


@dataclass(frozen=True)
class RunResult:
    output: Path
    frames: int
    seconds: float
    info: VideoInfo

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _StageThread:
    """A single thread for one stage's blocking calls."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"carn-{name}")

    async def call(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def finish(self, fn: Callable | None = None) -> None:
        """Run ``fn`` after whatever is in flight, even while being cancelled; then stop."""
        if fn is not None:
            await asyncio.shield(asyncio.wrap_future(self._pool.submit(fn)))
        self._pool.shutdown(wait=False)


def _next_frame(items: Iterator) -> tuple[list[AudioItem], SourceFrame | None, float]:
    """Advance to the next video frame, collecting audio on the way; (audio, frame, seconds)."""
    started = time.monotonic()
    audio: list[AudioItem] = []
    for item in items:
        if isinstance(item, AudioItem):
            audio.append(item)
        else:
            return audio, item, time.monotonic() - started
    return audio, None, time.monotonic() - started


async def run_pipeline(
    source: str | Path,
    target: Path,
    options: PipelineOptions,
    worker: InferenceWorker,
    on_frame: Callable[[FrameReport], None] | None = None,
    input_options: dict[str, str] | None = None,
) -> RunResult:
    """Upscale ``source`` into ``target``; returns when the output is complete and published."""
    scales = getattr(worker.engine.model, "scales", (options.scale,))
    if options.scale not in scales:
        raise ValueError(f"scale {options.scale} not supported by the model ({scales})")
    started = time.monotonic()
    threads = options.codec_threads
    if threads is None:
        threads = 1 if worker.device.type == "cpu" else 0
    decoder, encoder = _StageThread("decode"), _StageThread("encode")
    container = None
    sink: VideoSink | None = None
    try:
        container = await decoder.call(open_input, source, input_options)
        info = describe(container)
        sink = await encoder.call(
            VideoSink,
            target,
            options.fmt,
            options.encoder,
            info.frame_rate,
            list(container.streams.audio),
            threads,
        )
        frames_q: asyncio.Queue = asyncio.Queue(options.queue_frames)
        batches_q: asyncio.Queue = asyncio.Queue(1)
        results_q: asyncio.Queue = asyncio.Queue(max(1, options.in_flight_batches))
        audio: collections.deque[AudioItem] = collections.deque()
        decode_seconds: dict[int, float] = {}
        items = demux_frames(container, frozenset(sink.transcoded_audio), threads)

        async def decode() -> None:
            while True:
                new_audio, frame, seconds = await decoder.call(_next_frame, items)
                audio.extend(new_audio)
                if frame is None:
                    break
                decode_seconds[frame.index] = seconds
                await frames_q.put(frame)
            await frames_q.put(_END)

        async def batch() -> None:
            pending: SourceFrame | None = None
            while True:
                first = pending or await frames_q.get()
                pending = None
                if first is _END:
                    break
                group = [first]
                deadline = time.monotonic() + options.max_wait
                while len(group) < options.batch_size:
                    try:
                        nxt = await asyncio.wait_for(
                            frames_q.get(), max(0.0, deadline - time.monotonic())
                        )
                    except TimeoutError:
                        break
                    if nxt is _END or nxt.shape_key != first.shape_key:
                        pending = nxt
                        break
                    group.append(nxt)
                await batches_q.put(FrameBatch(group))
                if pending is _END:
                    break
            await batches_q.put(_END)

        async def infer() -> None:
            while (item := await batches_q.get()) is not _END:
                h, w = item.frames[0].size
                out = output_spec(item.spec, output_size(h, w, options.scale)[0])
                future = worker.submit(
                    item.stacked(), item.spec, out, options.scale, options.priority,
                    options.weights,
                )  # fmt: skip
                await results_q.put((item, out, future))
            await results_q.put(_END)

        done = 0

        async def encode() -> None:
            nonlocal done
            while (entry := await results_q.get()) is not _END:
                item, out, future = entry
                result: BatchResult = await future
                frames = _upscaled(item, result)
                backlog = [audio.popleft() for _ in range(len(audio))]
                await encoder.call(_write, sink, frames, out, backlog, item.frames[0].rotation)
                muxed = time.monotonic()
                for position, frame in enumerate(frames):
                    done += 1
                    timings = {
                        "decode": decode_seconds.pop(frame.index, 0.0),
                        "wait": max(0.0, result.started - item.formed_at),
                        "inference": result.finished - result.started,
                        "encode": muxed - result.finished,
                    }  # read-ahead (decoded, not yet batched) is backpressure, not latency
                    timings["total"] = timings["decode"] + muxed - item.formed_at
                    if on_frame:
                        on_frame(
                            FrameReport(
                                frame.index, done, info.frames, timings, len(frames), position == 0
                            )
                        )
            await encoder.call(_write, sink, [], None, list(audio), 0)
            audio.clear()

        async with asyncio.TaskGroup() as tg:
            for stage in (decode, batch, infer, encode):
                tg.create_task(stage(), name=f"pipeline-{stage.__name__}")
        if done == 0:
            raise InputError(f"{source}: no video frame could be decoded")
        output = await encoder.call(sink.close)
        sink = None
        return RunResult(output, done, time.monotonic() - started, info)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        await decoder.finish(container.close if container is not None else None)
        await encoder.finish(sink.abort if sink is not None else None)


def _upscaled(batch: FrameBatch, result: BatchResult) -> list[UpscaledFrame]:
    return [
        UpscaledFrame(f.index, f.pts, f.time_base, result.y[i], result.u[i], result.v[i])
        for i, f in enumerate(batch.frames)
    ]


def _write(
    sink: VideoSink, frames: list[UpscaledFrame], out, audio: list[AudioItem], rotation
) -> None:
    for item in audio:
        sink.write_audio(item)
    for frame in frames:
        sink.write_frame(frame, out, rotation)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The root cause of a TaskGroup failure (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
