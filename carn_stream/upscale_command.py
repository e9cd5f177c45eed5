"""``carn-stream upscale``: a video file, or every video in a folder, in segments, resumable
from each output's work folder.

One output rule for every format: an existing output is refused unless ``--overwrite``
(a folder run skips it instead), and missing parent folders are created. An output that is an
earlier, interrupted run of the same command is not "existing": it is resumed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carn_stream.settings import Settings


class UpscaleError(Exception):
    """A request the command refuses before doing any work."""


#: The longest file name most file systems take (bytes).
NAME_MAX = 255


def default_work_dir(output: Path, parent: Path | None = None) -> Path:
    """``.NAME.carn-stream`` beside the output (or in ``parent``); for a name too long to
    take the suffix, a digest of it instead."""
    name = f".{output.name}.carn-stream"
    if len(os.fsencode(name)) > NAME_MAX:
        name = f".{hashlib.sha256(os.fsencode(output.name)).hexdigest()[:24]}.carn-stream"
    return (output.parent if parent is None else parent) / name


@dataclass
class Item:
    """One input -> output of this command, and how it went."""

    source: Path
    output: Path
    fmt: Any  #: OutputFormat
    work: Path
    timed: bool = False  #: a raw stream, read from its copy with timestamps in ``work``
    listed: str | None = None  #: "HLS" or "DASH": read from what it lists, joined in ``work``
    identity: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  #: what identifies the model's weights, once loaded
    resumed: tuple | None = None  #: (plan, done segments) of an interrupted run
    plan: Any = None  #: SegmentPlan
    frames: int = 0
    seconds: float = 0.0
    result: str = "pending"
    done: set[int] = field(default_factory=set)  #: segments finished (resumed ones included)
    made: dict[int, int] = field(default_factory=dict)  #: unfinished segment -> frames made
    run: Any = None  #: its SegmentedRun, once segments are made
    lock: Any = None  #: the work folder held for this command (:meth:`WorkDir.hold`)

    @property
    def input(self) -> Path:
        """What the run reads: the source, a raw stream's copy with timestamps, or what a
        playlist or manifest lists, joined."""
        from carn_stream.pipeline.execution.workdir import WorkDir

        if self.listed:
            return WorkDir(self.work).joined_input
        return WorkDir(self.work).timed_input if self.timed else self.source


def stop_note(items: list[Item], where: Path | str) -> str:
    """What a stop now leaves: the segments done (kept in ``where``), an output in its join
    (stopped: a rerun only joins), and the frames a rerun makes again (those of the segments
    in progress)."""
    running = [item for item in items if item.plan is not None and item.result == "pending"]
    if not running:
        return "no segment was started; nothing to keep"
    joining = [i for i in running if i.run is not None and len(i.done) == len(i.plan.segments)]
    said = []
    if joining:
        outputs = ", ".join(str(item.output) for item in joining)
        said.append(f"stopping the join of {outputs}: every segment is done and stays in "
                    f"{where}, so running the same command again only joins them")  # fmt: skip
    rest = [item for item in running if item not in joining]
    if rest:
        said.append(_abandoning(rest, where))
    return "; ".join(said)


def _abandoning(running: list[Item], where: Path | str) -> str:
    total = sum(len(item.plan.segments) for item in running)
    done = sum(len(item.done) for item in running)
    redo = sum(sum(item.made.values()) for item in running)
    lost = f"makes again the {redo} frame{'s' * (redo != 1)} of the segments in progress"
    if done == 0:
        return (
            f"abandoning the segments in progress; no segment is done yet (0 of {total}), so "
            f"running the same command again starts from the first frame and {lost}"
        )
    return (
        f"abandoning the segments in progress; {done} of {total} segments are done and stay in "
        f"{where}: running the same command again resumes from them and {lost}"
    )


def cmd_upscale(args: argparse.Namespace, settings: Settings) -> int:
    from carn_stream.loading import start_worker
    from carn_stream.pipeline.execution.choice import open_executor
    from carn_stream.pipeline.execution.workdir import ForeignWorkDir, WorkDir
    from carn_stream.pipeline.media.encode import EncoderOptions, codec_settings
    from carn_stream.server.workers import executor_choice
    from carn_stream.stopping import run_stoppable

    source = local_input(args.input)
    seconds = settings.segment_seconds if args.segment_seconds is None else args.segment_seconds
    if args.deinterlace is None:  # no --no-deinterlace: the setting
        args.deinterlace = settings.deinterlace
    encoder = EncoderOptions(args.codec, args.crf, args.preset)
    folder_run = source.is_dir()
    if folder_run:
        items = _folder_items(source, args.output, args)
    elif not source.is_file():
        raise UpscaleError(f"{source}: no such file")
    else:
        items = [_item(source, args.output, args.format, args)]
    codec_settings(encoder)  # refuse a bad codec or crf before loading anything
    if args.fmp4 and not any(item.fmt.is_folder for item in items):
        raise UpscaleError("--fmp4 is for HLS outputs (a folder); files are MP4, MKV or MOV")
    if not (math.isfinite(seconds) and seconds >= 1):  # nan passed a "< 1" check, 0 was 4
        raise UpscaleError(f"--segment-seconds must be at least 1 second, got {seconds:g}")
    locks = _lock_budget()
    for item in items:
        made = not item.work.exists()
        try:
            WorkDir(item.work).check_own(item.source, item.output)
            # Held until the command ends, from before anything of it is read or claimed
            # (where it cannot be made, the output's checks say why).
            with contextlib.suppress(OSError):
                if next(locks, False):
                    item.lock = WorkDir(item.work).hold()
        except ForeignWorkDir as exc:
            if not folder_run:
                raise UpscaleError(str(exc)) from None
            item.result = f"failed: {exc}"
            continue
        try:
            _identify(item, args, settings, encoder, seconds)
            _claim(item, args.overwrite, skip_existing=folder_run)
        except BaseException:
            _let_go(item, made)
            raise
        if item.result != "pending":  # (skipped, or failed: it will not run)
            _let_go(item, made)
    args.batch = args.batch or settings.batch_size  # 0: the executor's device decides
    # The service's executor, as the same settings choose it (a worker process by default).
    factory = functools.partial(start_worker, settings, args.tile)
    executor = open_executor(executor_choice(settings), factory)
    where = items[0].work if not folder_run else "each output's work folder"
    try:
        return run_stoppable(
            _upscale(args, items, encoder, seconds, executor, folder_run, settings),
            lambda: stop_note(items, where),
        )
    finally:
        for item in items:
            _let_go(item, only_if_empty=True)


# --------------------------------------------------------------------------- what to make


def local_input(text: str) -> Path:
    """INPUT as a local path; a URL is refused as typed (the command reads files only)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise UpscaleError(
            f"{text}: upscale reads local files, not URLs; download it first, or give the URL "
            "to the service (carn-stream serve, POST /jobs)"
        )
    return Path(text)


def _item(source: Path, output: Path, format_name: str | None, args) -> Item:
    from carn_stream.pipeline.media.formats import format_for_path

    fmt = format_for_path(output, format_name).for_codec(args.codec, args.fmp4)
    _refuse_replacing(source, output, "choose another output")
    work = args.work_dir if args.work_dir is not None else default_work_dir(output)
    return Item(source, output, fmt, work)


def _refuse_replacing(source: Path, output: Path, instead: str) -> None:
    """An output that is the input's file (by any name or path but a link of its own) is
    refused, even with ``--overwrite``: the finished output is renamed over that name, and the
    input would be lost. (An output that is a link to the input is replaced by the output; the
    input stays.)"""
    if output.is_file() and not output.is_symlink() and os.path.samefile(source, output):
        raise UpscaleError(f"{source} would be replaced by its own output; {instead}")


def _folder_items(folder: Path, out_dir: Path, args) -> list[Item]:
    """Every video in ``folder`` (by suffix, not recursive) -> one output each in ``out_dir``:
    the format asked for, else the input's own container where it is one we write, else MP4."""
    from carn_stream.pipeline.media.elementary import RAW_STREAM_SUFFIXES
    from carn_stream.pipeline.media.formats import FORMATS, SUFFIXES
    from carn_stream.pipeline.media.input_formats import VIDEO_SUFFIXES

    if out_dir.exists() and not out_dir.is_dir():
        raise UpscaleError(f"{out_dir} is not a folder (a folder of inputs needs one for outputs)")
    suffixes = VIDEO_SUFFIXES | RAW_STREAM_SUFFIXES
    sources = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not sources:
        raise UpscaleError(f"{folder}: no video files ({', '.join(sorted(suffixes))})")
    items: list[Item] = []
    taken: dict[Path, Path] = {}
    for source in sources:
        if args.format is not None:
            fmt = FORMATS[args.format].for_codec(args.codec, args.fmp4)
        else:
            fmt = SUFFIXES.get(source.suffix.lower(), FORMATS["mp4"])
        output = out_dir / (source.stem + fmt.suffix)
        if output in taken:
            raise UpscaleError(
                f"{taken[output].name} and {source.name} would both be written to {output}"
            )
        _refuse_replacing(source, output, "use another folder")
        taken[output] = source
        items.append(Item(source, output, fmt, default_work_dir(output, args.work_dir)))
    return items


def _identify(item: Item, args, settings: Settings, encoder, seconds: float) -> None:
    """What makes the run resumable, and an interrupted run of it if there is one."""
    from carn_stream.pipeline.errors import PipelineError
    from carn_stream.pipeline.execution.workdir import WorkDir, run_identity
    from carn_stream.pipeline.media.elementary import is_raw_stream
    from carn_stream.server.inputs.listed_fetch import HEAD_BYTES, listing_kind

    try:
        with open(item.source, "rb") as file:
            item.listed = listing_kind(file.read(HEAD_BYTES))
    except OSError:
        item.listed = None  # its plan says why
    try:
        item.timed = not item.listed and is_raw_stream(item.source)
    except PipelineError:
        item.timed = False  # its plan says why
    rate = args.input_fps if item.timed else None

    item.identity = run_identity(
        item.source,
        scale=args.scale,
        format=item.fmt.name,
        codec=encoder.codec,
        crf=encoder.crf,
        preset=encoder.preset,
        segment_seconds=seconds,
        output=str(item.output.resolve()),  # (an HLS folder's segments are in it)
        weights=str(settings.weights) if settings.weights else None,
        precision=settings.precision,
        **({"input_fps": str(rate)} if rate is not None else {}),
        **({} if args.deinterlace else {"deinterlace": False}),
        **({"fmp4": True} if item.fmt.fragmented else {}),
    )
    try:
        item.resumed = WorkDir(item.work).resume(item.identity)
    except LookupError:
        item.resumed = None


def _lock_budget() -> Iterator[bool]:
    """Whether each next work folder may be held (an open file each): as many as the open
    files' limit allows, raised to its hard limit, less room for the run's own files; past
    that (a folder run of thousands of files) the rest run unheld."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    budget = max(0, (soft if soft != resource.RLIM_INFINITY else 1 << 16) - 256)
    yield from (True for _ in range(budget))
    while True:
        yield False


def _let_go(item: Item, made: bool = False, only_if_empty: bool = False) -> None:
    """Let an item's work folder go: removed where it was ``made`` for an item that will not
    run, or where nothing but its lock is left in it (``only_if_empty``: a command that failed
    before its runs wrote anything leaves no folder behind)."""
    from carn_stream.pipeline.execution.workdir import LOCK_FILE, WorkDir

    if item.lock is None:
        return
    with contextlib.suppress(OSError):
        if made or (only_if_empty and [e.name for e in item.work.iterdir()] == [LOCK_FILE]):
            WorkDir(item.work).remove()
    item.lock.close()
    item.lock = None


def _claim(item: Item, overwrite: bool, skip_existing: bool) -> None:
    """The one output rule (see :meth:`OutputFormat.claim`); a folder run skips outputs that
    exist instead of refusing them (an interrupted one that cannot be resumed fails)."""
    from carn_stream.pipeline.errors import OutputError
    from carn_stream.pipeline.execution.workdir import PLAN_FILE

    resuming = item.resumed is not None
    if skip_existing and not overwrite and not resuming and item.fmt.existing(item.output):
        if (item.work / PLAN_FILE).is_file():  # an interrupted run of other options or input
            item.result = (f"failed: {item.output} is an interrupted run's, with other options "
                           "or another input; --overwrite makes it again")  # fmt: skip
        else:
            item.result = "skipped (exists)"
        return
    try:
        item.fmt.claim(item.output, overwrite, resuming)
    except OutputError as exc:
        if not skip_existing:
            raise
        item.result = f"failed: {exc}"


# --------------------------------------------------------------------------- running


async def _upscale(args, items: list[Item], encoder, seconds, executor, folder_run,
                   settings: Settings) -> int:  # fmt: skip
    from carn_stream.loading import weights_in_use
    from carn_stream.pipeline.execution.workdir import WorkDir

    await executor.start()
    # (once loaded: the official file came, or not; and the device "auto" found)
    weights = f"{weights_in_use(settings)} on {executor.device}"
    for item in items:
        item.weights = weights
        if item.resumed is not None and WorkDir(item.work).weights() != weights:
            item.resumed = None  # its segments are another model's
            print(f"carn-stream: {item.work} holds segments made with other weights or on "
                  f"another device: making {item.output} afresh", file=sys.stderr)  # fmt: skip
    try:
        return await _upscale_items(args, items, seconds, encoder, executor, folder_run)
    finally:
        task = asyncio.current_task()
        if not (task and task.cancelling()):  # stopped by a signal: the process ends now, and
            await executor.close()  # a worker process ends with it, without being waited for


async def _upscale_items(args, items: list[Item], seconds, encoder, executor, folder_run) -> int:
    from carn_stream.pipeline.errors import PipelineError
    from carn_stream.progress import ProgressBar

    todo = [item for item in items if item.result == "pending"]
    for item in todo:
        try:
            await _plan(args, item, seconds, executor)
        except (PipelineError, ValueError, OSError) as exc:
            if not folder_run:
                raise
            item.result = f"failed: {exc}"
    todo = [item for item in todo if item.result == "pending"]
    total = sum(item.plan.frames for item in todo)
    label = f"upscale x{args.scale}" + (f" {len(todo)} files" if folder_run else "")
    bar = ProgressBar(total, label, unit="frames")
    bar.done = sum(sum(r.frames for r in item.resumed[1].values()) for item in todo if item.resumed)
    for item in todo:
        started = time.monotonic()
        try:
            await _upscale_one(args, item, encoder, executor, bar, folder_run)
        except (PipelineError, OSError) as exc:
            if not folder_run:
                raise
            item.result = f"failed: {exc}"
        else:
            item.result = "resumed, done" if item.resumed else "done"
            item.frames = item.plan.frames
        item.seconds = time.monotonic() - started
    bar.close()
    if folder_run:
        print(summary_table(items))
        return 1 if any(item.result.startswith("failed") for item in items) else 0
    item = items[0]
    print(
        f"{item.source} {item.plan.width}x{item.plan.height} -> {item.output} x{args.scale}: "
        f"{item.plan.frames} frames in {len(item.plan.segments)} segments"
        f"{_dynamic_range(item.plan, args.codec)} ({executor.device}, {item.seconds:.1f} s)",
        file=sys.stderr,
    )
    return 0


def _dynamic_range(plan, codec: str) -> str:
    """What the summary says of an HDR title ("" for SDR): its transfer, and whether its
    HDR10 metadata went with it (NVENC writes none in the stream; headers still have it)."""
    from carn_stream.pipeline.colour import video_range

    name = video_range(plan.transfer)
    if name == "SDR":
        return ""
    if plan.hdr is None:
        return f", {name}"
    if codec.endswith("nvenc"):
        return f", {name} with HDR10 metadata in MP4 headers only (NVENC writes none)"
    return f", {name} with HDR10 metadata kept"


async def _plan(args, item: Item, seconds: float, executor) -> None:
    """Plan ``item``, or take up its interrupted run. A raw H.264/HEVC stream is first copied
    into the work folder with timestamps, and what a playlist or manifest lists is joined
    there (again on a resume that finds no copy there)."""
    from carn_stream.pipeline.execution.executors import PlanRequest
    from carn_stream.pipeline.execution.workdir import WorkDir
    from carn_stream.pipeline.media.elementary import copy_with_times
    from carn_stream.server.inputs.listed_fetch import LISTING_NAMES

    folder = WorkDir(item.work)
    if item.resumed is not None:
        item.plan, done = item.resumed
        item.done = set(done)
        if item.timed and not folder.timed_input.is_file():
            await asyncio.to_thread(
                copy_with_times, item.source, folder.timed_input, None, args.input_fps
            )
        if item.listed and not folder.joined_input.is_file():
            await asyncio.to_thread(_join_listed, item, folder.joined_input)
        frames_done = sum(r.frames for r in done.values())
        print(
            f"carn-stream: resuming {item.output} from {item.work}: {len(done)} of "
            f"{len(item.plan.segments)} segments ({frames_done} frames) already done",
            file=sys.stderr,
        )
        return
    await asyncio.to_thread(folder.forget)
    timed_copy = None
    if item.timed:
        timed_copy = folder.timed_input
        await asyncio.to_thread(folder.path.mkdir, parents=True, exist_ok=True)
        print(f"carn-stream: {item.source.name} is a raw stream without timestamps: copying "
              f"it with timestamps into {timed_copy}", file=sys.stderr)  # fmt: skip
    source = item.source
    try:
        if item.listed:
            await asyncio.to_thread(folder.path.mkdir, parents=True, exist_ok=True)
            print(f"carn-stream: {item.source.name} is {LISTING_NAMES[item.listed]}: joining "
                  f"what it lists into {folder.joined_input}", file=sys.stderr)  # fmt: skip
            await asyncio.to_thread(_join_listed, item, folder.joined_input)
            source = folder.joined_input
        request = PlanRequest(source, seconds, timed_copy=timed_copy, raw_rate=args.input_fps)
        item.plan = await executor.plan(request)
    except BaseException:
        if item.timed or item.listed:  # nothing to resume in it
            folder.remove()
        raise
    folder.start(item.identity, item.plan, item.weights)
    if item.timed:
        rate = float(item.plan.frame_rate or 0)
        said = "--input-fps" if args.input_fps is not None else "its header's, else 25; " \
            "--input-fps sets it"
        print(f"carn-stream: {item.source.name} timed at {rate:g} fps ({said})", file=sys.stderr)


def _join_listed(item: Item, dest: Path) -> None:
    """What the local playlist or manifest ``item.source`` lists, joined into ``dest``."""
    from carn_stream.pipeline.errors import InputError
    from carn_stream.server.inputs.listed_fetch import join_local_listing

    try:
        join_local_listing(item.listed, item.source, dest, keep=item.output)
    except InputError as exc:
        raise InputError(f"{item.source}: {exc}") from exc


async def _upscale_one(args, item: Item, encoder, executor, bar, folder_run: bool) -> None:
    from carn_stream.pipeline.execution.executors import batch_size
    from carn_stream.pipeline.execution.segmented import SegmentedRun
    from carn_stream.pipeline.execution.workdir import WorkDir
    from carn_stream.pipeline.run import PipelineOptions

    folder = WorkDir(item.work)
    done = dict(item.resumed[1]) if item.resumed else {}
    batch = batch_size(args.batch, executor)
    options = PipelineOptions(scale=args.scale, encoder=encoder, batch_size=batch,
                              upright=item.fmt.segments_served,
                              deinterlace=args.deinterlace)  # fmt: skip
    said: list[bool] = []
    note = item.source.name if folder_run else ""

    def on_frame(report) -> None:
        if not said and not folder_run and report.precision:  # auto decides on the first frame
            said.append(True)
            print(f"precision {report.precision}", file=sys.stderr)
        item.made[report.segment] = item.made.get(report.segment, 0) + 1
        bar.update(note=note)

    def on_done(result) -> None:
        folder.record(result, run.segment_path(result.index))
        item.done.add(result.index)
        item.made.pop(result.index, None)

    run = SegmentedRun(
        source=item.input,
        plan=item.plan,
        fmt=item.fmt,
        output=item.output,
        work_dir=item.work,
        options=options,
        executor=executor,
        done=done,
        in_flight=lambda: executor.slots,  # (a cluster grows as its nodes start)
        on_frame=on_frame,
        on_start=lambda index, attempt: item.made.pop(index, None),  # a retry starts over
        on_done=on_done,
    )
    item.run = run
    try:
        await run.execute()
    finally:
        if run.finished:  # (also a stop that came as the join ended: the output is whole)
            folder.remove()


def summary_table(items: list[Item]) -> str:
    """One row per input: file, frames, seconds, fps, result."""
    width = max(len("file"), *(len(item.source.name) for item in items))
    lines = [f"{'file':<{width}}  {'frames':>7}  {'seconds':>8}  {'fps':>7}  result"]
    for item in items:
        fps = f"{item.frames / item.seconds:7.2f}" if item.frames and item.seconds else f"{'-':>7}"
        seconds = f"{item.seconds:8.1f}" if item.seconds else f"{'-':>8}"
        frames = f"{item.frames:7d}" if item.frames else f"{'-':>7}"
        lines.append(f"{item.source.name:<{width}}  {frames}  {seconds}  {fps}  {item.result}")
    return "\n".join(lines)
