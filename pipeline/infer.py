"""The inference engine (model + device + precision) and the worker thread that owns it.

Colour conversion and float <-> uint8 happen on the inference device. When the device runs out
of memory a batch is split, then tiled with ever smaller tiles: a frame is never dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from model.inference import pick_device
from pipeline.colour import ColourSpec, rgb8_to_float, rgb_to_yuv420, yuv_to_rgb
from pipeline.tiling import tiled_forward

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class EngineConfig:
    device: str = "auto"
    precision: str = "auto"  #: auto = fp16 on CUDA, fp32 on CPU
    tile: int | None = None  #: LR tile side; None = whole frames (tiles only on OOM)
    tile_overlap: int = 24  #: LR pixels; above CARN-M's receptive field radius
    min_tile: int = 32


@dataclass
class BatchResult:
    y: np.ndarray  #: (N, H, W) uint8
    u: np.ndarray  #: (N, H/2, W/2)
    v: np.ndarray
    started: float
    finished: float


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def output_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """Output frame size: scale x input, rounded down to even sides for 4:2:0 encoding."""
    return (height * scale) // 2 * 2, (width * scale) // 2 * 2


class Engine:
    """Runs a network on one device; thread-confined (use it from one thread)."""

    def __init__(self, model: nn.Module, config: EngineConfig = EngineConfig()) -> None:
        self.config = config
        self.device = pick_device(config.device)
        precision = config.precision
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use fp32 or bf16 on CPU")
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.model = model.eval().to(self.device, self.dtype)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self._pinned: dict[tuple, Tensor] = {}
        self.oom_retries = 0

    # ------------------------------------------------------------------ transfers

    def _to_device(self, array: np.ndarray) -> Tensor:
        if array.dtype == np.uint16:
            array = array.astype(np.int32)  # torch has few uint16 kernels
        host = torch.from_numpy(array)
        if self.device.type != "cuda":
            return host
        key = (array.shape, array.dtype.str)
        buf = self._pinned.get(key)
        if buf is None:
            buf = self._pinned[key] = torch.empty(host.shape, dtype=host.dtype).pin_memory()
        buf.copy_(host)
        return buf.to(self.device, non_blocking=True)

    def _to_host(self, tensors: list[Tensor]) -> list[np.ndarray]:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return [t.cpu().numpy() for t in tensors]

    # ------------------------------------------------------------------ compute

    @torch.inference_mode()
    def upscale(self, planes: list[np.ndarray], spec: ColourSpec, scale: int, out: ColourSpec):
        """Stacked input planes -> 8-bit 4:2:0 output planes (N, ...) in ``out``'s matrix."""
        tensors = [self._to_device(p) for p in planes]
        if spec.layout == "rgb":
            rgb = rgb8_to_float(tensors[0], spec.bits)
        elif spec.layout == "gray":
            rgb = yuv_to_rgb(tensors[0], None, None, spec)
        else:
            rgb = yuv_to_rgb(tensors[0], tensors[1], tensors[2], spec)
        x = rgb.to(self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        sr = self._forward(x, scale, self.config.tile).float().clamp_(0, 1)
        h, w = output_size(x.shape[-2], x.shape[-1], scale)
        y, u, v = rgb_to_yuv420(sr[..., :h, :w], out)
        return self._to_host([y, u, v])

    def _forward(self, x: Tensor, scale: int, tile: int | None) -> Tensor:
        try:
            if tile is None or (tile >= x.shape[-2] and tile >= x.shape[-1]):
                return self.model(x, scale)
            return tiled_forward(self.model, x, scale, tile, self.config.tile_overlap)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.oom_retries += 1
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        # Out of memory: split the batch, then tile, then shrink the tiles.
        if x.shape[0] > 1:
            half = x.shape[0] // 2
            log.warning("out of memory at batch %d; retrying in halves", x.shape[0])
            return torch.cat(
                [self._forward(x[:half], scale, tile), self._forward(x[half:], scale, tile)]
            )
        side = max(x.shape[-2:]) if tile is None else tile
        smaller = max(side // 2, 1)
        if smaller < self.config.min_tile:
            raise MemoryError(
                f"out of memory even with {side}px tiles on {self.device}; "
                "use a smaller --tile or another device"
            )
        log.warning("out of memory at tile %d; retrying with %d px tiles", side, smaller)
        return self._forward(x, scale, smaller)


@dataclass(order=True)
class _Request:
    priority: int
    seq: int
    planes: list[np.ndarray] = None  # type: ignore[assignment]
    spec: ColourSpec = None  # type: ignore[assignment]
    out: ColourSpec = None  # type: ignore[assignment]
    scale: int = 0
    future: asyncio.Future = None  # type: ignore[assignment]
    loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]


class InferenceWorker:
    """One thread that owns an :class:`Engine`; pipelines submit batches from the event loop.

    Lower ``priority`` values run first (live sessions ahead of batch jobs); equal priorities
    run in submission order.
    """

    JOB_PRIORITY, LIVE_PRIORITY = 10, 0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.PriorityQueue[_Request] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="carn-inference", daemon=True)
        self._stopping = False
        self._thread.start()

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def submit(
        self,
        planes: list[np.ndarray],
        spec: ColourSpec,
        out: ColourSpec,
        scale: int,
        priority: int = JOB_PRIORITY,
    ) -> asyncio.Future[BatchResult]:
        if self._stopping:
            raise RuntimeError("inference worker is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchResult] = loop.create_future()
        self._queue.put(_Request(priority, next(self._seq), planes, spec, out, scale, future, loop))
        return future

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            if request.future is None:  # close() sentinel
                return
            if request.future.cancelled():
                continue
            started = time.monotonic()
            try:
                y, u, v = self.engine.upscale(
                    request.planes, request.spec, request.scale, request.out
                )
                outcome: BatchResult | BaseException = BatchResult(
                    y, u, v, started, time.monotonic()
                )
            except Exception as exc:
                outcome = exc
            try:
                request.loop.call_soon_threadsafe(_resolve, request.future, outcome)
            except RuntimeError:  # the submitting loop has closed: nobody waits any more
                log.debug("dropping a result for a closed event loop")

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batches already queued; waits for the thread."""
        if self._stopping:
            return
        self._stopping = True
        self._queue.put(_Request(1 << 30, next(self._seq)))
        self._thread.join(timeout)


def _resolve(future: asyncio.Future, outcome: BatchResult | BaseException) -> None:
    if future.cancelled():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
