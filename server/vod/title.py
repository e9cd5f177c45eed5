"""A video stored small: the low-resolution copy kept instead of the source, and the title's own
compression-aware model that serves it at the source's size.

At ingest the copy is encoded as the service stores it (1/scale of the source's size, the
codec and CRF asked for) in a process of its own, so that a hostile source that crashes the
decoder costs that process only. Then ``carn-stream assess`` runs in a child process at low
CPU priority: it trains CARN-M on (the copy's frames as the encoder left them, the source's
frames), measures bicubic, the generic model and the title's model against the source, and the
rate-quality curves of storing the source's size directly against the copy plus upscaling
(``report.json``, ``report.svg``). The title's weights then serve the upscaled rendition, and
the source is deleted unless the caller asked to keep it.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.media.delivery import EncodedCopy, encode_copy


@dataclass(frozen=True)
class StoreRequest:
    """Store at 1/``scale`` of the source's size, as ``codec`` at ``crf``."""

    scale: int
    codec: str = "h264"
    crf: int = 30
    keep_source: bool = False


COPY_NAME = "stored.mp4"  #: the stored copy, in the video's folder
TITLE_FOLDER = "title"  #: the title command's outputs, in the video's folder
REPORT_NAME, PLOT_NAME = "report.json", "report.svg"


#: How often the event loop looks for the copy's process to have answered (seconds).
COPY_POLL = 0.1


async def make_copy(source: Path, dest: Path, scale: int, codec: str, crf: int) -> EncodedCopy:
    """Encode the stored copy in a process of its own; its crash is an input error. Waiting
    never blocks the event loop, and a cancel (the client went, the video was deleted, the
    service stops) kills the process at once."""
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_encode, args=(sending, source, dest, scale, codec, crf),
                              name="carn-stream-copy", daemon=True)  # fmt: skip
    try:
        process.start()
        sending.close()  # (the child's end: once it exits, the pipe reads as ended)
        while not receiving.poll():
            await asyncio.sleep(COPY_POLL)
        try:
            done, value = receiving.recv()
        except EOFError:  # exited without a word: crashed
            raise InputError("the source could not be decoded (its decoder crashed)") from None
        if not done:
            raise value
        return value
    finally:
        sending.close()
        receiving.close()
        if process.pid is not None:  # (started)
            if process.is_alive():
                process.kill()
            await asyncio.to_thread(process.join)  # (at once: it has answered, or was killed)


def _encode(sending, source: Path, dest: Path, scale: int, codec: str, crf: int) -> None:
    """In the copy's process: the copy, or the error, sent back."""
    try:
        sending.send((True, encode_copy(source, dest, scale=scale, codec=codec, crf=crf)))
    except Exception as exc:  # (as a pool would hand it back)
        try:
            sending.send((False, exc))
        except Exception:  # (one that does not pickle)
            sending.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


def title_command(
    source: Path, folder: Path, scale: int, codec: str, crf: int, *, frames: int, steps: int,
    report_frames: int, device: str, precision: str, weights: Path | None,
) -> list[str]:  # fmt: skip
    """``carn-stream assess`` making the title's model and report into ``folder / title``."""
    command = [
        sys.executable, "-m", "carn_stream.cli", "assess", str(source), "--scale", str(scale),
        "--codec", codec, "--store-crf", str(crf), "--out", str(folder / TITLE_FOLDER),
        "--train-frames", str(frames), "--steps", str(steps), "--frames", str(report_frames),
        "--device", device, "--precision", precision, "--json",
    ]  # fmt: skip
    if weights is not None:
        command += ["--weights", str(weights)]
    return command


def title_weights(folder: Path, scale: int) -> Path:
    """Where the title command writes the title's model."""
    return folder / TITLE_FOLDER / f"title-x{scale}.pth"


def training_progress(folder: Path, steps: int) -> float | None:
    """The fraction of the title's training steps done (None before it has started)."""
    log = folder / TITLE_FOLDER / "run" / "log.jsonl"
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return None
    done = 0
    for line in lines:
        try:
            done = max(done, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue
    return min(1.0, done / steps) if steps else None


def public_report(folder: Path, url: str) -> dict[str, Any] | None:
    """The title's report with the service's paths left out (None until it exists)."""
    try:
        report = json.loads((folder / TITLE_FOLDER / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    roots = (str(folder.parent), str(folder.resolve().parent))  # as written, and resolved
    report = _without_paths(report, roots)
    report["source"] = url
    return report


def _without_paths(value: Any, roots: tuple[str, ...]) -> Any:
    """``value`` without the entries that name a file under one of ``roots`` (the weights,
    the plot, the input: where the service keeps its files is not the client's business)."""
    if isinstance(value, dict):
        return {k: _without_paths(v, roots) for k, v in value.items()
                if not (isinstance(v, str) and v.startswith(roots))}  # fmt: skip
    if isinstance(value, list):
        return [_without_paths(v, roots) for v in value]
    return value


def plot(folder: Path) -> Path:
    return folder / TITLE_FOLDER / PLOT_NAME
