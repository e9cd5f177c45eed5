"""Weights a job or a video names instead of the service's model: a file in the models folder
(``clip-x4.pth``, from ``carn-stream tune``), or a video's own fine-tuned weights, which live
beside its segments (``videos/<id>/tuned.pth`` in the data folder). Torch-free: the API's
schema reads :data:`MODELS_NAME`."""

from __future__ import annotations

import re
from pathlib import Path

#: A models-folder file name (what a job may name).
MODELS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.pth")
_TUNED_NAME = "videos/{}/tuned.pth"
_TUNED = re.compile(re.escape(_TUNED_NAME).replace(r"\{\}", "[0-9a-f]{32}"))


def tuned_name(video_id: str) -> str:
    """The name of a video's fine-tuned weights (relative to the data folder)."""
    return _TUNED_NAME.format(video_id)


def weights_file(name: str, models_dir: Path | None, data_dir: Path) -> Path:
    """The file ``name`` stands for; anything that is not one of the two forms is refused
    (:class:`~carn_stream.model.WeightsError`)."""
    from carn_stream.model import WeightsError  # (this module stays torch-free)

    if _TUNED.fullmatch(name):
        path = data_dir / name
        if not path.is_file():
            raise WeightsError(f"the video's tuned weights {name!r} are gone")
        return path
    if models_dir is None:
        raise WeightsError(f"no weights file {name!r}: CARN_STREAM_MODELS_DIR is not set")
    path = models_dir / name
    if not MODELS_NAME.fullmatch(name) or not path.is_file():
        raise WeightsError(f"no weights file {name!r} in the models folder")
    return path
