"""Sample evenly spaced RGB frames from a video (training and per-video fine-tuning data).

Frames become RGB with the same colour conversion the inference worker applies (the stream's
own matrix and range), so a model tuned on them sees what it will see when upscaling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from carn_stream.pipeline.engine.convert import plane_tensor, planes_to_rgb
from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.frames import SourceFrame
from carn_stream.pipeline.media.decode import demux_frames, describe, main_video, open_input


def frame_to_rgb(frame: SourceFrame) -> np.ndarray:
    """A decoded frame as HxWx3 uint8 RGB."""
    planes = [plane_tensor(p)[None] for p in frame.planes]
    out = planes_to_rgb(planes, frame.spec)[0].mul(255).round_().to(torch.uint8).permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())


def sample_frames(source: str | Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over the whole video (all of them if it has fewer)."""
    if count < 1:
        raise ValueError(f"frame count must be positive, got {count}")
    with open_input(source) as container:
        total = describe(container).frames
        if total <= 0:  # unknown length: count the frames first
            total = sum(1 for _ in container.decode(main_video(container)))
    if total <= 0:
        raise InputError(f"{source}: no frame could be decoded")
    # Opened again rather than sought back: a raw H.264/HEVC stream cannot seek (EPERM).
    with open_input(source) as container:
        wanted = set(np.linspace(0, max(total - 1, 0), min(count, total)).round().astype(int))
        frames: list[np.ndarray] = []
        for item in demux_frames(container):
            if not isinstance(item, SourceFrame):
                continue
            if item.index in wanted:
                frames.append(frame_to_rgb(item))
            if item.index >= max(wanted):
                break
    if not frames:
        raise InputError(f"{source}: no frame could be decoded")
    return frames
