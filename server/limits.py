"""What the service takes in, from its settings, built once at start-up: how inputs are fetched
(:class:`~carn_stream.server.inputs.fetch.FetchPolicy`), the limits an input to be upscaled
must keep, where a job's or a video's copy of its input is kept, and the batch size its
segments run with."""

from __future__ import annotations

from dataclasses import dataclass

from carn_stream.pipeline.execution.executors import SegmentExecutor, batch_size
from carn_stream.pipeline.media.segments import InputLimits
from carn_stream.server.inputs.fetch import FetchPolicy, fetch_policy
from carn_stream.settings import Settings

#: The service's copy of an input, in the job's or the video's folder.
INPUT_NAME = "input"


@dataclass(frozen=True)
class Intake:
    policy: FetchPolicy
    max_output_pixels: int
    max_duration: float  #: seconds
    max_frames: int
    segment_seconds: float  #: the plans' target segment duration
    batch_size: int  #: frames per inference batch (0: the executor's device decides)
    deinterlace: bool = True  #: frames flagged interlaced are made progressive

    @classmethod
    def from_settings(cls, settings: Settings) -> Intake:
        return cls(
            policy=fetch_policy(settings),
            max_output_pixels=settings.max_output_pixels,
            max_duration=settings.max_duration_seconds,
            max_frames=settings.max_frames,
            segment_seconds=settings.segment_seconds,
            batch_size=settings.batch_size,
            deinterlace=settings.deinterlace,
        )

    def limits(self, scale: int) -> InputLimits:
        """The limits on an input to be upscaled ``scale`` times."""
        return InputLimits(scale, self.max_output_pixels, self.max_duration, self.max_frames)

    def batch(self, executor: SegmentExecutor) -> int:
        """Frames per inference batch on ``executor``."""
        return batch_size(self.batch_size, executor)
