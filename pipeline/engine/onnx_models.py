"""What the OpenVINO backends (float and int8) share: the packages they need, the network
exported to ONNX and cached on disk by the weights' digest and scale, and compiled models kept
per input shape.

Needs the ``cpu`` extra (``pip install 'carn-stream[cpu]'``: openvino; for int8 also nncf, onnx
and onnxruntime).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from carn_stream.model.deployed import deployed
from carn_stream.model.networks import CARN

#: Bump when the export recipe changes: old cache entries are then ignored.
EXPORT_VERSION = 2
MAX_COMPILED = 8  #: compiled models kept per backend, one per (scale, input shape)

Compiled = Callable[[np.ndarray], np.ndarray]
#: The extra that installs every package below.
EXTRA = "cpu"
#: The distributions the OpenVINO modes need (openvino) and int8 needs (all of them).
OPENVINO_PACKAGES = ("openvino",)
INT8_PACKAGES = ("openvino", "nncf", "onnx", "onnxruntime")


def package_versions(names: tuple[str, ...] = INT8_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (None when missing), read from the
    package metadata without importing anything."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def missing_packages(names: tuple[str, ...] = INT8_PACKAGES) -> list[str]:
    """The distributions in ``names`` that are not installed."""
    return [name for name, version in package_versions(names).items() if version is None]


class BackendUnavailable(RuntimeError):
    """The OpenVINO packages (the ``cpu`` extra) are not installed, or the CPU lacks what a mode
    needs."""


def state_digest(model: nn.Module) -> str:
    """sha256 over the model's tensors (names, shapes, values): the weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _AtScale(nn.Module):
    def __init__(self, model: nn.Module, scale: int) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, self.scale)


def export_onnx(model: nn.Module, scale: int, path: Path) -> None:
    """The float network at ``scale`` as ONNX, batch and spatial sizes dynamic; a CARN in its
    deployed form (:mod:`carn_stream.model.deployed`)."""
    model = model.float().eval()
    wrapper = deployed(model, scale) if isinstance(model, CARN) else _AtScale(model, scale)
    example = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=["lr"],
            output_names=["sr"],
            dynamic_axes={"lr": {0: "n", 2: "h", 3: "w"}, "sr": {0: "n", 2: "sh", 3: "sw"}},
            opset_version=17,
            dynamo=False,
        )


def cached_onnx(model: nn.Module, digest: str, scale: int, cache_dir: Path) -> Path:
    """The float ONNX export of ``model`` at ``scale``, made once per weights and kept in
    ``cache_dir/onnx`` (written under a temporary name, then renamed)."""
    folder = cache_dir / "onnx"
    path = folder / f"carn-{digest[:16]}-x{scale}-e{EXPORT_VERSION}.onnx"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            part = Path(tmp) / "float.onnx"
            export_onnx(model, scale, part)
            os.replace(part, path)
    return path


def require_openvino():
    """The ``openvino`` module, or :class:`BackendUnavailable` saying how to install it."""
    try:
        import openvino

        return openvino
    except ImportError as exc:
        raise BackendUnavailable(
            f"OpenVINO modes need the {EXTRA} extra: pip install 'carn-stream[{EXTRA}]' ({exc})"
        ) from exc


def openvino_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin can compute here (e.g. FP32, BF16, FP16, INT8); empty
    without OpenVINO."""
    try:
        ov = require_openvino()
    except BackendUnavailable:
        return ()
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoCompiler:
    """Compiles ONNX files for the CPU, one compiled model per (file, input shape), keeping the
    :data:`MAX_COMPILED` most recently used."""

    def __init__(self, threads: int, properties: dict[str, object] | None = None) -> None:
        self._ov = require_openvino()
        self._core = self._ov.Core()
        self._core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
        self.properties = dict(properties or {})
        self._compiled: OrderedDict[tuple, Compiled] = OrderedDict()

    def get(self, path: Path, shape: tuple[int, ...]) -> Compiled:
        key = (str(path), shape)
        run = self._compiled.get(key)
        if run is None:
            run = self._compiled[key] = self._compile(path, shape)
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return run

    def _compile(self, path: Path, shape: tuple[int, ...]) -> Compiled:
        # Converted for this one shape rather than read and reshaped: the static conversion
        # folds the group convs' biases into them (measured 7-10% faster, docs/PERFORMANCE.md).
        model = self._ov.convert_model(str(path), input=[list(shape)])
        request = self._core.compile_model(model, "CPU", self.properties).create_infer_request()
        return lambda a: np.array(request.infer({0: a})[0], copy=True)


def to_array(x: Tensor) -> np.ndarray:
    """A backend's input as the contiguous float32 array the compiled models take."""
    return np.ascontiguousarray(x.detach().float().cpu().numpy())
