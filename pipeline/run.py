"""One pipeline run: decode -> batch -> infer -> encode as an ``asyncio.TaskGroup``.

Stages are joined by bounded queues, so memory stays bounded however long the input is and a
slow stage slows its producers. Blocking PyAV work runs on one thread per stage (a container
is only ever touched by its own thread); model work runs on the shared
:class:`~carn_stream.pipeline.engine.infer.InferenceWorker`. The first error or a cancellation stops
every stage, closes both containers and removes the partial output.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.frames import FrameBatch, SourceFrame, UpscaledFrame
from carn_stream.pipeline.media.audio_transcode import AudioWindow
from carn_stream.pipeline.media.decode import (
    AudioItem,
    VideoInfo,
    describe,
    moved,
    open_input,
    whole_ticks,
)
from carn_stream.pipeline.media.encode import EncoderOptions, VideoSink
from carn_stream.pipeline.media.segments import (
    InputLimits,
    Segment,
    audio_window,
    segment_audio,
    segment_frames,
)
from carn_stream.pipeline.priorities import Priority
from carn_stream.pipeline.waiting import wait_at_most

if TYPE_CHECKING:  # the engine (torch) is the caller's; planning and remuxing need none
    from carn_stream.pipeline.engine.infer import BatchResult, InferenceWorker

STAGES = ("decode", "wait", "inference", "encode")  #: defined in docs/SERVICE.md, Metrics
_END = object()


@dataclass(frozen=True)
class PipelineOptions:
    scale: int
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    batch_size: int = 4
    max_wait: float = 0.05  #: seconds a partial batch waits for more frames
    queue_frames: int = 16  #: decoded frames buffered ahead of batching
    in_flight_batches: int = 2  #: batches queued at the worker or awaiting encode
    priority: int = Priority.JOB
    weights: str | None = None  #: named weights the worker loads (None: its own model)
    #: Largest upscaled frame, judged on every decoded frame before it reaches the model
    #: (0: no limit). A stream may change size after its header.
    max_output_pixels: int = 0
    #: Decoder and encoder threads. None: :func:`codec_threads` for the model's device.
    codec_threads: int | None = None
    #: Turn frames by their display rotation instead of tagging the output with it: for
    #: segments served as they are (HLS), since MPEG-TS carries no rotation.
    upright: bool = False
    #: Make frames flagged interlaced progressive before they are upscaled (``bwdif``).
    deinterlace: bool = True


def codec_threads(device_type: str, cpus: int | None = None, in_flight: int = 2) -> int:
    """Decoder and encoder threads of one segment run: 1 when the model runs on the CPU (it
    needs every core, and spinning OpenMP threads suffer badly from oversubscription); on a GPU
    the cores are the encoders' (there may be no hardware encoder), shared by the segments in
    flight (two by default)."""
    if device_type == "cpu":
        return 1
    return max(1, (cpus or os.cpu_count() or 2) // in_flight)


@dataclass(frozen=True)
class StageTimings:
    """Seconds one frame spent in each stage (:data:`STAGES`), and from decoded to muxed.

    Read-ahead (decoded, not yet batched) is backpressure, not latency: it is in no stage.
    ``decode`` is None for live frames (the WebRTC stack decodes before a frame arrives).
    """

    wait: float
    inference: float
    encode: float
    total: float
    decode: float | None = None

    def stages(self) -> dict[str, float]:
        """The stages the frame went through, by name."""
        found = {name: getattr(self, name) for name in STAGES}
        return {name: seconds for name, seconds in found.items() if seconds is not None}


@dataclass(frozen=True)
class FrameReport:
    """Sent once per frame when it has been muxed."""

    index: int  #: in the whole video
    done: int  #: frames of this run muxed so far, this one included
    total: int  #: expected frame count of the run (0 when unknown)
    timings: StageTimings
    batch_frames: int = 1  #: size of the inference batch the frame travelled in
    batch_start: bool = True  #: the first frame of its batch (count each batch once)
    #: the engine's precision as the run's first frame found it (auto decides then); "" after
    precision: str = ""
    segment: int = 0  #: the index of the segment the frame belongs to
    scale: int = 0
    size: tuple[int, int] = (0, 0)  #: the frame's width and height as the model took it
    frame_rate: float | None = None  #: the source's frames per second (None: unknown)


@dataclass(frozen=True)
class RunResult:
    output: Path
    frames: int
    seconds: float
    info: VideoInfo
    rotation: int = 0  #: display rotation of the frames (degrees)

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
        try:
            if fn is not None:
                await asyncio.shield(asyncio.wrap_future(self._pool.submit(fn)))
        finally:
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


def _moved_back(item: SourceFrame | AudioItem, seconds: int) -> SourceFrame | AudioItem:
    """``item`` with its times ``seconds`` earlier."""
    if isinstance(item, SourceFrame):
        if item.pts is None:
            return item
        return replace(item, pts=item.pts - whole_ticks(seconds, item.time_base))
    if item.packet is not None:
        moved(item.packet, -seconds)
    for frame in item.frames:
        if frame.pts is not None and frame.time_base is not None:
            frame.pts -= whole_ticks(seconds, frame.time_base)
    return item


@dataclass(frozen=True)
class SegmentSource:
    """Which part of the input a run covers: one segment of a plan."""

    segment: Segment
    time_base: Fraction  #: the plan's video time base
    last: bool  #: the plan's last segment (takes the audio after the last frame)
    decode_order: bool = False  #: the plan's: packets numbered in decode order (AVI)
    #: seconds taken off every frame and audio packet decoded (``SegmentTask.time_shift``)
    time_shift: int = 0

    def audio_window(self) -> AudioWindow:
        """The segment's part of the clock its frames are written on, for transcoded audio."""
        return audio_window(self.segment, self.time_base, self.last, self.time_shift)


async def run_pipeline(
    source: str | Path,
    part: SegmentSource,
    target: Path,
    options: PipelineOptions,
    worker: InferenceWorker,
    on_frame: Callable[[FrameReport], None] | None = None,
    input_options: dict[str, str] | None = None,
) -> RunResult:
    """Upscale one segment of ``source`` into the MPEG-TS file ``target``; returns when it is
    complete and published."""
    scales = getattr(worker.engine.model, "scales", (options.scale,))
    if options.scale not in scales:
        raise ValueError(f"scale {options.scale} not supported by the model ({scales})")
    run = _PipelineRun(source, part, target, options, worker, on_frame, input_options)
    return await run.execute()


class _PipelineRun:
    """One run's state; each stage is a method, joined by bounded queues in a TaskGroup."""

    def __init__(
        self,
        source: str | Path,
        part: SegmentSource,
        target: Path,
        options: PipelineOptions,
        worker: InferenceWorker,
        on_frame: Callable[[FrameReport], None] | None,
        input_options: dict[str, str] | None,
    ) -> None:
        self.source, self.target, self.options, self.worker = source, target, options, worker
        self.on_frame, self.input_options, self.part = on_frame, input_options, part
        threads = options.codec_threads
        self.threads = codec_threads(worker.device.type) if threads is None else threads
        self.decoder, self.encoder = _StageThread("decode"), _StageThread("encode")
        self.frames_q: asyncio.Queue = asyncio.Queue(options.queue_frames)
        self.batches_q: asyncio.Queue = asyncio.Queue(1)
        self.results_q: asyncio.Queue = asyncio.Queue(max(1, options.in_flight_batches))
        self.audio: collections.deque[AudioItem] = collections.deque()
        self.decode_seconds: dict[int, float] = {}
        self.done = 0
        self.expected = 0
        self.rotation = 0
        self.frame_rate: float | None = None

    async def execute(self) -> RunResult:
        started = time.monotonic()
        container = None
        self.sink: VideoSink | None = None
        try:
            container = await self.decoder.call(open_input, self.source, self.input_options)
            info = describe(container)
            self.frame_rate = float(info.frame_rate) if info.frame_rate else None
            self.expected = self.part.segment.frames
            self.sink = await self.encoder.call(
                VideoSink,
                self.target,
                self.options.encoder,
                info.frame_rate,
                list(container.streams.audio),
                self.threads,
                info.sample_aspect_ratio,
                self.part.segment.frames,
                self.options.upright,
                self.part.audio_window(),
            )
            self.items = await self.decoder.call(self._items, container)
            async with asyncio.TaskGroup() as tg:
                for stage in (self.decode, self.batch, self.infer, self.encode):
                    tg.create_task(stage(), name=f"pipeline-{stage.__name__}")
            if self.done == 0:
                raise InputError(f"{self.source}: no video frame could be decoded")
            output = await self.encoder.call(self.sink.close)
            self.sink = None
            seconds = time.monotonic() - started
            return RunResult(output, self.done, seconds, info, self.rotation)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            try:
                await self.decoder.finish(container.close if container is not None else None)
            finally:  # a cancellation while the input closes still removes the output
                sink = self.sink
                await self.encoder.finish(sink.abort if sink is not None else None)

    def _items(self, container) -> Iterator[SourceFrame | AudioItem]:
        """What the decode stage reads: the segment's audio (read from a second handle on the
        input), then its frames."""
        assert self.sink is not None
        transcoded = frozenset(self.sink.transcoded_audio)
        part = self.part
        audio: list[AudioItem] = []
        if container.streams.audio:
            with open_input(self.source, self.input_options) as second:
                audio = list(
                    segment_audio(second, part.segment, part.time_base, part.last, transcoded)
                )
        items = itertools.chain(
            audio,
            segment_frames(
                container, part.segment, self.threads, part.decode_order, self.options.deinterlace
            ),
        )
        if not part.time_shift:
            return items
        return (_moved_back(item, part.time_shift) for item in items)

    async def decode(self) -> None:
        options = self.options
        limits = InputLimits(options.scale, options.max_output_pixels, math.inf)
        while True:
            new_audio, frame, seconds = await self.decoder.call(_next_frame, self.items)
            self.audio.extend(new_audio)
            if frame is None:
                break
            height, width = frame.size
            limits.check_size(width, height, frame.index)
            self.decode_seconds[frame.index] = seconds
            await self.frames_q.put(frame)
        await self.frames_q.put(_END)

    async def batch(self) -> None:
        options = self.options
        pending: SourceFrame | None = None
        while True:
            first = pending or await self.frames_q.get()
            pending = None
            if first is _END:
                break
            group = [first]
            deadline = time.monotonic() + options.max_wait
            while len(group) < options.batch_size:
                nxt = await wait_at_most(deadline - time.monotonic(), self.frames_q.get())
                if nxt is None:
                    break
                if nxt is _END or nxt.shape_key != first.shape_key:
                    pending = nxt
                    break
                group.append(nxt)
            await self.batches_q.put(FrameBatch(group))
            if pending is _END:
                break
        await self.batches_q.put(_END)

    async def infer(self) -> None:
        options = self.options
        while (item := await self.batches_q.get()) is not _END:
            future = self.worker.submit(
                item.stacked(), item.spec, options.scale, options.priority, options.weights
            )
            await self.results_q.put((item, future))
        await self.results_q.put(_END)

    async def encode(self) -> None:
        assert self.sink is not None
        sink = self.sink
        while (entry := await self.results_q.get()) is not _END:
            item, future = entry
            result: BatchResult = await future
            height, width = item.frames[0].size
            frames = _upscaled(item, result)
            self.rotation = 0 if self.options.upright else item.frames[0].rotation
            backlog = [self.audio.popleft() for _ in range(len(self.audio))]
            await self.encoder.call(
                _write, sink, frames, result.out, backlog, item.frames[0].rotation
            )
            muxed = time.monotonic()
            for position, frame in enumerate(frames):
                self.done += 1
                decode = self.decode_seconds.pop(frame.index, 0.0)
                timings = StageTimings(
                    wait=max(0.0, result.started - item.formed_at),
                    inference=result.finished - result.started,
                    encode=muxed - result.finished,
                    total=decode + muxed - item.formed_at,
                    decode=decode,
                )
                if self.on_frame:
                    first = self.done == 1
                    self.on_frame(
                        FrameReport(
                            frame.index,
                            self.done,
                            self.expected,
                            timings,
                            batch_frames=len(frames),
                            batch_start=position == 0,
                            precision=self.worker.engine.describe_precision() if first else "",
                            segment=self.part.segment.index,
                            scale=self.options.scale,
                            size=(width, height),
                            frame_rate=self.frame_rate,
                        )
                    )
        await self.encoder.call(_write, sink, [], None, list(self.audio), 0)
        self.audio.clear()


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


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The root cause of a TaskGroup failure (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
