"""Ways to run the network on a device: eager PyTorch in a chosen dtype and memory format, and
CUDA graphs replayed per input shape. A backend is called as ``backend(x, scale)`` with ``x``
float RGB in [0, 1], (N, 3, H, W), on its device; it returns the network's output.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from carn_stream.model.deployed import deployed
from carn_stream.model.mixed import MixedPrecisionCARN
from carn_stream.model.networks import CARN

log = logging.getLogger(__name__)

#: how :class:`TorchBackend` lays out a CARN
FORMS = ("network", "deployed", "deployed-concat")
#: raised when :func:`eager_layout` changes what the eager modes run (auto measures again)
EAGER_VERSION = 2


class TorchBackend:
    """Eager PyTorch with the weights in ``dtype`` and, optionally, channels-last layout.

    Converts a copy of ``model`` (never the caller's), so engines of different precisions and
    devices can share one; an fp32 CPU model in the network form and the default layout is
    used as it is. With ``form`` other than ``"network"`` a CARN runs in its deployed form
    (:mod:`carn_stream.model.deployed`), one per scale it has: ``"deployed"`` as the inference
    engines take it, ``"deployed-concat"`` with the cascades' concatenations kept (their sums
    are not rounded to a 16-bit dtype); see :func:`eager_layout` for which the engine runs."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        form: str = "network",
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model: nn.Module | None = None
        self.forms: dict[int, nn.Module] = {}
        if not isinstance(model, CARN):
            form = "network"  # the forms are CARN's
        if form != "network":
            fp32 = all(p.dtype == torch.float32 for p in model.parameters())
            source = model if fp32 else copy.deepcopy(model).float()  # deployed() copies it
            for scale in model.scales:
                made = deployed(
                    source,
                    scale,
                    split_cascades=form == "deployed",
                    body_dtype=None if dtype == torch.float32 else dtype,
                )
                self.forms[scale] = made.to(device).to(memory_format=layout)
            self.scales = model.scales
            dtype = torch.float32  # the mean shift, entry and exit stay fp32
        elif dtype != torch.float32 and isinstance(model, CARN):
            # CARN's own forward with its body in ``dtype`` (a converted copy).
            self.model = MixedPrecisionCARN(model, dtype).eval().to(device)
            dtype = torch.float32  # the wrapper takes fp32 input
        else:
            param = next(model.parameters(), None)
            same = param is None or (param.device == device and param.dtype == dtype)
            if not same or channels_last:
                model = copy.deepcopy(model)
            self.model = model.eval().to(device).to(dtype)
        self.dtype, self.channels_last, self.form = dtype, channels_last, form
        if self.model is not None and channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, x: Tensor, scale: int) -> Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.model is not None:
            return self.model(x, scale)
        made = self.forms.get(scale)
        if made is None:
            raise ValueError(f"scale {scale} not supported by this network ({self.scales})")
        return made(x)


def eager_layout(device: torch.device, precision: str) -> tuple[bool, str]:
    """(channels-last, form) for the engine's eager ``precision`` on ``device``.

    On a CPU, fp32 runs the deployed form: it skips the exit conv's pass over the
    full-resolution features, and its cascades' sums beat the concatenations. bf16 runs the
    network as trained: the deployed form's sums are each rounded to bf16 (1.5e-2 to 2.2e-2
    off the network's output) and the form that keeps the concatenations ran no faster.
    Measured with ``bench/torch_forms.py`` on an AMX Xeon's 2 cores, input laid out as the
    engine lays it out: fp32 1.05x (320x180 x4) and 1.15x (176x144 x2), bf16 0.87-0.94x
    (docs/PERFORMANCE.md). On CUDA the network as trained until a GPU measures the forms
    (``bench/gpu_check.py``, section ``model``)."""
    if device.type == "cpu" and precision == "fp32":
        return True, "deployed"
    return True, "network"


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    static_in: Tensor
    static_out: Tensor


class CudaGraphBackend:
    """Captures one CUDA graph per (input shape, scale) and replays it: no per-layer launch
    overhead for the fixed shapes of a video. Shapes past ``max_graphs`` evict the oldest.

    The returned tensor is the graph's static output: use it before the next call.
    """

    def __init__(self, eager: TorchBackend, max_graphs: int = 8, warmup: int = 2) -> None:
        self.eager, self.max_graphs, self.warmup = eager, max_graphs, warmup
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.captures = 0

    def __call__(self, x: Tensor, scale: int) -> Tensor:
        key = (tuple(x.shape), x.dtype, scale)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(x, scale)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        entry.static_in.copy_(x)
        entry.graph.replay()
        return entry.static_out

    def _capture(self, x: Tensor, scale: int) -> _Graph:
        static_in = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up runs pick kernels and allocate outside capture
            for _ in range(self.warmup):
                self.eager(static_in, scale)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.eager(static_in, scale)
        self.captures += 1
        log.info("captured a CUDA graph for %s at x%d", tuple(x.shape), scale)
        return _Graph(graph, static_in, static_out)
