"""``carn-stream`` command line: serve, stats, eval, upscale, upscale-image, train, tune,
assess."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from carn_stream import __version__
from carn_stream.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """An error the user can act on: printed as one line, exit code 1."""


def _scale(text: str) -> int:
    from carn_stream.model.scales import SUPPORTED_SCALES

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value not in SUPPORTED_SCALES:
        raise argparse.ArgumentTypeError(
            f"unsupported scale {text!r}: choose one of {', '.join(map(str, SUPPORTED_SCALES))}"
        )
    return value


def _at_least(least: int):
    """An argparse type: a whole number of at least ``least``."""
    takes = "a positive whole number" if least == 1 else f"a whole number >= {least}"

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {takes}, got {text!r}")
        return value

    return whole


_positive = _at_least(1)


def _frame_rate(text: str):
    from carn_stream.pipeline.media.elementary import frame_rate

    try:
        return frame_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port number (1-65535; 0 picks a free one), got {text!r}"
        )
    return int(text)


def _precision_option(p: argparse.ArgumentParser) -> None:
    from carn_stream.precisions import NAMES, describe

    p.add_argument("--precision", choices=NAMES, metavar="MODE", help=f"{describe()}; default auto")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights", type=Path, help="weights file (default: CARN_WEIGHTS, cache, download)"
    )
    p.add_argument("--device", help="auto (default), cpu or cuda[:N]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carn-stream",
        description="Real-time video super-resolution with CARN-M.",
    )
    parser.add_argument("--version", action="version", version=f"carn-stream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _serve_command,
        _stats_command,
        _eval_command,
        _upscale_command,
        _upscale_image_command,
        _train_command,
        _tune_command,
        _assess_command,
        _speed_command,
    ):
        add(sub)
    return parser


def _serve_command(sub) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (jobs API, pages, metrics)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=_port, help="listen port (default 8000; 0: any free one)")
    p.add_argument("--data-dir", type=Path, help="job database and outputs")
    p.add_argument(
        "--weights", type=Path, help="weights file (default: CARN_WEIGHTS, cache, download)"
    )
    p.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    p.add_argument(
        "--ray", metavar="ADDRESS", help="run segments on this Ray cluster ('auto': this machine's)"
    )
    p.set_defaults(run=cmd_serve)


def _stats_command(sub) -> None:
    p = sub.add_parser("stats", help="parameters and Mult-Adds per scale (paper convention)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_stats)


def _eval_command(sub) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM on a folder of HR images (standard SR protocol)")
    _add_model_options(p)
    p.add_argument("--data", type=Path, required=True, help="folder of HR images")
    p.add_argument("--scale", type=_scale, required=True, help="2, 3 or 4")
    from carn_stream.precisions import describe

    p.add_argument(
        "--precision",
        default="fp32",
        help=f"one mode or a comma-separated list (default fp32): {describe()}",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="int8: HR images (a folder or one file) or a video to calibrate on instead of "
        "the shipped set (never the evaluation images)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=cmd_eval)


def _upscale_command(sub) -> None:
    from carn_stream.pipeline.media.codecs import CODEC_NAMES, PRESETS
    from carn_stream.pipeline.media.formats import FORMAT_NAMES

    p = sub.add_parser("upscale", help="upscale a video file (or a folder of them)")
    _add_model_options(p)
    p.add_argument(
        "input",
        help="a local video file (any container/codec FFmpeg reads), or a folder of them; "
        "URLs are for the service (POST /jobs)",
    )
    p.add_argument(
        "output", type=Path,
        help="a .mp4, .mkv or .mov file (the suffix picks the container), or a folder for HLS; "
        "for a folder INPUT, the folder for the outputs",
    )  # fmt: skip
    p.add_argument("--scale", type=_scale, required=True, help="2, 3 or 4")
    p.add_argument(
        "--format", choices=FORMAT_NAMES,
        help="default: OUTPUT's suffix (none: hls); for a folder INPUT, each input's own "
        "container where it is one of these, else mp4",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing output (default: refuse it; a folder INPUT skips it)",
    )  # fmt: skip
    p.add_argument(
        "--codec", default="h264", choices=CODEC_NAMES,
        help="default h264; 10-bit inputs stay 10-bit (h264: High10, hevc: Main10)",
    )  # fmt: skip
    p.add_argument("--crf", type=int, default=18, help="quality, 0 (lossless) to 51; default 18")
    p.add_argument(
        "--fmp4", action="store_true",
        help="HLS segments in fragmented MP4 (init.mp4, .m4s) for H.264 too; HEVC's always are "
        "(default: MPEG-TS for H.264)",
    )  # fmt: skip
    p.add_argument(
        "--preset", choices=PRESETS, metavar="PRESET",
        help="encoder preset: ultrafast ... veryslow for h264/hevc (default veryfast), "
        "p1 ... p7 for NVENC (default p4)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=_positive, help="frames per inference batch (default: 1 on CPU, 8 on CUDA)"
    )
    p.add_argument("--tile", type=_positive, help="LR tile side for frames too large for memory")
    _precision_option(p)
    p.add_argument(
        "--segment-seconds",
        type=float,
        help="target segment duration, at least 1 (default: CARN_STREAM_SEGMENT_SECONDS, 4)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        help="keeps finished segments so that running the command again resumes: a folder "
        "of its own, new, empty or an earlier run's; a folder holding other files is refused "
        "(default: .OUTPUT.carn-stream beside OUTPUT; for a folder of inputs, each output's "
        ".NAME.carn-stream in DIR)",
    )
    p.add_argument(
        "--input-fps", type=_frame_rate, metavar="FPS",
        help="frame rate of a raw H.264/HEVC input (.h264, .hevc: no container, no "
        "timestamps), e.g. 30, 29.97 or 30000/1001; default: the rate its header gives, else 25",
    )  # fmt: skip
    p.add_argument(
        "--no-deinterlace", dest="deinterlace", action="store_false", default=None,
        help="upscale frames flagged interlaced as they are (default: made progressive first, "
        "unless CARN_STREAM_DEINTERLACE=0); for progressive video flagged interlaced",
    )  # fmt: skip
    p.set_defaults(run=cmd_upscale)


def _upscale_image_command(sub) -> None:
    p = sub.add_parser(
        "upscale-image", help="upscale one image file (written as PNG, its transparency kept)"
    )
    _add_model_options(p)
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--scale", type=_scale, required=True, help="2, 3 or 4")
    p.add_argument("--tile", type=_positive, help="LR tile side for images too large for memory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _precision_option(p)
    p.set_defaults(run=cmd_upscale_image)


def _train_command(sub) -> None:
    from carn_stream.train_commands import FRAMES_PER_VIDEO, add_config_options

    p = sub.add_parser(
        "train",
        help="train CARN-M (the paper's recipe by default; resumable)",
        description="Train a multi-scale CARN-M on HR images and/or videos. LR inputs are made "
        "with the evaluation's bicubic. Every recipe value can be set by flag or --config.",
    )
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="folder of HR images and/or videos (repeatable)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        required=True,
        help="folder for config.json, log.jsonl, checkpoint.pt, weights.pth",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--init", help="start from weights: 'official' or a file (default: random)")
    p.add_argument("--val", type=Path, help="validation folder (default: hold out images)")
    p.add_argument(
        "--holdout-every",
        type=_at_least(0),
        default=20,
        help="without --val, every Nth image validates instead of training (0 or 1: none)",
    )
    p.add_argument("--frames-per-video", type=_positive, default=FRAMES_PER_VIDEO)
    p.add_argument("--weights", type=Path, help="weights file for --init official")
    p.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    add_config_options(p)
    p.set_defaults(run=cmd_train)


def _tune_command(sub) -> None:
    from carn_stream.model.recipe import TUNE_DEFAULTS
    from carn_stream.train_commands import add_config_options

    p = sub.add_parser(
        "tune",
        help="fine-tune CARN-M on one video (content-aware weights)",
        description="Fine-tune on frames of one HR video, hold some frames out, and report "
        "their PSNR before and after. Writes OUTPUT (.pth) and OUTPUT.json (the report).",
    )
    p.add_argument("video", help="HR video file")
    p.add_argument("output", type=Path, help="weights file to write (.pth)")
    p.add_argument(
        "--scale", type=_scale, nargs="+", default=[4],
        help="2, 3 or 4, or several (one model for all: each batch at one of them; default 4)",
    )  # fmt: skip
    p.add_argument("--frames", type=_positive, default=77, help="frames sampled (default 77)")
    p.add_argument(
        "--holdout-every",
        type=_at_least(2),
        default=7,
        help="every Nth sampled frame is held out for validation (default 7; at least 2)",
    )
    p.add_argument("--init", default="official", help="'official' (default) or a weights file")
    p.add_argument("--run-dir", type=Path, help="keep the run folder here")
    p.add_argument(
        "--degradation", choices=("bicubic", "encoded"), default="bicubic",
        help="LR frames: bicubic downscales (default; for sources already low-resolution) or "
        "the video's own copy encoded at 1/scale size (--codec, --crf): compression-aware",
    )  # fmt: skip
    from carn_stream.assess_command import add_storage_options

    add_storage_options(p)
    _add_model_options(p)
    add_config_options(p, TUNE_DEFAULTS, scales=False)
    p.set_defaults(run=cmd_tune)


def _assess_command(sub) -> None:
    from carn_stream.assess_command import add_assess_command

    add_assess_command(sub, _scale, _add_model_options)
    sub.choices["assess"].set_defaults(run=cmd_assess)


def _speed_command(sub) -> None:
    from carn_stream.speed_command import add_speed_command

    add_speed_command(sub, _scale, _add_model_options)


def cmd_assess(args: argparse.Namespace) -> int:
    from carn_stream.assess_command import cmd_assess as run

    return run(args, _settings(args))


def _settings(args: argparse.Namespace, precision: bool = True) -> Settings:
    """The settings with the command's model options over them (``precision=False``: the
    command's --precision is not the setting, e.g. eval's list of modes)."""
    return Settings.from_env().with_options(
        weights=getattr(args, "weights", None),
        device=getattr(args, "device", None),
        precision=getattr(args, "precision", None) if precision else None,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    settings = _settings(args).with_options(
        host=args.host, port=args.port, data_dir=args.data_dir, ray_address=args.ray
    )
    _check_listen(settings)  # a busy port is said at once, before torch and the model load
    _check_data_dir(settings.data_dir)

    import uvicorn

    from carn_stream.loading import start_worker
    from carn_stream.server.app import create_app
    from carn_stream.server.connections import http_options

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The service's own worker says how the weights were found (a download, the bundled
    # weights standing in); the worker process loads the same ones without saying it again.
    quiet = functools.partial(start_worker, settings, quiet=True)
    app = create_app(settings, functools.partial(start_worker, settings), quiet)
    http = http_options(settings.http_read_timeout_seconds, settings.http_max_connections,
                        settings.http_send_timeout_seconds)  # fmt: skip
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                log_config=_log_config(), **http)  # fmt: skip
    return EXIT_OK


def _log_config() -> dict:
    """uvicorn's own logging, its access log without signed links' signatures."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["media_links"] = {
        "()": "carn_stream.server.media_links.LogFilter"
    }
    config["handlers"]["access"]["filters"] = ["media_links"]
    return config


def _check_listen(settings: Settings) -> None:
    from carn_stream.listening import ListenError, check_ice_hosts, check_listen

    try:
        check_listen(settings.host, settings.port)
        check_ice_hosts(settings.live_ice_hosts)
    except ListenError as exc:
        raise CLIError(str(exc)) from None


def _check_data_dir(folder: Path) -> None:
    """The data folder is made if missing and must take writes; said in one line, before the
    model loads."""
    from carn_stream.server.admission import data_dir_writable

    if folder.exists() and not folder.is_dir():
        raise CLIError(f"data folder {folder} is not a folder; pass --data-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot make the data folder {folder}: {exc.strerror or exc}") from None
    if not data_dir_writable(folder):
        raise CLIError(f"the data folder {folder} does not take writes (read-only or full)")


def cmd_stats(args: argparse.Namespace) -> int:
    from carn_stream.model.complexity import describe_published_models

    rows = describe_published_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print("Mult-Adds for a 1280x720 output, convolutions only (the paper's Table 1 convention)")
    print(f"{'model':<8}{'':<7}{'params':>12}{'weights only':>14}{'x2':>9}{'x3':>9}{'x4':>9}")
    for row in rows:
        for source, counts in (("here", row), ("paper", row["paper"])):
            macs = "".join(f"{counts['mult_adds'][str(s)] / 1e9:>8.1f}G" for s in (2, 3, 4))
            only = f"{counts['params_weights_only']:>14,}" if source == "here" else " " * 14
            print(f"{row['model']:<8}{source:<7}{counts['params']:>12,}{only}{macs}")
    print(
        "params: multi-scale network with x2/x3/x4 upsamplers, fixed mean shift excluded;\n"
        "the paper's CARN-M figure (412K) counts conv weights without biases, its CARN figure\n"
        "(1,592K) counts weights and biases (see docs/MODEL.md)."
    )
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Set5-style evaluation in one or several precision modes (a comma-separated list, which
    is the command's own option, not a setting)."""
    from carn_stream.loading import load_model
    from carn_stream.model.evaluation import evaluate
    from carn_stream.pipeline.calibration import calibrate_from
    from carn_stream.pipeline.engine.infer import PRECISIONS, Engine, EngineConfig
    from carn_stream.pipeline.media.images import IMAGE_SUFFIXES, iter_images
    from carn_stream.progress import ProgressBar

    if not args.data.is_dir():
        raise CLIError(f"--data {args.data}: not a folder")
    modes = [m.strip() for m in args.precision.split(",") if m.strip()]
    unknown = [m for m in modes if m not in PRECISIONS]
    if unknown or not modes:
        raise CLIError(f"--precision {args.precision}: choose from {', '.join(PRECISIONS)}")
    if args.calibration is not None and "int8" not in modes:
        raise CLIError("--calibration calibrates --precision int8, which is not among "
                       f"{args.precision} (auto's int8 uses the shipped set)")  # fmt: skip
    count = sum(1 for p in args.data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    settings = _settings(args, precision=False)
    model, _ = load_model(settings)
    reports = []
    for mode in modes:
        engine = Engine(
            model,
            EngineConfig(device=settings.device, precision=mode, cache_dir=settings.cache_dir),
        )
        if engine.precision == "int8" and args.calibration is not None:
            calibrate_from(engine, args.calibration, args.scale)
        bar = ProgressBar(count, f"eval x{args.scale} {engine.precision}", unit="img")
        report = evaluate(
            iter_images(args.data),
            engine.upscale_rgb,
            args.scale,
            on_image=lambda score, bar=bar: bar.update(note=f"{score.name} {score.psnr:.2f} dB"),
        )
        bar.close()
        chosen = sorted({decision.mode for decision in engine.choices.values()})  # auto's
        reports.append((engine.precision, report, chosen))
    summaries = [
        {**report.summary(), "precision": mode, **({"chosen": chosen} if chosen else {})}
        for mode, report, chosen in reports
    ]
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries))
        return EXIT_OK
    for (mode, report, chosen), summary in zip(reports, summaries, strict=True):
        label = f"{mode}: {', '.join(chosen)}" if chosen else mode  # what auto chose
        print(f"{'image':<16}{'PSNR':>8}{'SSIM':>8}{'bicubic PSNR':>14}{'SSIM':>8}   [{label}]")
        for s in report.scores:
            print(
                f"{s.name:<16}{s.psnr:>8.2f}{s.ssim:>8.4f}"
                f"{s.bicubic_psnr:>14.2f}{s.bicubic_ssim:>8.4f}"
            )
        print(
            f"{'mean':<16}{summary['psnr']:>8.2f}{summary['ssim']:>8.4f}"
            f"{summary['bicubic_psnr']:>14.2f}{summary['bicubic_ssim']:>8.4f}"
        )
    if len(summaries) > 1:
        base = summaries[0]
        for summary in summaries[1:]:
            print(
                f"{summary['precision']} vs {base['precision']}: "
                f"{summary['psnr'] - base['psnr']:+.3f} dB PSNR, "
                f"{summary['ssim'] - base['ssim']:+.4f} SSIM"
            )
    return EXIT_OK


def cmd_upscale(args: argparse.Namespace) -> int:
    from carn_stream.upscale_command import cmd_upscale as run

    return run(args, _settings(args))


def cmd_train(args: argparse.Namespace) -> int:
    from carn_stream.train_commands import cmd_train as run

    return run(args, _settings(args))


def cmd_tune(args: argparse.Namespace) -> int:
    from carn_stream.train_commands import cmd_tune as run

    return run(args, _settings(args))


def cmd_upscale_image(args: argparse.Namespace) -> int:
    import numpy as np

    from carn_stream.loading import load_model
    from carn_stream.pipeline.engine.infer import Engine, EngineConfig
    from carn_stream.pipeline.media.images import read_image, write_png

    if args.output.suffix.lower() != ".png":
        raise CLIError(f"output {args.output} must be a .png file")
    if not args.output.parent.is_dir():
        raise CLIError(f"output folder {args.output.parent} does not exist")
    if args.output.is_dir():
        raise CLIError(f"output {args.output} is a folder")
    if args.output.exists() and not args.overwrite:  # the rule `upscale` keeps
        raise CLIError(f"output {args.output} exists; use --overwrite to replace it")
    image, alpha = read_image(args.input)
    settings = _settings(args)
    config = EngineConfig(
        device=settings.device,
        precision=settings.precision,
        tile=args.tile,
        cache_dir=settings.cache_dir,
    )
    engine = Engine(load_model(settings.with_overrides(device="cpu"))[0], config)
    out = engine.upscale_rgb(image, args.scale)
    if alpha is not None:  # upscaled by the model too, as a grey picture
        grey = engine.upscale_rgb(np.repeat(alpha[..., None], 3, axis=2), args.scale)
        alpha = np.round(grey.mean(axis=2)).astype(np.uint8)
    write_png(args.output, out, alpha)
    h, w = image.shape[:2]
    print(
        f"{args.input} {w}x{h} -> {args.output} {out.shape[1]}x{out.shape[0]}"
        f"{' with its transparency' if alpha is not None else ''} "
        f"(precision {engine.describe_precision()}, {engine.device})",
        file=sys.stderr,
    )
    return EXIT_OK


def _user_errors() -> tuple[type[BaseException], ...]:
    from carn_stream.model.weights import WeightsError
    from carn_stream.pipeline.errors import PipelineError
    from carn_stream.pipeline.media.images import ImageError
    from carn_stream.train_commands import TrainingError
    from carn_stream.upscale_command import UpscaleError

    return (
        CLIError,
        UpscaleError,
        TrainingError,
        WeightsError,
        ImageError,
        PipelineError,
        ValueError,
        RuntimeError,
        OSError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from carn_stream.allocator import relaunch_with_jemalloc, tune_allocator

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) in ("serve", "upscale"):
        try:
            choice = Settings.from_env().allocator
            relaunch_with_jemalloc(choice, list(sys.argv[1:] if argv is None else argv))
        except (ValueError, RuntimeError) as exc:
            print(f"carn-stream {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
    tune_allocator()
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return EXIT_OK
    try:
        return run(args)
    except KeyboardInterrupt:
        print("carn-stream: interrupted", file=sys.stderr)
        return 130
    except CLIError as exc:  # said without importing what the other errors come from (torch)
        print(f"carn-stream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except _user_errors() as exc:
        print(f"carn-stream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
