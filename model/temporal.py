"""Temporal stability: how much an output's frame-to-frame change departs from the original's,
after motion compensation (the warping error of the video SR literature, with block motion).

Motion is estimated once on the original's luma (exhaustive block matching, 16x16 blocks,
+-8 pixels); the same motion compensates the output. With ``e = out - ref``, the measure is the
mean over frames ``t >= 1`` of ``mean |e_t - warp(e_{t-1})|`` in 8-bit luma codes, inside a
border of the search radius: an output whose errors follow the picture scores low even when
they are large, one whose errors change from frame to frame (flicker) scores high.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

BLOCK, RADIUS = 16, 8


def block_motion(prev: torch.Tensor, cur: torch.Tensor, block: int = BLOCK,
                 radius: int = RADIUS) -> torch.Tensor:  # fmt: skip
    """Per block of ``cur`` (H, W), the displacement (dy, dx) into ``prev`` of least SAD;
    ties go to the smallest displacement. Returns (H // block, W // block, 2) int64."""
    h, w = (cur.shape[0] // block) * block, (cur.shape[1] // block) * block
    c = cur[:h, :w]
    padded = F.pad(prev[None, None], (radius,) * 4, mode="replicate")[0, 0]
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    costs = []
    for dy, dx in offsets:
        shifted = padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
        sad = F.avg_pool2d((c - shifted).abs()[None, None], block)[0, 0]
        costs.append(sad + 1e-3 * (abs(dy) + abs(dx)))
    best = torch.stack(costs).argmin(dim=0)
    table = torch.tensor(offsets, dtype=torch.int64)
    return table[best]


def warp(prev: torch.Tensor, motion: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``prev`` (H, W) moved by the block motion, over the blocks' area (H', W')."""
    hb, wb = motion.shape[:2]
    ys = torch.arange(hb * block)[:, None].expand(-1, wb * block)
    xs = torch.arange(wb * block)[None, :].expand(hb * block, -1)
    per_pixel = motion.repeat_interleave(block, 0).repeat_interleave(block, 1)
    sy = (ys + per_pixel[..., 0]).clamp(0, prev.shape[0] - 1)
    sx = (xs + per_pixel[..., 1]).clamp(0, prev.shape[1] - 1)
    return prev[sy, sx]


def motions(reference: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Block motion between consecutive (H, W) luma frames of the original."""
    frames = [torch.from_numpy(np.asarray(f, dtype=np.float32)) for f in reference]
    return [block_motion(a, b) for a, b in itertools.pairwise(frames)]


def warping_error(
    output: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    motion: Sequence[torch.Tensor] | None = None,
) -> float:
    """Mean |e_t - warp(e_{t-1})| of the error e = output - reference, in luma codes; ``motion``
    from :func:`motions` of the reference (computed when not given)."""
    if len(output) != len(reference) or len(output) < 2:
        raise ValueError("needs two or more consecutive frames of each, as many of both")
    motion = motion if motion is not None else motions(reference)
    errors = [
        torch.from_numpy(np.asarray(o, dtype=np.float32) - np.asarray(r, dtype=np.float32))
        for o, r in zip(output, reference, strict=True)
    ]
    r = RADIUS
    values = []
    for t in range(1, len(errors)):
        moved = warp(errors[t - 1], motion[t - 1])
        h, w = moved.shape
        diff = (errors[t][:h, :w] - moved)[r : h - r, r : w - r]
        values.append(float(diff.abs().mean()))
    return float(np.mean(values))
