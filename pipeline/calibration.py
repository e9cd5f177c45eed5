"""int8 calibration from a user's source: LR versions of its images or video frames."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from carn_stream.model.evaluation import crop_to_multiple, degrade
from carn_stream.pipeline.engine.infer import Engine
from carn_stream.pipeline.media.images import IMAGE_SUFFIXES, ImageError, read_rgb
from carn_stream.pipeline.media.input_formats import VIDEO_SUFFIXES
from carn_stream.pipeline.sampling import sample_frames

MAX_IMAGES = 16
FRAMES_PER_VIDEO = 8


def source_images(source: Path) -> list[np.ndarray]:
    """HR images of ``source``: the image and video files of a folder (a few frames of each
    video), one image file, or frames of one video file."""
    if not source.is_dir():
        if source.suffix.lower() in IMAGE_SUFFIXES:
            return [read_rgb(source)]
        return list(sample_frames(source, FRAMES_PER_VIDEO))
    images: list[np.ndarray] = []
    for path in sorted(source.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(read_rgb(path))
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            images.extend(sample_frames(path, FRAMES_PER_VIDEO))
    if not images:
        raise ImageError(f"{source}: holds no images or videos to calibrate on")
    return images


def calibrate_from(engine: Engine, source: Path, scale: int) -> None:
    """Set an int8 engine's activation ranges for ``scale`` from LR versions (benchmark
    bicubic) of ``source``'s images; the int8 model is cached under a name made from what they
    hold (new images under the same name calibrate again)."""
    images = source_images(source)[:MAX_IMAGES]
    frames = [degrade(crop_to_multiple(image, scale), scale) for image in images]
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(repr(frame.shape).encode())
        digest.update(np.ascontiguousarray(frame).tobytes())
    engine.calibrate(scale, frames, f"{source.name}-{digest.hexdigest()[:16]}-{len(frames)}")
