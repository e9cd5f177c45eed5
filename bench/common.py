"""What the benchmarks share: the machine's description, the official model, real frames."""

from __future__ import annotations

import os
import platform
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

DATA = Path(os.environ.get("CARN_STREAM_TEST_DATA", ROOT.parent / "shared" / "data"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def official_model() -> torch.nn.Module:
    from carn_stream.model import carn_m, load_weights

    model = carn_m()
    load_weights(model, Path(os.environ.get("CARN_WEIGHTS", DATA / "weights" / "carn_m.pth")))
    return model.eval()


def real_frames(width: int, height: int, count: int, clip: str = "bigbuckbunny.mp4"):
    """``count`` RGB frames (HxWx3 uint8) of a real clip, area-downscaled to width x height,
    taken a few frames apart so they differ."""
    frames = []
    with av.open(str(DATA / "video" / clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 7 == 3:
                small = frame.reformat(width=width, height=height, interpolation="AREA")
                frames.append(small.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return [np.ascontiguousarray(f) for f in frames]


def emit_table(table: str, markdown: Path | None) -> None:
    """Print a result table, and write it to ``markdown`` when given."""
    print(table)
    if markdown:
        markdown.write_text(table + "\n")


def make_clip(source: Path, width: int, height: int, frames: int, dest: Path) -> Path:
    """The first ``frames`` frames of ``source`` at width x height, H.264 (crf 10), a keyframe
    each second."""
    with av.open(str(source)) as src, av.open(str(dest), "w") as out:
        in_stream = src.streams.video[0]
        rate = in_stream.average_rate or 25
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        gop = f"keyint={round(rate)}:min-keyint={round(rate)}:scenecut=0"
        stream.codec_context.options = {"crf": "10", "preset": "veryfast", "x264-params": gop}
        for i, frame in enumerate(src.decode(in_stream)):
            if i >= frames:
                break
            small = frame.reformat(
                width=width, height=height, format="yuv420p", interpolation="AREA"
            )
            small.pts, small.time_base = i, 1 / Fraction(rate)  # one frame per tick
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    return dest
