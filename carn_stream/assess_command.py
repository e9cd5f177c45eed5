"""``carn-stream assess``: store a title at 1/scale size, train its own compression-aware
model, and measure what that saves; and ``carn-stream tune --degradation encoded``.

``assess IN --scale 2`` makes the low-resolution copy the service would store (codec, CRF),
fine-tunes CARN-M on (copy frame, original frame) pairs outside the measured window, then
prints the report (bicubic, generic and the title's model; rate-quality curves with BD-rates)
and writes ``report.json``, ``report.svg`` (the curves), the title's weights and the copy into
``--out``. Each part's time is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from carn_stream.settings import Settings


class AssessError(ValueError):
    """A request the command refuses before doing any work."""


def _crf_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected CRFs like 22,26,30, got {text!r}") from exc
    if len(values) < 2 or not all(0 <= v <= 51 for v in values):
        raise argparse.ArgumentTypeError(f"give two or more CRFs from 0 to 51, got {text!r}")
    return values


def add_storage_options(p: argparse.ArgumentParser, crf_flag: str = "--crf") -> None:
    """How the low-resolution copy is stored: codec, CRF, preset."""
    from carn_stream.model.recipe import TITLE_STORE_CRF
    from carn_stream.pipeline.media.codecs import CODEC_NAMES, PRESETS

    p.add_argument("--codec", default="h264", choices=CODEC_NAMES,
                   help="codec of the stored copy (default h264)")  # fmt: skip
    p.add_argument(crf_flag, dest="store_crf", type=int, default=TITLE_STORE_CRF,
                   help=f"CRF of the stored copy (default {TITLE_STORE_CRF})")  # fmt: skip
    p.add_argument("--preset", choices=PRESETS, metavar="PRESET",
                   help="encoder preset (default: the codec's: veryfast for x264/x265)")


def add_assess_command(sub, scale_type, model_options) -> None:
    from carn_stream.model.recipe import TITLE_DEFAULTS
    from carn_stream.train_commands import add_config_options

    p = sub.add_parser(
        "assess",
        help="per-title report: compression-aware model, quality and bitrate saved",
        description="Store IN at 1/scale size as the service would (codec, CRF), train the "
        "title's own model on the copy's frames, and measure bicubic, the generic model and "
        "the title's model against the original (PSNR, SSIM, VMAF, temporal error), with the "
        "rate-quality curves of sending the original size against the copy plus upscaling.",
    )
    p.add_argument("input", type=Path, help="the title at its original size")
    p.add_argument("--scale", type=scale_type, default=2, help="2, 3 or 4 (default 2)")
    p.add_argument("--frames", type=int, default=12,
                   help="consecutive frames measured, from the middle (default 12)")  # fmt: skip
    p.add_argument("--crfs", type=_crf_list, default=(22, 26, 30, 34, 38),
                   help="CRFs of the rate-quality curves (default 22,26,30,34,38)")  # fmt: skip
    add_storage_options(p, "--store-crf")
    p.add_argument("--train-frames", type=int, default=48,
                   help="frames the title's model trains on (every 7th held out; default 48)")
    p.add_argument("--title-weights", type=Path,
                   help="the title's model, already trained (skips training)")  # fmt: skip
    p.add_argument("--generic-curve", action="store_true",
                   help="also draw the generic model's rate-quality curve")  # fmt: skip
    p.add_argument("--copy-cap-kbps", type=float, default=1500.0,
                   help="BD-rate also over the copies at most this bitrate (default 1500)")
    p.add_argument("--out", type=Path, help="output folder (default: IN's name + .assess)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    model_options(p)
    from carn_stream.precisions import NAMES

    p.add_argument("--precision", choices=NAMES, metavar="MODE", default="bf16",
                   help="inference precision of the upscalers (default bf16: 60 dB from fp32, "
                   "about twice its speed on a CPU)")
    add_config_options(p, TITLE_DEFAULTS, scales=False)


def _title_config(args: argparse.Namespace, scale: int, settings: Settings):
    from carn_stream.model.recipe import TITLE_DEFAULTS
    from carn_stream.train_commands import build_config

    config = build_config(args, {**TITLE_DEFAULTS, "amp": settings.train_amp})
    return config.with_overrides(scales=(scale,))  # --scale decides, a --config file's too


def _train(args, settings: Settings, source: Path, copy: Path, scale: int, weights: Path,
           run_dir: Path, frames: int, exclude: range, holdout_every: int = 7,
           another_run: str = "refuse"):  # fmt: skip
    """Fine-tune the generic model on the copy; returns (report, model). ``another_run``:
    what a checkpoint of another run in ``run_dir`` meets (refused, or replaced)."""
    from carn_stream.loading import load_model
    from carn_stream.model.inference import pick_device
    from carn_stream.pipeline.title_model import train_title_model
    from carn_stream.progress import ProgressBar

    config = _title_config(args, scale, settings)
    model, _ = load_model(settings.with_overrides(device="cpu"))
    bar = ProgressBar(config.steps, f"title model x{scale}", unit="steps")

    def on_progress(p) -> None:
        bar.update(note=f"step {p.step} loss {p.loss:.4f}")

    precision = getattr(args, "precision", None)
    report = train_title_model(model, source, copy, scale, weights, config, run_dir,
                               frames=frames, exclude=exclude, holdout_every=holdout_every,
                               device=pick_device(settings.device), on_progress=on_progress,
                               upscaler=lambda m: _engine_upscaler(m, settings, precision),
                               another_run=another_run)  # fmt: skip
    bar.close()
    return report, model.eval()


def _refuse_before_work(args: argparse.Namespace, scale: int, settings: Settings) -> None:
    """What can be refused before the copy is encoded or a folder made: the copy's codec, CRF
    and preset, the training settings and frame counts, the title's weights."""
    from carn_stream.pipeline.errors import OutputError
    from carn_stream.pipeline.media.encode import EncoderOptions, codec_settings

    try:
        codec_settings(EncoderOptions(args.codec, args.store_crf, args.preset))
    except OutputError as exc:
        raise AssessError(f"the stored copy: {exc}") from None
    _title_config(args, scale, settings)  # its refusal names the setting
    if getattr(args, "train_frames", 2) < 2:
        raise AssessError("--train-frames must be 2 or more")
    weights = getattr(args, "title_weights", None)
    if weights is not None and not weights.is_file():
        raise AssessError(f"--title-weights {weights}: no such file")


def cmd_tune_encoded(args: argparse.Namespace, settings: Settings) -> int:
    """``tune --degradation encoded``: train on the title's own encoded copy."""
    from carn_stream.pipeline.media.delivery import encode_copy

    scales = sorted(set(args.scale))
    if len(scales) != 1:
        raise AssessError("--degradation encoded trains one scale at a time")
    if args.output.suffix != ".pth":
        raise AssessError(f"output {args.output} must end in .pth")
    scale, video = scales[0], Path(args.video)
    if not video.is_file():
        raise AssessError(f"{video}: no such file")
    _refuse_before_work(args, scale, settings)
    # (a folder of its own when none is given, removed at the end: one was left in the
    # temporary folder by every tune, the service's too)
    own = args.run_dir is None
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="carn-tune-"))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        given, video = video, timed_input(video, run_dir)
        began = time.monotonic()
        copy_path = run_dir / f"copy-x{scale}-{args.codec}-crf{args.store_crf}.mp4"
        copy = encode_copy(video, copy_path, scale=scale, codec=args.codec, crf=args.store_crf,
                           preset=args.preset)  # fmt: skip
        copy_seconds = time.monotonic() - began
        report, _ = _train(args, settings, video, copy.path, scale, args.output, run_dir,
                           args.frames, range(0), args.holdout_every)  # fmt: skip
        out = {
            "video": str(given), "scales": [scale], "degradation": "encoded",
            "codec": args.codec, "crf": args.store_crf, "copy_kbps": round(copy.bitrate / 1000, 1),
            **report.to_dict(), "copy_seconds": round(copy_seconds, 1),
            "weights_bytes": args.output.stat().st_size,
            "config": _title_config(args, scale, settings).to_dict(),
        }  # fmt: skip
        args.output.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps({k: v for k, v in out.items() if k != "config"}))
        return 0
    finally:
        if own:
            shutil.rmtree(run_dir, ignore_errors=True)



def _engine_upscaler(model, settings: Settings, precision: str | None):
    from carn_stream.pipeline.engine.infer import Engine, EngineConfig

    config = EngineConfig(device=settings.device, precision=precision or settings.precision,
                          cache_dir=settings.cache_dir)  # fmt: skip
    return Engine(model, config).upscale_rgb


def cmd_assess(args: argparse.Namespace, settings: Settings) -> int:
    from carn_stream.loading import load_model
    from carn_stream.model import load_weights
    from carn_stream.model.imresize import bicubic_uint8
    from carn_stream.pipeline.media.delivery import encode_copy
    from carn_stream.pipeline.title_frames import frame_count
    from carn_stream.pipeline.title_report import assess_title, report_svg

    source: Path = args.input
    if not source.is_file():
        raise AssessError(f"{source}: no such file")
    if args.frames < 2:
        raise AssessError("--frames must be 2 or more (the temporal measure compares neighbours)")
    if not (math.isfinite(args.copy_cap_kbps) and args.copy_cap_kbps > 0):
        raise AssessError(f"--copy-cap-kbps must be a positive number, got {args.copy_cap_kbps:g}")
    scale = args.scale
    _refuse_before_work(args, scale, settings)
    out: Path = args.out or source.with_name(f"{source.stem}.assess")
    total = frame_count(source)  # a file that is no video is refused before the folder is made
    out.mkdir(parents=True, exist_ok=True)
    source = timed_input(source, out, _say(args))
    timings: dict[str, float] = {}
    began = time.monotonic()
    frames = min(args.frames, total)
    first = max(0, total // 2 - frames // 2)
    window = range(first, first + frames)
    say = _say(args)
    say(f"{source.name}: {total} frames; measuring frames {first}-{first + frames - 1}")
    t = time.monotonic()
    copy = encode_copy(source, out / f"copy-x{scale}-{args.codec}-crf{args.store_crf}.mp4",
                       scale=scale, codec=args.codec, crf=args.store_crf,
                       preset=args.preset)  # fmt: skip
    timings["copy"] = round(time.monotonic() - t, 1)
    say(f"stored copy {copy.width}x{copy.height} {args.codec} CRF {args.store_crf}: "
        f"{copy.bitrate / 1000:.0f} kbps ({timings['copy']} s)")  # fmt: skip
    training: dict[str, Any] | None = None
    t = time.monotonic()
    if args.title_weights:
        title, _ = load_model(settings.with_overrides(device="cpu"))
        load_weights(title, args.title_weights)
        title_path = args.title_weights
    else:
        title_path = out / f"title-x{scale}.pth"
        # (the output folder's own run: one of another copy, scale or frames is replaced)
        result, title = _train(args, settings, source, copy.path, scale, title_path,
                               out / "run", args.train_frames, window,
                               another_run="restart")  # fmt: skip
        training = result.to_dict()
        say(f"title model: held-out PSNR {result.generic_psnr:.2f} -> {result.tuned_psnr:.2f} dB"
            f" (bicubic {result.bicubic_psnr:.2f})")  # fmt: skip
    timings["training"] = round(time.monotonic() - t, 1)
    generic, _ = load_model(settings.with_overrides(device="cpu"))
    upscalers = {
        "bicubic": lambda im, s: bicubic_uint8(im, scale=float(s)),
        "generic CARN-M": _engine_upscaler(generic, settings, args.precision),
        "title CARN-M": _engine_upscaler(title.eval(), settings, args.precision),
    }
    curves = ["title CARN-M"] + (["generic CARN-M"] if args.generic_curve else [])
    t = time.monotonic()
    report = assess_title(source, scale, upscalers, out / "encodes", curve_upscalers=curves,
                          codec=args.codec, crfs=args.crfs, store_crf=args.store_crf,
                          frames=frames, start=first, preset=args.preset,
                          copies={args.store_crf: copy}, copy_cap_kbps=args.copy_cap_kbps,
                          vmaf_device=str(_device(settings)), on_step=say)  # fmt: skip
    timings["report"] = round(time.monotonic() - t, 1)
    timings["total"] = round(time.monotonic() - began, 1)
    svg = out / "report.svg"
    svg.write_text(report_svg(report))
    document = {**report.to_dict(), "title_weights": str(title_path), "training": training,
                "copy_kbps": round(copy.bitrate / 1000, 1), "timings": timings,
                "part_seconds": report.seconds, "plot": str(svg)}  # fmt: skip
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        print(json.dumps(document))
    else:
        print(format_report(document))
    return 0


def _device(settings: Settings):
    from carn_stream.model.inference import pick_device

    return pick_device(settings.device)


def timed_input(source: Path, folder: Path, say=None) -> Path:
    """``source``, or for a raw H.264/HEVC stream its copy with timestamps in ``folder`` (at
    the rate its header gives, else 25 fps): bit rates and times follow that rate."""
    from carn_stream.pipeline.media.elementary import copy_with_times, is_raw_stream

    if not is_raw_stream(source):
        return source
    copy = folder / "input.mp4"
    rate = copy_with_times(source, copy)
    if say is not None:
        say(f"{source.name}: a raw stream without timestamps, timed at {float(rate):g} fps")
    return copy


def _say(args: argparse.Namespace):
    def say(message: str) -> None:
        print(f"assess: {message}", file=sys.stderr, flush=True)

    return say


def _pct(value: float | None) -> str:
    return "n/a (no common quality range)" if value is None else f"{value:+.1f}%"


def format_report(doc: dict[str, Any]) -> str:
    """The report as text tables."""
    w, h = doc["size"]
    first, frames = doc["window"]
    lines = [
        f"{Path(doc['source']).name}: x{doc['scale']}, copy {w // doc['scale']}x"
        f"{h // doc['scale']} {doc['codec']} CRF {doc['store_crf']} ({doc['copy_kbps']} kbps), "
        f"frames {first}-{first + frames - 1} against the {w}x{h} original",
        "",
        f"{'variant':<18}{'PSNR dB':>9}{'SSIM':>8}{'VMAF':>8}{'temporal err':>14}",
    ]
    for v in doc["variants"]:
        lines.append(f"{v['name']:<18}{v['psnr']:>9.2f}{v['ssim']:>8.4f}{v['vmaf']:>8.2f}"
                     f"{v['temporal']:>14.3f}")  # fmt: skip
    lines += ["", f"{'curve':<18}{'CRF':>5}{'kbps':>10}{'PSNR dB':>9}{'VMAF':>8}"]
    for name, points in doc["curves"].items():
        for p in points:
            lines.append(f"{name:<18}{p['crf']:>5}{p['kbps']:>10.1f}{p['psnr']:>9.2f}"
                         f"{p['vmaf']:>8.2f}")  # fmt: skip
    lines.append("")
    for name, rates in doc["bd_rate"].items():
        capped = ""
        if "vmaf_capped" in rates:
            capped = (f"; copies <= {doc['copy_cap_kbps']:g} kbps: VMAF "
                      f"{_pct(rates['vmaf_capped'])}, PSNR {_pct(rates.get('psnr_capped'))}")
        lines.append(f"BD-rate of {name} vs original size: VMAF {_pct(rates['vmaf'])}, "
                     f"PSNR {_pct(rates['psnr'])}{capped}")  # fmt: skip
        for measure, ranges in doc["wins_kbps"][name].items():
            text = ", ".join(f"{lo}-{hi}" for lo, hi in ranges) or "nowhere in the common range"
            lines.append(f"  upscaling wins by {measure.upper()} at {text} kbps")
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in doc["timings"].items())
    inner = ", ".join(f"{k} {v:.0f} s" for k, v in doc["part_seconds"].items())
    lines += ["", f"time: {parts}", f"report parts: {inner}", f"plot: {doc['plot']}"]
    return "\n".join(lines)
