"""int8 inference on the CPU: a statically quantized ONNX model run by OpenVINO (or ONNX Runtime).

Per scale, the network is exported to ONNX with dynamic sizes, then quantized (QDQ, per-channel
int8 weights, uint8 activations) with activation ranges calibrated on real frames. Two kinds of
convolution stay in float because per-tensor activation scales ruin them (measured, see
docs/PERFORMANCE.md): the entry conv, and the 1x1 convs that fuse a cascade's concatenated
features (the concatenated tensors mix very different ranges).

Quantized models are cached on disk, keyed by the weights' digest, the scale and the
calibration source; compiled models are kept per input shape. Needs the ``int8`` extra
(``pip install 'carn-stream[int8]'``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from carn_stream.pipeline.engine.onnx_models import (
    MAX_COMPILED,
    BackendUnavailable,
    OpenVinoCompiler,
    cached_onnx,
    state_digest,
    to_array,
)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openvino", "onnxruntime")
#: Bump when the export or quantization recipe changes: old cache entries are then ignored.
RECIPE_VERSION = 1
CALIBRATION_CROP = 96  #: LR side of calibration crops
CALIBRATION_CROPS = 16


class Int8Unavailable(BackendUnavailable):
    """The int8 extra (ONNX, ONNX Runtime, OpenVINO) is not installed."""


def calibration_crops(
    frames: Sequence[np.ndarray], count: int = CALIBRATION_CROPS, side: int = CALIBRATION_CROP
) -> list[np.ndarray]:
    """``count`` LR crops (1, 3, side, side) float32 in [0, 1] spread over ``frames`` (HxWx3)."""
    rng = np.random.default_rng(0)
    crops = []
    for i in range(count):
        frame = frames[i % len(frames)]
        h, w = frame.shape[:2]
        ch, cw = min(side, h), min(side, w)
        y, x = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        crop = frame[y : y + ch, x : x + cw].transpose(2, 0, 1)[None]
        crops.append(np.ascontiguousarray(crop, dtype=np.float32) / 255.0)
    return crops


def float_conv_nodes(onnx_path: Path) -> list[str]:
    """The convs kept in float: the entry conv and every conv fed by a Concat."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    keep = [convs[0].name]
    for node in convs:
        source = produced_by.get(node.input[0])
        if source is not None and source.op_type == "Concat":
            keep.append(node.name)
    return keep


def quantize(onnx_path: Path, out_path: Path, crops: Sequence[np.ndarray]) -> None:
    """Static QDQ quantization: per-channel int8 weights, uint8 activations (min/max)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(crops)

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {"lr": item}

    with _quiet_onnxruntime():
        quantize_static(
            str(onnx_path),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_conv_nodes(onnx_path),
        )


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Drop the per-tensor chatter ONNX Runtime's quantizer logs through the root logger (and
    its own loggers) while it runs; everyone else's records pass."""
    import onnxruntime

    package = os.path.dirname(onnxruntime.__file__)
    ours = logging.getLogger("onnxruntime")

    def not_onnxruntime(record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(package)

    root = logging.getLogger()
    root.addFilter(not_onnxruntime)
    level = ours.level
    ours.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(not_onnxruntime)
        ours.setLevel(level)


def pick_backend(name: str = "auto") -> str:
    if name not in BACKENDS:
        raise ValueError(f"int8 backend must be one of {BACKENDS}, got {name!r}")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise Int8Unavailable(
            "int8 needs the int8 extra: pip install 'carn-stream[int8]' "
            f"(onnx, onnxruntime, openvino): {exc}"
        ) from exc
    if name in ("auto", "openvino"):
        try:
            import openvino  # noqa: F401

            return "openvino"
        except ImportError:
            if name == "openvino":
                raise Int8Unavailable("the openvino backend is not installed") from None
    return "onnxruntime"


class Int8Backend:
    """Runs a quantized CARN on the CPU; see the module docstring.

    Scales are prepared on first use, calibrated on that call's own frames, unless
    :meth:`prepare` was called with other calibration frames first.
    """

    def __init__(
        self,
        model: nn.Module,
        cache_dir: Path,
        backend: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.backend = pick_backend(backend)
        self.model = copy.deepcopy(model).float().eval().cpu()
        self.digest = state_digest(self.model)
        self.cache_dir = cache_dir / "int8"
        self.threads = threads or torch.get_num_threads()
        self._models: dict[int, Path] = {}
        self._compiled: OrderedDict[tuple, object] = OrderedDict()
        self._openvino = OpenVinoCompiler(self.threads) if self.backend == "openvino" else None

    # ------------------------------------------------------------------ preparation

    def model_path(self, scale: int, calibration_id: str) -> Path:
        name = f"carn-{self.digest[:16]}-x{scale}-{calibration_id}-r{RECIPE_VERSION}.onnx"
        return self.cache_dir / name

    def prepare(self, scale: int, frames: Sequence[np.ndarray], calibration_id: str) -> Path:
        """Quantize (or load from the cache) the model for ``scale``, calibrated on ``frames``
        (HxWx3 uint8 LR) known by ``calibration_id``."""
        path = self.model_path(scale, calibration_id)
        if not path.is_file():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            log.info("quantizing CARN-M x%d to int8 (calibration: %s)", scale, calibration_id)
            float_path = cached_onnx(self.model, self.digest, scale, self.cache_dir.parent)
            with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
                quantized = Path(tmp) / "int8.onnx"
                quantize(float_path, quantized, calibration_crops(frames))
                os.replace(quantized, path)
        self._models[scale] = path
        return path

    # ------------------------------------------------------------------ inference

    def __call__(self, x: Tensor, scale: int) -> Tensor:
        if scale not in self._models:
            frames = [
                (f.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                for f in x.detach().float().cpu()
            ]
            h, w = x.shape[-2:]
            self.prepare(scale, frames, f"first-frames-{h}x{w}")
        array = to_array(x)
        if self._openvino is not None:
            return torch.from_numpy(self._openvino.get(self._models[scale], array.shape)(array))
        run = self._compiled_for(scale, array.shape)
        return torch.from_numpy(run(array))

    def _compiled_for(self, scale: int, shape: tuple[int, ...]):
        key = (scale, shape)
        run = self._compiled.get(key)
        if run is None:
            run = self._compiled[key] = self._compile(self._models[scale], shape)
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return run

    def _compile(self, path: Path, shape: tuple[int, ...]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda a: session.run(None, {"lr": a})[0]
