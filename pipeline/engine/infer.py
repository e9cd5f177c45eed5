"""The inference engine (model + device + precision) and the worker thread that owns it.

Colour conversion and float <-> integer samples (8 or 10 bits) happen on the inference device.
When the device runs out of memory a batch is split, then tiled with ever smaller tiles: a
frame is never dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import logging
import math
import queue
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from carn_stream.model.inference import pick_device
from carn_stream.model.weights import WeightsSource
from carn_stream.pipeline.colour import ColourSpec, output_spec
from carn_stream.pipeline.engine.autoselect import Backend, Decision, DecisionCache, measure
from carn_stream.pipeline.engine.backends import (
    EAGER_VERSION,
    CudaGraphBackend,
    TorchBackend,
    eager_layout,
)
from carn_stream.pipeline.engine.convert import (
    plane_tensor,
    planes_to_rgb,
    rgb8_to_float,
    rgb_to_yuv420,
)
from carn_stream.pipeline.engine.cpu import cpu_features, cpu_has_native_bf16, cpu_name, isa_cap
from carn_stream.pipeline.engine.onnx_models import (
    EXPORT_VERSION,
    EXTRA,
    INT8_PACKAGES,
    missing_packages,
    openvino_capabilities,
    package_versions,
)
from carn_stream.pipeline.engine.tiling import tiled_forward
from carn_stream.pipeline.frames import upscaled_size
from carn_stream.pipeline.priorities import Priority
from carn_stream.precisions import CPU_AUTO_CANDIDATES, NAMES, precision

log = logging.getLogger(__name__)

PRECISIONS = NAMES
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class EngineConfig:
    device: str = "auto"
    precision: str = "auto"  #: see :func:`default_precision`
    tile: int | None = None  #: LR tile side; None = whole frames (tiles only on OOM)
    tile_overlap: int = 24  #: LR pixels; above CARN-M's receptive field radius
    min_tile: int = 32
    cuda_graphs: bool = True  #: replay one CUDA graph per input shape (CUDA only)
    #: where ONNX exports, int8 models and auto's decisions are kept (None: a temporary folder
    #: of this process, so nothing is remembered across runs)
    cache_dir: Path | None = None

    @property
    def cache(self) -> Path:
        return self.cache_dir or _process_cache()


@functools.cache
def _process_cache() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="carn-stream-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@dataclass
class BatchResult:
    y: np.ndarray  #: (N, H, W) uint8, or uint16 when ``out.bits`` > 8
    u: np.ndarray  #: (N, H/2, W/2)
    v: np.ndarray
    started: float
    finished: float
    out: ColourSpec  #: the planes' colour (matrix, tags), chosen by the engine
    #: the engine's first batch of this shape and scale: its time holds one-off work (a mode
    #: measured, a model compiled, kernels chosen), not the steady speed
    first_of_shape: bool = False


def default_precision(device: torch.device) -> str:
    """What ``auto`` means before anything is measured: fp16 on CUDA (measured in
    docs/PERFORMANCE.md); on a CPU ``auto`` stays, and the engine measures each mode on the
    first frame of every input size (see :mod:`carn_stream.pipeline.engine.autoselect`)."""
    return "fp16" if device.type == "cuda" else "auto"


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why precision ``name`` cannot run on ``device`` here, or None when it can."""
    mode = precision(name)
    if device.type not in mode.devices:
        where = " or ".join(d.upper() for d in mode.devices)
        return f"{name} runs on {where} only"
    if name == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return "this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX); it would be emulated"
    if mode.backend == "openvino":
        from carn_stream.pipeline.engine.openvino_float import unavailable_reason as ov_reason

        if name == "ov-bf16" and not cpu_has_native_bf16():
            return "this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX)"
        if name == "ov-fp16" and isa_cap() and "avx512_fp16" not in cpu_features():
            return f"no fp16 arithmetic (AVX-512 FP16) under ONEDNN_MAX_CPU_ISA={isa_cap()}"
        return ov_reason(name)
    if mode.backend == "int8":
        missing = missing_packages(INT8_PACKAGES)
        if missing:
            return f"{', '.join(missing)} not installed (pip install 'carn-stream[{EXTRA}]')"
        if "INT8" not in openvino_capabilities():
            return "OpenVINO offers no int8 arithmetic on this CPU"
    return None


#: What the ``cpu`` extra was measured to give over the fp32 mode at 320x180 x4
#: (docs/PERFORMANCE.md), by CPU kind: named when it is missing.
EXTRA_GAIN = {
    "bf16": "ov-bf16 ran 2.0x and int8 2.6x the fp32 mode on an AVX-512 BF16 CPU",
    "other": "int8 ran 2.2x and ov-fp32 1.25x the fp32 mode on an AVX2 CPU",
}


def missing_extra_note() -> str | None:
    """One line naming the missing extra and what it gives on this kind of CPU, or None when
    every backend package is installed."""
    missing = missing_packages(INT8_PACKAGES)
    if not missing:
        return None
    gain = EXTRA_GAIN["bf16" if cpu_has_native_bf16() else "other"]
    return (
        f"{', '.join(missing)} not installed: pip install 'carn-stream[{EXTRA}]' for the "
        f"OpenVINO and int8 modes ({gain})"
    )


def backends_identity() -> str:
    """The installed backend packages and their versions (torch's too), and the versions of
    this package's eager forms, export and int8 recipe: part of auto's cache key, so that
    installing or upgrading either measures again."""
    from carn_stream.pipeline.engine.int8 import RECIPE_VERSION

    versions = {"torch": torch.__version__, **package_versions(INT8_PACKAGES)}
    packages = ", ".join(f"{name} {version or 'missing'}" for name, version in versions.items())
    return (f"{packages}, eager f{EAGER_VERSION}, export e{EXPORT_VERSION}, "
            f"int8 r{RECIPE_VERSION}")  # fmt: skip


def output_geometry(spec: ColourSpec, height: int, width: int, scale: int) -> ColourSpec:
    """The output colour for an input of ``spec`` and size: 4:2:0, the source's matrix (RGB
    sources get the usual one for the output height), 10 bits for inputs deeper than 8."""
    return output_spec(spec, upscaled_size(width, height, scale)[1])


def _how_decided(decision: Decision) -> str:
    if decision.cached:
        return "cached"
    return "as a near size" if decision.borrowed else "measured"


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


@dataclass
class Pending:
    """A batch launched on the device whose planes are still on their way back."""

    planes: list[Tensor]
    started: float
    out: ColourSpec
    ready: torch.cuda.Event | None = None
    first_of_shape: bool = False


class Engine:
    """Runs a network on one device; thread-confined (use it from one thread).

    On CUDA, uploads and downloads go through pinned host buffers on a copy stream of their
    own, so :meth:`launch` of the next batch overlaps the compute of the previous one.
    """

    def __init__(
        self,
        model: nn.Module,
        config: EngineConfig = EngineConfig(),
        weights: WeightsSource | None = None,
    ) -> None:
        """``weights``: which weights ``model`` holds (what the service reports)."""
        self.config, self.weights = config, weights
        self.device = pick_device(config.device)
        name = config.precision
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
        if name == "auto":
            name = default_precision(self.device)
        elif name == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use fp32, bf16, ov-* or int8 on CPU")
        elif name == "int8" and self.device.type != "cpu":
            raise ValueError("int8 runs on the CPU; use fp16 or bf16 on CUDA")
        elif precision(name).backend in ("openvino", "int8"):
            reason = unavailable_reason(name, self.device)
            if reason:
                raise ValueError(f"precision {name}: {reason}")
        self.precision = name
        self.model = model
        self._backends: dict[str, Backend] = {}
        #: auto's decisions per (scale, input height, input width)
        self.choices: dict[tuple[int, int, int], Decision] = {}
        self._digest: str | None = None
        self.backend = None if name == "auto" else self._backend(name)
        self.cuda = self.device.type == "cuda"
        self._pinned: dict[tuple, Tensor] = {}
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.oom_retries = 0
        self._launches = 0
        #: (scale, input shape) of the batches run so far (cleared past a few hundred)
        self._shapes_run: set[tuple[int, tuple[int, ...]]] = set()

    def _backend(self, name: str) -> Backend:
        backend = self._backends.get(name)
        if backend is None:
            backend = self._backends[name] = self._make_backend(self.model, name)
        return backend

    def _make_backend(self, model: nn.Module, precision: str) -> Backend:
        if precision == "int8":
            from carn_stream.pipeline.engine.int8 import Int8Backend

            return Int8Backend(model, self.config.cache)
        if precision.startswith("ov-"):
            from carn_stream.pipeline.engine.openvino_float import OpenVinoBackend

            return OpenVinoBackend(model, precision, self.config.cache)
        channels_last, form = eager_layout(self.device, precision)
        eager = TorchBackend(model, self.device, _DTYPES[precision], channels_last, form)
        if self.device.type == "cuda" and self.config.cuda_graphs:
            return CudaGraphBackend(eager)
        return eager

    # ------------------------------------------------------------------ auto precision

    def auto_candidates(self) -> dict[str, Callable[[], Backend]]:
        """The modes ``auto`` measures on this CPU: name -> backend factory (unavailable ones
        raise when made, and are reported as such)."""
        return {name: partial(self._checked_backend, name) for name in CPU_AUTO_CANDIDATES}

    def _checked_backend(self, name: str) -> Backend:
        reason = unavailable_reason(name, self.device)
        if reason:
            raise RuntimeError(reason)
        return self._backend(name)

    def _decision_key(self, scale: int, height: int, width: int) -> str:
        if self._digest is None:
            from carn_stream.pipeline.engine.onnx_models import state_digest

            self._digest = state_digest(self.model)
        return (
            f"{cpu_name()} ({', '.join(cpu_features()) or 'no features of note'}) | "
            f"{torch.get_num_threads()} threads | weights {self._digest[:16]} "
            f"| {backends_identity()} | x{scale} {width}x{height}"
        )

    def _choose(self, x: Tensor, scale: int, may_measure: bool = True) -> Backend:
        """The backend for this input: the fixed mode, or auto's (measured once per size; with
        ``may_measure`` False, borrowed from the nearest size measured at the scale if there is
        one: see :meth:`_decide`)."""
        if self.backend is not None:
            return self.backend
        size = (scale, x.shape[-2], x.shape[-1])
        decision = self.choices.get(size)
        if decision is None or (may_measure and decision.borrowed):
            decision = self._decide(x, scale, may_measure)
            if not decision.provisional:
                self.choices[size] = decision
        return self._backend(decision.mode)

    def _decide(self, x: Tensor, scale: int, may_measure: bool = True) -> Decision:
        """This size's decision: kept from before, else measured now. A frame that must not
        wait seconds for a measurement (``may_measure`` False: live, whose sizes change as its
        input shrinks and grows) takes the nearest size's at the same scale, where one was
        measured (by pixel count; the modes' ranking changes little between near sizes)."""
        cache = DecisionCache(self.config.cache / "precision-choices.json")
        height, width = x.shape[-2], x.shape[-1]
        key = self._decision_key(scale, height, width)
        decision = cache.get(key)
        if decision is not None and unavailable_reason(decision.mode, self.device) is None:
            log.info("precision auto: %s (decided earlier for %s)", decision.mode, key)
            return decision
        if not may_measure and (near := self._nearest(cache, scale, height, width)) is not None:
            log.info("precision auto: %s for %s, as at the nearest size measured", near.mode, key)
            return near
        started = time.monotonic()
        decision = measure(self.auto_candidates(), x[:1], scale)
        log.log(
            logging.DEBUG if decision.provisional else logging.INFO,
            "precision auto: %s for %s, measured in %.1f s:\n%s",
            decision.mode,
            key,
            time.monotonic() - started,
            decision.table(),
        )
        if not decision.provisional:
            cache.put(key, decision)
        return decision

    def _nearest(
        self, cache: DecisionCache, scale: int, height: int, width: int
    ) -> Decision | None:
        """The decision measured at the size nearest this one (by pixel count) at ``scale``,
        in this engine or kept in ``cache`` (for this CPU, weights and backends), of a mode
        available here; marked borrowed. None where none was measured at the scale."""
        same = self._decision_key(scale, 0, 0).removesuffix("0x0")

        def distance(h: int, w: int) -> float:
            return abs(math.log(max(h * w, 1) / max(height * width, 1)))

        def near(key: str) -> float | None:
            found = re.fullmatch(r"(\d+)x(\d+)", key[len(same):]) if key.startswith(same) else None
            return distance(int(found[2]), int(found[1])) if found else None

        known = [(distance(h, w), d) for (s, h, w), d in self.choices.items()
                 if s == scale and not d.borrowed and not d.provisional]  # fmt: skip
        if (kept := cache.nearest(near)) is not None:
            known.append(kept)
        usable = [(score, d) for score, d in known
                  if unavailable_reason(d.mode, self.device) is None]  # fmt: skip
        if not usable:
            return None
        nearest = min(usable, key=lambda scored: scored[0])[1]
        return replace(nearest, borrowed=True, cached=False)

    def describe_precision(self) -> str:
        """The configured mode and, for auto, what it chose per size so far; on a CPU, also
        the missing extra and what it would give (:func:`missing_extra_note`)."""
        text = self.precision
        if self.choices:
            picks = ", ".join(
                f"{d.mode} at x{s} {w}x{h} ({_how_decided(d)})"
                for (s, h, w), d in self.choices.items()
            )
            text = f"{self.precision}: {picks}"
        note = missing_extra_note() if self.device.type == "cpu" else None
        return f"{text}; {note}" if note else text

    # ------------------------------------------------------------------ transfers

    def _pinned_buffer(self, shape: tuple, dtype: torch.dtype, role: str) -> Tensor:
        key = (role, shape, dtype)
        buf = self._pinned.get(key)
        if buf is None:
            if len(self._pinned) > 32:  # many shapes came and went: start over
                self._pinned.clear()
            buf = self._pinned[key] = torch.empty(shape, dtype=dtype).pin_memory()
        return buf

    def _to_device(self, array: np.ndarray) -> Tensor:
        host = plane_tensor(array)
        if not self.cuda:
            return host
        buf = self._pinned_buffer(tuple(host.shape), host.dtype, f"in{self._launches % 2}")
        buf.copy_(host)
        with torch.cuda.stream(self._copy_stream):
            on_device = buf.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).wait_stream(self._copy_stream)
        on_device.record_stream(torch.cuda.current_stream(self.device))
        return on_device

    # ------------------------------------------------------------------ compute

    def upscale(
        self,
        planes: list[np.ndarray],
        spec: ColourSpec,
        scale: int,
        out: ColourSpec | None = None,
    ) -> list[np.ndarray]:
        """Stacked input planes -> 4:2:0 output planes (N, ...) in ``out``'s matrix and bit
        depth (default: :func:`output_geometry`'s)."""
        return self.finish(self.launch(planes, spec, scale, out))

    @torch.inference_mode()
    def launch(
        self,
        planes: list[np.ndarray],
        spec: ColourSpec,
        scale: int,
        out: ColourSpec | None = None,
        may_measure: bool = True,
    ) -> Pending:
        """Start a batch; on CUDA this returns before the device is done. ``may_measure``
        False: ``auto`` takes a near size's decision rather than measure (:meth:`_decide`)."""
        started = time.monotonic()
        self._launches += 1  # alternates the pinned buffers: one batch in flight, one landing
        rgb = planes_to_rgb([self._to_device(p) for p in planes], spec)
        if out is None:
            out = output_geometry(spec, rgb.shape[-2], rgb.shape[-1], scale)
        shape = (scale, tuple(rgb.shape))
        first = shape not in self._shapes_run
        if first:
            if len(self._shapes_run) >= 512:  # (sizes came and went)
                self._shapes_run.clear()
            self._shapes_run.add(shape)
        sr = self._forward(rgb, scale, self.config.tile, may_measure).float().clamp_(0, 1)
        w, h = upscaled_size(rgb.shape[-1], rgb.shape[-2], scale)
        yuv = list(rgb_to_yuv420(sr[..., :h, :w], out))
        if not self.cuda:
            return Pending(yuv, started, out, first_of_shape=first)
        compute = torch.cuda.current_stream(self.device)
        self._copy_stream.wait_stream(compute)
        host = []
        with torch.cuda.stream(self._copy_stream):
            for i, t in enumerate(yuv):
                buf = self._pinned_buffer(tuple(t.shape), t.dtype, f"out{i}-{self._launches % 2}")
                buf.copy_(t, non_blocking=True)
                t.record_stream(self._copy_stream)
                host.append(buf)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return Pending(host, started, out, ready, first)

    @torch.inference_mode()
    def upscale_rgb(self, image: np.ndarray, scale: int) -> np.ndarray:
        """One HxWx3 uint8 RGB image -> (scale*H)x(scale*W)x3 uint8 RGB (evaluation)."""
        x = rgb8_to_float(self._to_device(np.ascontiguousarray(image)[None]))
        sr = self._forward(x, scale, self.config.tile).float().clamp_(0, 1)
        out = sr.mul_(255).round_().to(torch.uint8)[0].permute(1, 2, 0)
        return out.cpu().numpy()

    def calibrate(self, scale: int, frames: list[np.ndarray], calibration_id: str) -> None:
        """int8 only: set the activation ranges for ``scale`` from these LR frames
        (HxWx3 uint8) instead of the shipped calibration set."""
        if self.precision == "int8":
            from carn_stream.pipeline.engine.int8 import Calibration, Int8Backend

            assert isinstance(self.backend, Int8Backend)
            self.backend.prepare(scale, Calibration(calibration_id, frames))

    def finish(self, pending: Pending) -> list[np.ndarray]:
        """Wait for a launched batch and hand its planes over as arrays."""
        if pending.ready is not None:
            pending.ready.synchronize()
            return [t.numpy().copy() for t in pending.planes]  # the pinned buffers get reused
        return [t.numpy() for t in pending.planes]

    def _forward(
        self, x: Tensor, scale: int, tile: int | None, may_measure: bool = True
    ) -> Tensor:
        backend = self._choose(x, scale, may_measure)
        try:
            if tile is None or (tile >= x.shape[-2] and tile >= x.shape[-1]):
                return backend(x, scale)
            return tiled_forward(backend, x, scale, tile, self.config.tile_overlap)
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
            # (a copy of the first half's result: a CUDA graph's output is overwritten by
            # its next replay, the second half's when the halves are of one shape)
            first = self._forward(x[:half], scale, tile, may_measure).clone()
            return torch.cat([first, self._forward(x[half:], scale, tile, may_measure)])
        side = max(x.shape[-2:]) if tile is None else tile
        smaller = max(side // 2, self.config.min_tile)  # (the smallest tiles are tried too)
        if side <= self.config.min_tile:
            raise MemoryError(
                f"out of memory even with {side}px tiles on {self.device}; "
                "use a smaller --tile or another device"
            )
        log.warning("out of memory at tile %d; retrying with %d px tiles", side, smaller)
        return self._forward(x, scale, smaller, may_measure)


@dataclass
class _Request:
    planes: list[np.ndarray]
    spec: ColourSpec
    scale: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    weights: str | None = None
    may_measure: bool = True


class _Stop:
    """Queued by :meth:`InferenceWorker.close`: the worker ends after what came before it."""


_STOP = _Stop()


class WeightsLoader(Protocol):
    """Builds the network of named weights (a per-video model), and says when they change."""

    def __call__(self, name: str) -> nn.Module: ...

    def stamp(self, name: str) -> Hashable:
        """What changes when the named weights do (their file's size and time)."""
        ...


class InferenceWorker:
    """One thread that owns an :class:`Engine`; pipelines submit batches from the event loop.

    Lower ``priority`` values run first (live sessions, then segments a player waits for,
    then segments fetched ahead of a player, then batch jobs); equal priorities run in
    submission order.
    """

    def __init__(
        self,
        engine: Engine,
        load_weights: WeightsLoader | None = None,
        max_engines: int = 4,
    ) -> None:
        """``load_weights(name)`` builds the network for a batch submitted with ``weights=name``
        (e.g. a per-video model); such engines are made on the worker thread, with ``engine``'s
        settings, and the ``max_engines`` most recently used are kept, each until its weights
        change (``load_weights.stamp``: a tune that writes them again)."""
        self.engine = engine
        self._load_weights = load_weights
        self._max_engines = max_engines
        self._engines: OrderedDict[tuple[str, Hashable], Engine] = OrderedDict()
        #: (priority, submission number, request): lower priorities first, then in order
        self._queue: queue.PriorityQueue[tuple[int, int, _Request | _Stop]] = queue.PriorityQueue()
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
        scale: int,
        priority: int = Priority.JOB,
        weights: str | None = None,
        may_measure: bool = True,
    ) -> asyncio.Future[BatchResult]:
        """Queue stacked planes for upscaling; the result carries the output planes and their
        colour (:attr:`BatchResult.out`). ``may_measure``: see :meth:`Engine.launch`."""
        if self._stopping:
            raise RuntimeError("inference worker is closed")
        if weights is not None and self._load_weights is None:
            raise ValueError("this worker runs one model; it cannot load other weights")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchResult] = loop.create_future()
        request = _Request(planes, spec, scale, future, loop, weights, may_measure)
        self._queue.put((priority, next(self._seq), request))
        return future

    def _engine_for(self, weights: str | None) -> Engine:
        if weights is None:
            return self.engine
        assert self._load_weights is not None
        key = (weights, self._load_weights.stamp(weights))
        engine = self._engines.get(key)
        if engine is None:
            for older in [k for k in self._engines if k[0] == weights]:  # (weights since changed)
                del self._engines[older]
            engine = Engine(self._load_weights(weights), self.engine.config)
            self._engines[key] = engine
            while len(self._engines) > self._max_engines:
                self._engines.popitem(last=False)
        self._engines.move_to_end(key)
        return engine

    def _run(self) -> None:
        # On CUDA one batch may be in flight while the next is launched, so uploads and
        # downloads overlap compute; on the CPU each batch is finished before the next.
        overlap = self.engine.cuda
        in_flight: tuple[_Request, Engine, Pending] | None = None
        while True:
            try:
                request = self._queue.get(block=in_flight is None)[2]
            except queue.Empty:
                request = None
            if isinstance(request, _Stop):
                if in_flight:
                    self._finish(*in_flight)
                return
            launched = None
            if request is not None and not request.future.cancelled():
                try:
                    engine = self._engine_for(request.weights)
                    pending = engine.launch(request.planes, request.spec, request.scale,
                                            may_measure=request.may_measure)  # fmt: skip
                    launched = (request, engine, pending)
                except Exception as exc:
                    _deliver(request, exc)
            if in_flight:
                self._finish(*in_flight)
                in_flight = None
            if launched and overlap:
                in_flight = launched
            elif launched:
                self._finish(*launched)

    def _finish(self, request: _Request, engine: Engine, pending: Pending) -> None:
        try:
            y, u, v = engine.finish(pending)
            outcome: BatchResult | BaseException = BatchResult(
                y, u, v, pending.started, time.monotonic(), pending.out, pending.first_of_shape
            )
        except Exception as exc:
            outcome = exc
        _deliver(request, outcome)

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batches already queued; waits for the thread."""
        if self._stopping:
            return
        self._stopping = True
        self._queue.put((1 << 30, next(self._seq), _STOP))
        self._thread.join(timeout)


def _deliver(request: _Request, outcome: BatchResult | BaseException) -> None:
    try:
        request.loop.call_soon_threadsafe(_resolve, request.future, outcome)
    except RuntimeError:  # the submitting loop has closed: nobody waits any more
        log.debug("dropping a result for a closed event loop")


def _resolve(future: asyncio.Future, outcome: BatchResult | BaseException) -> None:
    if future.cancelled():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
