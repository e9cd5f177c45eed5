"""YUV <-> RGB on the inference device: decoded planes into the network's RGB in [0, 1], and its
output back into 4:2:0 planes, as tensor ops wherever the model runs (GPU or CPU), so decode and
encode only move planes. What the samples mean comes from :class:`ColourSpec`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from carn_stream.pipeline.colour import ColourSpec, levels


def yuv_to_rgb(y: Tensor, u: Tensor | None, v: Tensor | None, spec: ColourSpec) -> Tensor:
    """Planes (N, H, W) and (N, h, w) in code values -> RGB float (N, 3, H, W) in [0, 1]."""
    y_off, y_span, c_mid, c_span = levels(spec.bits, spec.full_range)
    luma = (y.float() - y_off) / y_span
    if u is None or v is None:
        return luma.clamp(0, 1).unsqueeze(1).expand(-1, 3, -1, -1)
    size = y.shape[-2:]
    chroma = torch.stack([u, v], dim=1).float()
    if chroma.shape[-2:] != size:
        chroma = F.interpolate(chroma, size=size, mode="bilinear", align_corners=False)
    cb, cr = ((chroma - c_mid) / c_span).unbind(1)
    kr, kb = spec.coefficients
    kg = 1.0 - kr - kb
    r = luma + 2 * (1 - kr) * cr
    b = luma + 2 * (1 - kb) * cb
    g = (luma - kr * r - kb * b) / kg
    return torch.stack([r, g, b], dim=1).clamp(0, 1)


def plane_tensor(array: np.ndarray) -> Tensor:
    """A plane as a CPU tensor; 16-bit samples widen to int32 (torch has few uint16 kernels)."""
    if array.dtype == np.uint16:
        array = array.astype(np.int32)
    return torch.from_numpy(array)


def planes_to_rgb(planes: list[Tensor], spec: ColourSpec) -> Tensor:
    """A frame's (stacked) planes in their own layout -> RGB float (N, 3, H, W) in [0, 1]."""
    if spec.layout == "rgb":
        return rgb8_to_float(planes[0], spec.bits)
    if spec.layout == "gray":
        return yuv_to_rgb(planes[0], None, None, spec)
    return yuv_to_rgb(planes[0], planes[1], planes[2], spec)


def rgb_to_yuv420(rgb: Tensor, spec: ColourSpec) -> tuple[Tensor, Tensor, Tensor]:
    """RGB float (N, 3, H, W) in [0, 1], H and W even -> limited-range Y, U, V planes of
    ``spec.bits``: uint8 for 8 bits, uint16 above (10 bits: Y in [64, 940]).

    Chroma is the mean of each 2x2 block (centre siting).
    """
    kr, kb = spec.coefficients
    kg = 1.0 - kr - kb
    r, g, b = rgb.float().unbind(1)
    luma = kr * r + kg * g + kb * b
    cb = (b - luma) / (2 * (1 - kb))
    cr = (r - luma) / (2 * (1 - kr))
    chroma = F.avg_pool2d(torch.stack([cb, cr], dim=1), 2)
    step = float(1 << (spec.bits - 8))
    dtype = torch.uint8 if spec.bits <= 8 else torch.uint16
    y = ((16 + 219 * luma) * step).round_().clamp_(16 * step, 235 * step).to(dtype)
    uv = ((128 + 224 * chroma) * step).round_().clamp_(16 * step, 240 * step).to(dtype)
    return y, uv[:, 0], uv[:, 1]


def rgb8_to_float(rgb: Tensor, bits: int = 8) -> Tensor:
    """(N, H, W, 3) integer RGB -> (N, 3, H, W) float in [0, 1]."""
    return rgb.permute(0, 3, 1, 2).float() / float((1 << bits) - 1)
