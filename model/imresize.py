"""Bicubic resize that matches MATLAB's ``imresize`` (the SR benchmarks' degradation).

Cubic kernel with a = -0.5, kernel widened by 1/scale when shrinking (antialiasing), mirrored
borders. Each axis is a dense (out x in) weight matrix, so a resize is two matmuls and runs
on any device. Computation is in float64 unless the input is float32 on a GPU.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=64)
def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The (out_len x in_len) matrix that resizes one axis by ``scale``."""
    width = 4.0
    if scale < 1 and antialias:
        width /= scale

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    w = kernel(u[:, None] - idx)
    w /= w.sum(axis=1, keepdims=True)
    mirrored = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    cols = mirrored[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), cols.ravel()), w.ravel())
    return matrix


def imresize(
    x: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> Tensor:
    """Resize the last two axes of ``x`` (float tensor) by ``scale`` or to ``size=(h, w)``.

    With only ``scale``, the output side is ``ceil(side * scale)``, as in MATLAB.
    """
    h, w = x.shape[-2:]
    if size is None:
        if scale is None:
            raise ValueError("give scale or size")
        size = (math.ceil(h * scale), math.ceil(w * scale))
    sh = scale if scale is not None else size[0] / h
    sw = scale if scale is not None else size[1] / w
    dtype = x.dtype if x.is_floating_point() else torch.float64
    if x.device.type == "cpu":
        dtype = torch.float64
    mh = torch.from_numpy(resize_matrix(h, size[0], sh, antialias)).to(x.device, dtype)
    mw = torch.from_numpy(resize_matrix(w, size[1], sw, antialias)).to(x.device, dtype)
    return mh @ x.to(dtype) @ mw.T


def bicubic_uint8(image: np.ndarray, scale: float | None = None, size=None) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` on an 8-bit HxWxC image (rounded, clipped)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float64)
    out = imresize(t, scale=scale, size=size)
    return out.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
