"""Run a network over overlapping tiles so a frame of any size fits in memory.

Each tile is extended by ``overlap`` LR pixels on every side that has image content; only its
core is kept. With an overlap wider than the network's receptive field radius (about 21 LR
pixels for CARN-M) the stitched result equals the whole-frame result up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Network = Callable[[Tensor, int], Tensor]


def tiled_forward(net: Network, x: Tensor, scale: int, tile: int, overlap: int) -> Tensor:
    """``net(x, scale)`` computed tile by tile; ``x`` is (N, C, H, W)."""
    if tile <= 0:
        raise ValueError("tile size must be positive")
    n, _, h, w = x.shape
    out: Tensor | None = None
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, h), min(right + overlap, w)
            patch = net(x[..., y0:y1, x0:x1], scale)
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
