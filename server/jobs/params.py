"""A job's parameters: one typed model for the API's request and response, the store and the
runner. Stored rows are read back through it, so rows written by older versions get today's
defaults (and their old field names) without any caller reading a dict by string keys.

Adding a job field means adding it here (and using it where it takes effect).
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from carn_stream.model.named_weights import MODELS_NAME
from carn_stream.model.scales import SUPPORTED_SCALES
from carn_stream.pipeline.media.codecs import CODEC_NAMES, PRESETS, preset_problem
from carn_stream.pipeline.media.elementary import MAX_RATE, frame_rate
from carn_stream.pipeline.media.formats import FORMAT_NAMES, FORMATS


def _supported_scale(value: int) -> int:
    if value not in SUPPORTED_SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(str, SUPPORTED_SCALES))}")
    return value


Scale = Annotated[
    int,
    AfterValidator(_supported_scale),
    Field(json_schema_extra={"enum": list(SUPPORTED_SCALES)}),
]


def _frame_rate(value: float) -> float:
    frame_rate(value)  # raises ValueError with the reason
    return value


FrameRate = Annotated[float, Field(gt=0, le=MAX_RATE), AfterValidator(_frame_rate)]
#: The frame rate of a raw H.264/HEVC input, which carries no timestamps.
InputFps = Annotated[
    FrameRate | None,
    Field(
        None,
        description="frame rate of a raw H.264/HEVC input (a stream without a container, "
        "which carries no timestamps); default: the rate the stream's header gives, else 25. "
        "29.97, 59.94 and 23.976 mean the exact NTSC rates. Other inputs keep their own times",
        examples=[30],
    ),
]

#: Whether interlaced frames are made progressive (strictly true or false: "yes" or 1 is a
#: mistake to say, not a choice to guess).
Deinterlace = Annotated[
    StrictBool | None,
    Field(
        None,
        description="make frames the input's decoder flags interlaced (480i/576i/1080i) "
        "progressive before they are upscaled (FFmpeg's bwdif, one frame per frame); false "
        "upscales them as coded. Default: the service's CARN_STREAM_DEINTERLACE, recorded "
        "with the job (or video) when it is added",
    ),
]


def raw_rate(input_fps: float | None) -> Fraction | None:
    """``input_fps`` as an exact rate (None: a raw input's own)."""
    return frame_rate(input_fps) if input_fps is not None else None


class JobParams(BaseModel):
    """What to make of the input video."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    scale: Scale = Field(2, description="upscaling factor")
    format: Literal[FORMAT_NAMES] = Field(  # type: ignore[valid-type]
        "hls",
        validation_alias=AliasChoices("format", "output"),
        description="; ".join(f"{f.name}: {f.summary}" for f in FORMATS.values())
        + " (`output` is accepted as the field's older name)",
    )
    codec: Literal[CODEC_NAMES] = "h264"  # type: ignore[valid-type]
    crf: int = Field(18, ge=0, le=51, description="quality, 0 (lossless) to 51")
    fmp4: StrictBool = Field(
        False,
        description="HLS segments in fragmented MP4 (init.mp4, .m4s) for H.264 too; HEVC's "
        "always are (default: MPEG-TS for H.264)",
    )
    preset: Literal[PRESETS] | None = Field(  # type: ignore[valid-type]
        None, description="encoder preset; default: the codec's own (veryfast, p4 for NVENC)"
    )
    weights: str | None = Field(
        None,
        pattern=f"^{MODELS_NAME.pattern}$",
        description="a weights file in the service's models folder (CARN_STREAM_MODELS_DIR), "
        "e.g. a per-video model from `carn-stream tune`; default: the service's model",
        examples=["clip-x4.pth"],
    )
    input_fps: InputFps
    deinterlace: Deinterlace

    @model_validator(mode="after")
    def _preset_fits_codec(self) -> JobParams:
        if problem := preset_problem(self.codec, self.preset):
            raise ValueError(problem)
        if self.fmp4 and not FORMATS[self.format].is_folder:
            raise ValueError(f"fmp4 is for HLS outputs; a {self.format} job makes one file")
        return self

    @property
    def raw_rate(self) -> Fraction | None:
        return raw_rate(self.input_fps)

    @classmethod
    def from_stored(cls, text: str) -> JobParams:
        """A stored row's parameters: older rows' missing fields take their defaults, and
        fields no longer known are dropped (the API refuses unknown fields, the store not)."""
        stored = json.loads(text)
        known = {"output"} | set(cls.model_fields)
        return cls.model_validate({k: v for k, v in stored.items() if k in known})

    def to_stored(self) -> str:
        return self.model_dump_json()
