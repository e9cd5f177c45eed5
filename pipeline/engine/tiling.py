"""Run a network over overlapping tiles so a frame of any size fits in memory.

Each tile is read with at least ``overlap`` LR pixels around it on every side that has image
content (all tiles' inputs of one shape); only its core is kept. With an overlap wider than the
network's receptive field radius (about 21 LR pixels for CARN-M) the stitched result equals the
whole-frame result up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Network = Callable[[Tensor, int], Tensor]


def tiled_forward(net: Network, x: Tensor, scale: int, tile: int, overlap: int) -> Tensor:
    """``net(x, scale)`` computed tile by tile; ``x`` is (N, C, H, W). Every tile's input is
    of one shape (the tile and ``overlap`` around it, moved inwards at the frame's edges, so
    with at least that much context on each side): a backend compiled per shape (OpenVINO, a
    CUDA graph) compiles once, where edge tiles of their own sizes made up to 16 shapes a
    frame, more than such backends keep."""
    if tile <= 0:
        raise ValueError("tile size must be positive")
    n, _, h, w = x.shape
    window_h, window_w = min(tile + 2 * overlap, h), min(tile + 2 * overlap, w)
    out: Tensor | None = None
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            y0 = min(max(top - overlap, 0), h - window_h)
            x0 = min(max(left - overlap, 0), w - window_w)
            patch = net(x[..., y0 : y0 + window_h, x0 : x0 + window_w], scale)
            if out is None:
                out = torch.empty(
                    (n, patch.shape[1], h * scale, w * scale),
                    dtype=patch.dtype,
                    device=patch.device,
                )
            oy, ox = (top - y0) * scale, (left - x0) * scale
            out[..., top * scale : bottom * scale, left * scale : right * scale] = patch[
                ..., oy : oy + (bottom - top) * scale, ox : ox + (right - left) * scale
            ]
    assert out is not None
    return out
