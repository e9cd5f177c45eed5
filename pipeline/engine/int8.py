"""int8 inference on the CPU: CARN-M quantized by NNCF, run by OpenVINO.

Per scale, the network's ONNX export is quantized by NNCF's post-training quantization (ONNX
backend: QDQ, per-channel int8 weights, per-tensor activations with min/max ranges, bias
correction), calibrated on a set of frames that ships with the package (Big Buck Bunny crops,
``int8_calibration.npz``), so every machine makes the same model; a user's own source can
replace it (``carn-stream eval --calibration``). The export is the deployed form
(:mod:`carn_stream.model.deployed`): the exit conv runs before the last shuffle, in int8, and
the cascades' concatenations are sums of per-part convs. What stays in float, measured layer by
layer (docs/PERFORMANCE.md): the entry conv (it reads 8-bit pixels), the last global fusion
(the 1x1 convs that feed the upsampler), at x2 and x3 the upsampler's first conv, the sums of
each fusion's parts, and the final shuffle (the picture itself is never quantized).

OpenVINO runs the quantized model with float parts in fp32 (a bf16 hint loses up to 0.03 dB
on the image-facing parts). Weights are 8-bit on every CPU, also those without VNNI (measured
on AVX2 arithmetic, docs/PERFORMANCE.md).

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

from carn_stream.pipeline.engine.onnx_models import (
    EXPORT_VERSION,
    BackendUnavailable,
    OpenVinoCompiler,
    cached_onnx,
    missing_packages,
    package_versions,
    state_digest,
    to_array,
)

log = logging.getLogger(__name__)


@cache
def _tools_digest() -> str:
    """A short digest of the versions of the packages that make an int8 model."""
    versions = {"torch": torch.__version__, **package_versions(("nncf", "onnx"))}
    return hashlib.sha256(repr(sorted(versions.items())).encode()).hexdigest()[:8]

#: Bump when the quantization recipe changes: old cache entries are then ignored.
RECIPE_VERSION = 3
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


def _nodes(onnx_path: Path) -> list[tuple[str, str]]:
    """(op type, name) of the export's nodes, in graph order."""
    import onnx

    return [(node.op_type, node.name) for node in onnx.load(str(onnx_path)).graph.node]


def float_nodes(onnx_path: Path, scale: int) -> list[str]:
    """The nodes kept in float (see the module docstring), named as the deployed form
    (:mod:`carn_stream.model.deployed`) exports them.

    Convolutions: the entry, every part of the last global fusion and, at
    :data:`FLOAT_UPSAMPLER_SCALES`, the upsampler's first. Also the sums of each fusion's
    parts (a quantized partial sum costs 0.1 dB at x2) and the final shuffle (the picture
    itself would otherwise be quantized on its way out).
    """
    nodes = _nodes(onnx_path)
    convs = [name for kind, name in nodes if kind == "Conv"]
    upsampler = next(i for i, name in enumerate(convs) if name.startswith("/upsampler/"))
    global_fusions = {name.split("/")[2] for name in convs if name.startswith("/body/fusions.")}
    if global_fusions:
        last = max(global_fusions, key=lambda fusion: int(fusion.split(".")[1]))
        feeding = [name for name in convs if name.startswith(f"/body/{last}/")]
    else:  # no global cascade (CARN-NG, the plain baseline): the body's last conv
        feeding = [convs[upsampler - 1]]
    keep = [convs[0], *feeding]
    if scale in FLOAT_UPSAMPLER_SCALES:
        keep.append(convs[upsampler])
    keep += [name for kind, name in nodes if kind == "Add" and "/fusions." in name]
    return keep + [name for _, name in nodes if name.startswith("/shuffle/")]


def quantize(
    onnx_path: Path,
    out_path: Path,
    frames: Sequence[np.ndarray],
    keep_float: Sequence[str],
) -> None:
    """NNCF post-training quantization of ``onnx_path`` into ``out_path`` (QDQ ONNX), calibrated
    on ``frames``; the nodes named in ``keep_float`` stay in float."""
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
        # 8-bit weights on every CPU: without VNNI, int8 products are summed in pairs into 16
        # bits that can saturate, but measured on AVX2 arithmetic this recipe loses no more
        # (docs/PERFORMANCE.md); 7-bit weights lost 0.054 dB at Set5 x2.
        overflow_fix=OverflowFix.DISABLE,
        # One scale per branch rather than one shared where branches meet: the features a
        # cascade gathers (the entry conv's signed output beside ReLU outputs) differ in range.
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
    ) -> None:
        require_int8()
        self.model = copy.deepcopy(model).float().eval().cpu()
        self.digest = state_digest(self.model)
        self.cache_dir = cache_dir / "int8"
        self._models: dict[int, Path] = {}
        # The float parts in fp32: OpenVINO's bf16 default loses on the image-facing convs.
        self._openvino = OpenVinoCompiler(
            threads or torch.get_num_threads(), {"INFERENCE_PRECISION_HINT": "f32"}
        )

    def model_path(self, scale: int, calibration: str) -> Path:
        """Named by the weights, scale, calibration, recipe and the tools that make it (torch
        exports, NNCF quantizes, onnx writes: an upgrade of one quantizes again)."""
        recipe = f"e{EXPORT_VERSION}-r{RECIPE_VERSION}"
        name = f"carn-{self.digest[:16]}-x{scale}-{calibration}-{recipe}-{_tools_digest()}.onnx"
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
                keep = float_nodes(float_path, scale)
                quantize(float_path, quantized, calibration.frames, keep)
                os.replace(quantized, path)
        self._models[scale] = path
        return path

    def __call__(self, x: Tensor, scale: int) -> Tensor:
        if scale not in self._models:
            self.prepare(scale)
        array = to_array(x)
        return torch.from_numpy(self._openvino.get(self._models[scale], array.shape)(array))
