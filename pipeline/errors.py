"""Errors the pipeline raises for inputs and outputs a user can fix."""


class PipelineError(Exception):
    """Base class: a message a user can act on."""


class InputError(PipelineError):
    """The input is missing, not a video, or has no video stream."""


class OutputError(PipelineError):
    """The output cannot be written as asked (codec, container, path)."""


class LimitError(InputError):
    """The input is over one of the limits the caller set (size, duration)."""
