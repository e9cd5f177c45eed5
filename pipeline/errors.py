"""Errors the pipeline raises for inputs and outputs a user can fix."""


def ffmpeg_reason(exc: BaseException) -> str:
    """What FFmpeg said went wrong, without its errno number or file name."""
    reason = getattr(exc, "strerror", None)
    return str(reason) if reason else str(exc)


class PipelineError(Exception):
    """Base class: a message a user can act on."""


class InputError(PipelineError):
    """The input is missing, not a video, or has no video stream."""


class OutputError(PipelineError):
    """The output cannot be written as asked (codec, container, path)."""


class LimitError(InputError):
    """The input is over one of the limits the caller set (size, duration)."""
