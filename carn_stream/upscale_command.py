"""``carn-stream upscale``: a video file in segments, resumable from its work folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carn_stream.settings import Settings


class UpscaleError(Exception):
    """A request the command refuses before doing any work."""


def default_work_dir(output: Path) -> Path:
    """Beside the output: ``.NAME.carn-stream``."""
    return output.parent / f".{output.name}.carn-stream"


def cmd_upscale(args: argparse.Namespace, settings: Settings) -> int:
    from carn_stream.loading import start_worker
    from carn_stream.pipeline.encode import EncoderOptions, codec_settings
    from carn_stream.pipeline.executors import InProcessExecutor
    from carn_stream.pipeline.formats import format_for_path
    from carn_stream.stopping import run_stoppable

    source = Path(args.input)
    if not source.is_file():
        raise UpscaleError(f"{source}: no such file")
    fmt = format_for_path(args.output, args.format)
    seconds = args.segment_seconds or settings.segment_seconds
    encoder = EncoderOptions(args.codec, args.crf, args.preset)
    codec_settings(encoder)  # refuse a bad codec or crf before loading anything
    if seconds < 1:
        raise UpscaleError("--segment-seconds must be at least 1 second")
    work = args.work_dir or default_work_dir(args.output)
    if not fmt.is_folder and not args.output.parent.is_dir():
        raise UpscaleError(f"output folder {args.output.parent} does not exist")
    worker = start_worker(settings, tile=args.tile)
    executor = InProcessExecutor(worker)
    try:
        return run_stoppable(
            _upscale(args, settings, fmt, encoder, seconds, work, executor),
            f"abandoning the segments in progress; finished ones stay in {work} "
            "(run the same command again to resume)",
        )
    finally:
        worker.close()


async def _upscale(args, settings, fmt, encoder, seconds, work, executor) -> int:
    from carn_stream.pipeline.executors import PlanRequest
    from carn_stream.pipeline.run import PipelineOptions
    from carn_stream.pipeline.segmented import SegmentedRun
    from carn_stream.pipeline.workdir import WorkDir, run_identity
    from carn_stream.progress import ProgressBar

    source: Path = Path(args.input)
    folder = WorkDir(work)
    identity = run_identity(
        source,
        scale=args.scale,
        format=fmt.name,
        codec=encoder.codec,
        crf=encoder.crf,
        preset=encoder.preset,
        segment_seconds=seconds,
        weights=str(settings.weights) if settings.weights else None,
        precision=settings.precision,
    )
    try:
        plan, done = folder.resume(identity)
        frames_done = sum(r.frames for r in done.values())
        print(
            f"carn-stream: resuming from {work}: {len(done)} of {len(plan.segments)} segments "
            f"({frames_done} frames) already done",
            file=sys.stderr,
        )
    except LookupError:
        output = args.output
        if fmt.is_folder and output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise UpscaleError(f"HLS output {output} exists and is not an empty folder") from None
        plan, _ = await executor.plan(PlanRequest(source, seconds))
        folder.start(identity, plan)
        done = {}
    batch = args.batch or (8 if executor.worker.device.type == "cuda" else 1)
    options = PipelineOptions(scale=args.scale, encoder=encoder, batch_size=batch)
    bar = ProgressBar(plan.frames, f"upscale x{args.scale}", unit="frames")
    bar.done = sum(r.frames for r in done.values())
    said: list[bool] = []

    def on_frame(report) -> None:
        if not said:  # auto decides on the first frame
            said.append(True)
            print(f"precision {executor.worker.engine.describe_precision()}", file=sys.stderr)
        bar.update()

    run = SegmentedRun(
        source=source,
        plan=plan,
        fmt=fmt,
        output=args.output,
        work_dir=work,
        options=options,
        executor=executor,
        done=done,
        in_flight=executor.slots,
        on_frame=on_frame,
        on_done=lambda result: folder.record(result, run.segment_path(result.index)),
    )
    output = await run.execute()
    bar.close()
    folder.remove()
    seconds_taken = sum(r.seconds for r in run.done.values())
    print(
        f"{source} {plan.width}x{plan.height} -> {output} x{args.scale}: {plan.frames} frames "
        f"in {len(plan.segments)} segments ({executor.worker.device}, "
        f"{seconds_taken:.1f} s of segment work)",
        file=sys.stderr,
    )
    return 0
