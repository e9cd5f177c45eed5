"""Frames of a title and of its encoded copies, as RGB, by index: the training pairs (the
copy's frame as the delivery encoder left it, the original frame) and the measured frames.

Both videos become RGB with the colour conversion the inference worker uses; an original
frame is cropped to ``scale`` times its copy's size (the copy's sides were rounded down).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.frames import SourceFrame
from carn_stream.pipeline.media.decode import demux_frames, describe, main_video, open_input
from carn_stream.pipeline.sampling import frame_to_rgb


@dataclass(frozen=True)
class FramePair:
    index: int
    lr: np.ndarray  #: (h, w, 3) uint8, decoded from the encoded copy
    hr: np.ndarray  #: (scale*h, scale*w, 3) uint8, the original


def frame_count(source: str | Path) -> int:
    """Frames in the video (counted by decoding when the container does not say)."""
    with open_input(source) as container:
        total = describe(container).frames
        if total <= 0:
            total = sum(1 for _ in container.decode(main_video(container)))
    return total


def read_frames(source: str | Path, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """The frames at ``indices`` (decode order = presentation order), as RGB."""
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    if not wanted:
        return frames
    with open_input(source) as container:
        for item in demux_frames(container):
            if not isinstance(item, SourceFrame):
                continue
            if item.index in wanted:
                frames[item.index] = frame_to_rgb(item)
            if item.index >= max(wanted):
                break
    missing = sorted(wanted - set(frames))
    if missing:
        raise InputError(f"{source}: frames {missing[:5]} could not be decoded")
    return frames


def read_pairs(
    source: str | Path, copy: str | Path, indices: Iterable[int], scale: int
) -> list[FramePair]:
    """(copy frame, original frame) at each index; the copy holds the same frames at
    1/``scale`` size (:func:`carn_stream.pipeline.media.delivery.encode_copy`)."""
    order = sorted(set(indices))
    lows, highs = read_frames(copy, order), read_frames(source, order)
    pairs = []
    for i in order:
        lr = lows[i]
        h, w = lr.shape[:2]
        hr = highs[i][: h * scale, : w * scale]
        if hr.shape[:2] != (h * scale, w * scale):
            raise InputError(f"{copy}: frame {i} is {w}x{h}, larger than 1/{scale} of the source")
        pairs.append(FramePair(i, lr, np.ascontiguousarray(hr)))
    return pairs


def spread(total: int, count: int, exclude: range = range(0)) -> list[int]:
    """``count`` indices spread evenly over ``0 .. total - 1`` outside ``exclude``."""
    allowed = [i for i in range(total) if i not in exclude]
    if count >= len(allowed):
        return allowed
    picks = np.linspace(0, len(allowed) - 1, count).round().astype(int)
    return [allowed[p] for p in picks]
