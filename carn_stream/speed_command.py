"""``carn-stream speed``: how fast this machine upscales, before a long job finds out.

For each input size the engine upscales a few frames as the pipeline runs it (upload, colour
conversion, the network, 4:2:0 conversion, download), in each precision mode asked for, and the
table gives milliseconds and frames per second per frame and whether that keeps up with 25 and
30 fps video. Frames come from IN (its first frames, resized to each size) or, without one,
from the real pictures the package ships to calibrate int8 (Big Buck Bunny crops). ``auto``
measures its modes on the first frame, as it does on a video, and remembers its choice in the
cache as it does there; the row names the mode it chose.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from carn_stream.settings import Settings

#: Sizes measured by default: small inputs on a CPU, up to 720p on a GPU.
CPU_SIZES = ((176, 144), (320, 180), (640, 360))
GPU_SIZES = ((320, 180), (640, 360), (960, 540), (1280, 720))
RATES = (25, 30)  #: frame rates the verdict is given for
MIN_RUNS, MAX_RUNS = 3, 50


class SpeedError(ValueError):
    """A request the command refuses before doing any work."""


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for part in text.split(","):
        w, _, h = part.strip().lower().partition("x")
        if not (w.isdigit() and h.isdigit()) or not (8 <= int(w) <= 7680 and 8 <= int(h) <= 4320):
            raise argparse.ArgumentTypeError(
                f"expected sizes like 320x180,640x360 (8 to 7680 x 8 to 4320), got {text!r}"
            )
        sizes.append((int(w), int(h)))
    return tuple(sizes)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, at most 60, got {text!r}")
    return value


def add_speed_command(sub, scale_type, model_options: Callable) -> None:
    from carn_stream.precisions import NAMES

    p = sub.add_parser(
        "speed",
        help="how fast this machine upscales: frames per second per size and precision",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("input", nargs="?", type=Path,
                   help="a video whose first frames to use (default: pictures the package ships)")
    p.add_argument("--scale", type=scale_type, default=2, help="2, 3 or 4 (default 2)")
    p.add_argument("--sizes", type=_sizes,
                   help="input sizes, e.g. 320x180,640x360 (default: 176x144, 320x180, 640x360 "
                   "on a CPU; 320x180 to 1280x720 on a GPU)")  # fmt: skip
    p.add_argument("--precision",
                   help=f"precision modes, comma-separated, from {', '.join(NAMES)} (default: "
                   "the CARN_STREAM_PRECISION setting, auto unless set)")  # fmt: skip
    p.add_argument("--seconds", type=_seconds, default=2.0,
                   help="time spent measuring each row, after its first frame (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON")
    model_options(p)
    p.set_defaults(run=cmd_speed)


@dataclass
class Row:
    input: str  #: WxH
    output: str
    scale: int
    precision: str  #: as asked
    chosen: str  #: the mode that ran (auto's choice)
    ms: float  #: median milliseconds per frame
    fps: float
    runs: int

    def keeps_up(self, rate: int) -> bool:
        return self.fps >= rate


def cmd_speed(args: argparse.Namespace) -> int:
    import torch

    from carn_stream.loading import load_model
    from carn_stream.model.inference import pick_device
    from carn_stream.pipeline.engine.infer import PRECISIONS, Engine, EngineConfig

    settings = Settings.from_env().with_options(weights=args.weights, device=args.device)
    asked = args.precision or settings.precision
    modes = [m.strip() for m in asked.split(",") if m.strip()]
    unknown = [m for m in modes if m not in PRECISIONS]
    if unknown or not modes:
        raise SpeedError(f"--precision {asked}: choose from {', '.join(PRECISIONS)}")
    if args.input is not None and not args.input.is_file():
        raise SpeedError(f"{args.input}: no such file")
    device = pick_device(settings.device)
    sizes = args.sizes or (GPU_SIZES if device.type == "cuda" else CPU_SIZES)
    pictures = _pictures(args.input)
    model, _ = load_model(settings.with_overrides(device="cpu"))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    print(_header(device, pictures.source), file=sys.stderr)
    rows = []
    for width, height in sizes:
        frames = pictures.at(width, height)
        for mode in modes:
            config = EngineConfig(device=str(device), precision=mode, cache_dir=settings.cache_dir)
            engine = Engine(model, config)
            rows.append(_measure(engine, frames, args.scale, mode, args.seconds, sync))
            print(f"  {rows[-1].input} {mode}: {rows[-1].fps:.1f} fps", file=sys.stderr)
    if args.json:
        print(json.dumps({"device": str(device), "content": pictures.source,
                          "rows": [asdict(r) for r in rows]}, indent=2))  # fmt: skip
    else:
        print(table(rows))
    return 0


def _measure(engine, frames: list[np.ndarray], scale: int, mode: str, seconds: float,
             sync: Callable[[], None]) -> Row:  # fmt: skip
    from carn_stream.pipeline.colour import ColourSpec

    rgb, out = ColourSpec("rgb"), ColourSpec("yuv", bits=8, matrix=1)
    batches = [[frame[None]] for frame in frames]
    engine.upscale(batches[0], rgb, scale, out)  # first use: auto's measurement, compiles
    sync()
    times: list[float] = []
    started = time.monotonic()
    while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or
                                     time.monotonic() - started < seconds):  # fmt: skip
        begin = time.perf_counter()
        engine.upscale(batches[len(times) % len(batches)], rgb, scale, out)
        sync()
        times.append(time.perf_counter() - begin)
    chosen = sorted({d.mode for d in engine.choices.values()}) or [engine.precision]
    ms = statistics.median(times) * 1000
    h, w = frames[0].shape[:2]
    return Row(f"{w}x{h}", f"{w * scale}x{h * scale}", scale, mode, ",".join(chosen), ms,
               1000 / ms, len(times))  # fmt: skip


def table(rows: list[Row]) -> str:
    """The rows as a text table, with the real-time verdicts."""
    head = ["input", "output", "precision", "ms/frame", "fps", *(f"{r} fps" for r in RATES)]
    body = []
    for row in rows:
        shown = row.precision if row.chosen == row.precision else f"{row.precision} ({row.chosen})"
        verdicts = ["yes" if row.keeps_up(r) else f"no ({row.fps / r:.2f}x)" for r in RATES]
        body.append([row.input, row.output, shown, f"{row.ms:.1f}", f"{row.fps:.1f}", *verdicts])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
             for line in [head, *body]]  # fmt: skip
    lines.append(
        "The model as the pipeline runs it, without decoding and encoding, which share the "
        "machine with it. Real time: as many frames per second as the video shows, or more."
    )
    return "\n".join(line.rstrip() for line in lines)


def _header(device, source: str) -> str:
    import torch

    from carn_stream.pipeline.engine.cpu import cpu_features

    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        features = ", ".join(cpu_features()) or "none of note"
        where = f"CPU, {torch.get_num_threads()} threads, features: {features}"
    return f"carn-stream speed on {device} ({where}), torch {torch.__version__}; frames: {source}"


@dataclass(frozen=True)
class _Pictures:
    source: str  #: what the frames are
    frames: tuple[np.ndarray, ...]  #: HxWx3 uint8 RGB

    def at(self, width: int, height: int) -> list[np.ndarray]:
        """The frames resized (area) to ``width`` x ``height``."""
        import av

        out = []
        for rgb in self.frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            out.append(frame.reformat(width, height, interpolation="AREA").to_ndarray())
        return out


def _pictures(source: Path | None, count: int = 4) -> _Pictures:
    if source is not None:
        from carn_stream.pipeline.frames import SourceFrame
        from carn_stream.pipeline.media.decode import demux_frames, open_input
        from carn_stream.pipeline.sampling import frame_to_rgb

        frames = []
        with open_input(source) as container:
            for item in demux_frames(container):
                if isinstance(item, SourceFrame):
                    frames.append(frame_to_rgb(item))
                if len(frames) == count:
                    break
        if not frames:
            raise SpeedError(f"{source}: no video frame could be decoded")
        return _Pictures(source.name, tuple(frames))
    from carn_stream.pipeline.engine.int8 import shipped_calibration

    crops = list(shipped_calibration().frames)  # 32 crops of 64x64
    mosaic = np.concatenate([np.concatenate(crops[r * 8:(r + 1) * 8], axis=1)
                             for r in range(4)], axis=0)  # fmt: skip
    return _Pictures("Big Buck Bunny crops shipped with the package", (mosaic,))
