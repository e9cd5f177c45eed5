"""Float inference on the CPU through OpenVINO: the network's ONNX export compiled with an
``INFERENCE_PRECISION_HINT`` of f32, bf16 or f16, one compiled model per input shape.

The whole network runs in the hinted precision: OpenVINO's CPU plugin ignores per-layer
precision marks under a bf16 hint, and splitting the entry and exit convs into fp32 models
of their own costs more than it gains (measured, see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from carn_stream.pipeline.engine.onnx_models import (
    BackendUnavailable,
    OpenVinoCompiler,
    cached_onnx,
    openvino_capabilities,
    state_digest,
    to_array,
)

#: precision name -> (OpenVINO hint, the CPU capability it needs)
HINTS = {"ov-fp32": ("f32", "FP32"), "ov-bf16": ("bf16", "BF16"), "ov-fp16": ("f16", "FP16")}


def unavailable_reason(precision: str) -> str | None:
    """Why ``precision`` cannot run here, or None when it can."""
    capabilities = openvino_capabilities()
    if not capabilities:
        return "OpenVINO is not installed (pip install 'carn-stream[cpu]')"
    need = HINTS[precision][1]
    if need not in capabilities:
        return f"this CPU has no {need} arithmetic for OpenVINO ({', '.join(capabilities)})"
    return None


class OpenVinoBackend:
    """Runs a network in ``precision`` (a key of :data:`HINTS`) through OpenVINO on the CPU."""

    def __init__(
        self, model: nn.Module, precision: str, cache_dir: Path, threads: int | None = None
    ) -> None:
        reason = unavailable_reason(precision)
        if reason:
            raise BackendUnavailable(f"{precision}: {reason}")
        self.precision = precision
        self.model = copy.deepcopy(model).float().eval().cpu()
        self.digest = state_digest(self.model)
        self.cache_dir = cache_dir
        hint = HINTS[precision][0]
        self.compiler = OpenVinoCompiler(
            threads or torch.get_num_threads(), {"INFERENCE_PRECISION_HINT": hint}
        )
        self._onnx: dict[int, Path] = {}

    def __call__(self, x: Tensor, scale: int) -> Tensor:
        path = self._onnx.get(scale)
        if path is None:
            path = self._onnx[scale] = cached_onnx(self.model, self.digest, scale, self.cache_dir)
        array = to_array(x)
        return torch.from_numpy(self.compiler.get(path, array.shape)(array))
