"""The service's input limits, checked on a plan before any work is done (jobs and videos)."""

from __future__ import annotations

from carn_stream.pipeline.segments import SegmentPlan
from carn_stream.settings import Settings


class LimitError(Exception):
    """The input is over one of the service's limits."""


def check_limits(plan: SegmentPlan, scale: int, settings: Settings) -> None:
    """Raise :class:`LimitError` when the input is too long or its output at ``scale`` too big."""
    if plan.duration > settings.max_duration_seconds:
        raise LimitError(
            f"input is {plan.duration:.0f} s long, over the limit of "
            f"{settings.max_duration_seconds:g} s"
        )
    pixels = plan.width * plan.height * scale * scale
    if pixels > settings.max_output_pixels:
        raise LimitError(
            f"output would be {plan.width * scale}x{plan.height * scale}, over the limit of "
            f"{settings.max_output_pixels} pixels per frame"
        )
