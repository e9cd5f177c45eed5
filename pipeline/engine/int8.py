"""int8 inference on the CPU: CARN-M quantized by NNCF, run by OpenVINO.

Per scale, the network's ONNX export is quantized by NNCF's post-training quantization (ONNX
backend: QDQ, per-channel int8 weights, per-tensor activations with min/max ranges, bias
correction), calibrated on a set of frames that ships with the package (Big Buck Bunny crops,
``int8_calibration.npz``), so every machine makes the same model; a user's own source can
replace it (``carn-stream eval --calibration``). What stays in float, measured layer by layer
(docs/PERFORMANCE.md): the entry and exit convolutions (they touch 8-bit pixels), the last
global fusion (the 1x1 conv that feeds the upsampler) and, at x2 and x3, the upsampler's
first conv. Concatenated features are quantized per input, not with one shared scale.

OpenVINO runs the quantized model with float parts in fp32 (its bf16 default loses on the
image-facing convs). On CPUs without VNNI, whose int8 multiply-adds can saturate, weights are
quantized to 7 bits (NNCF's overflow fix); that model is cached under its own name.

Quantized models are cached on disk, keyed by the weights' digest, the scale, the
calibration set and the recipe; compiled models are kept per input shape. Needs the ``cpu``
extra (``pip install 'carn-stream[cpu]'``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from carn_stream.pipeline.engine.cpu import cpu_has_vnni
from carn_stream.pipeline.engine.onnx_models import (
    BackendUnavailable,
    OpenVinoCompiler,
    cached_onnx,
    missing_packages,
    state_digest,
    to_array,
)

log = logging.getLogger(__name__)

#: Bump when the quantization recipe changes: old cache entries are then ignored.
RECIPE_VERSION = 2
#: Scales whose upsampler's first conv stays in float (measured: at x4 it costs 0.003 dB on
#: the validation photos, and 7% of the network's multiply-adds).
FLOAT_UPSAMPLER_SCALES = (2, 3)
CALIBRATION_FILE = "int8_calibration.npz"


class Int8Unavailable(BackendUnavailable):
    """The packages int8 needs (NNCF, ONNX, ONNX Runtime, OpenVINO) are not installed."""


@dataclass(frozen=True)
class Calibration:
    """LR frames (HxWx3 uint8) to calibrate on, known by ``name`` (part of the cache key)."""

    name: str
    frames: Sequence[np.ndarray]


@cache
def shipped_calibration() -> Calibration:
    """The calibration set in the package: 32 crops of 64x64 LR pixels of Big Buck Bunny
    frames (CC BY 3.0, Blender Foundation), made by ``scripts/make_calibration_set.py``."""
    data = resources.files("carn_stream.pipeline.engine").joinpath(CALIBRATION_FILE).read_bytes()
    with np.load(io.BytesIO(data)) as archive:
        rows = archive["rows"]
    crops = np.cumsum(rows, axis=2, dtype=np.uint8)  # stored as differences along rows
    return Calibration(f"bbb-{hashlib.sha256(data).hexdigest()[:8]}", list(crops))


def calibration_inputs(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The network's inputs for ``frames``: (1, 3, H, W) float32 in [0, 1]."""
    return [
        np.ascontiguousarray(f.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0 for f in frames
    ]


def conv_names(onnx_path: Path) -> list[str]:
    """The export's convolutions, in graph order."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    return [node.name for node in graph.node if node.op_type == "Conv"]


def float_convs(onnx_path: Path, scale: int) -> list[str]:
    """The convolutions kept in float (see the module docstring)."""
    convs = conv_names(onnx_path)
    upsampler = next(i for i, name in enumerate(convs) if f"/x{scale}/" in name)
    keep = [convs[0], convs[upsampler - 1], convs[-1]]
    if scale in FLOAT_UPSAMPLER_SCALES:
        keep.append(convs[upsampler])
    return keep


def quantize(
    onnx_path: Path,
    out_path: Path,
    frames: Sequence[np.ndarray],
    keep_float: Sequence[str],
    seven_bit_weights: bool = False,
) -> None:
    """NNCF post-training quantization of ``onnx_path`` into ``out_path`` (QDQ ONNX), calibrated
    on ``frames``; the convolutions named in ``keep_float`` stay in float."""
    import nncf
    import onnx
    from nncf.common.quantization.quantizer_propagation.structs import QuantizerPropagationRule
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    inputs = calibration_inputs(frames)
    advanced = AdvancedQuantizationParameters(
        # Per-sample extremes averaged (NNCF's default) clip the brightest edges: measured
        # worse on every scale.
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
        overflow_fix=OverflowFix.ENABLE if seven_bit_weights else OverflowFix.DISABLE,
        # One scale per Concat input rather than one shared by all: the concatenated features
        # (the entry conv's signed output beside ReLU outputs) have very different ranges.
        quantizer_propagation_rule=QuantizerPropagationRule.DO_NOT_MERGE_BRANCHES,
    )
    with _quiet_nncf():
        quantized = nncf.quantize(
            onnx.load(str(onnx_path)),
            nncf.Dataset([{"lr": x} for x in inputs]),
            subset_size=len(inputs),
            ignored_scope=nncf.IgnoredScope(names=list(keep_float)),
            advanced_parameters=advanced,
        )
    onnx.save(quantized, str(out_path))


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs per-step chatter at INFO and draws progress bars on stdout (where
    ``carn-stream eval --json`` writes its result): keep its warnings, drop the rest."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def require_int8() -> None:
    """Raise :class:`Int8Unavailable`, naming the extra, when a package int8 needs is missing."""
    missing = missing_packages()
    if missing:
        raise Int8Unavailable(f"int8 needs {', '.join(missing)}: pip install 'carn-stream[cpu]'")


class Int8Backend:
    """Runs a quantized CARN on the CPU; see the module docstring.

    A scale is quantized on first use with the shipped calibration set, unless
    :meth:`prepare` was called with other frames first.
    """

    def __init__(
        self,
        model: nn.Module,
        cache_dir: Path,
        threads: int | None = None,
        seven_bit_weights: bool | None = None,
    ) -> None:
        require_int8()
        self.model = copy.deepcopy(model).float().eval().cpu()
        self.digest = state_digest(self.model)
        self.cache_dir = cache_dir / "int8"
        self.seven_bit_weights = (
            not cpu_has_vnni() if seven_bit_weights is None else seven_bit_weights
        )
        self._models: dict[int, Path] = {}
        # The float parts in fp32: OpenVINO's bf16 default loses on the image-facing convs.
        self._openvino = OpenVinoCompiler(
            threads or torch.get_num_threads(), {"INFERENCE_PRECISION_HINT": "f32"}
        )

    def model_path(self, scale: int, calibration: str) -> Path:
        weights = "w7" if self.seven_bit_weights else "w8"
        name = f"carn-{self.digest[:16]}-x{scale}-{calibration}-{weights}-r{RECIPE_VERSION}.onnx"
        return self.cache_dir / name

    def prepare(self, scale: int, calibration: Calibration | None = None) -> Path:
        """Quantize (or load from the cache) the model for ``scale``, calibrated on
        ``calibration`` (default: the shipped set)."""
        calibration = calibration or shipped_calibration()
        path = self.model_path(scale, calibration.name)
        if not path.is_file():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            log.info("quantizing CARN-M x%d to int8 (calibration: %s)", scale, calibration.name)
            float_path = cached_onnx(self.model, self.digest, scale, self.cache_dir.parent)
            with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
                quantized = Path(tmp) / "int8.onnx"
                keep = float_convs(float_path, scale)
                quantize(float_path, quantized, calibration.frames, keep, self.seven_bit_weights)
                os.replace(quantized, path)
        self._models[scale] = path
        return path

    def __call__(self, x: Tensor, scale: int) -> Tensor:
        if scale not in self._models:
            self.prepare(scale)
        array = to_array(x)
        return torch.from_numpy(self._openvino.get(self._models[scale], array.shape)(array))
