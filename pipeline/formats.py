"""Output formats, one registry: what each writes, where, with which audio, how it is finished.

A segmented run publishes MPEG-TS segments one by one (see :mod:`carn_stream.pipeline.encode`);
the format decides where they go and what the user finally gets:

- ``hls``: a folder; the segments *are* the output, beside a playlist generated from the plan
  that grows while segments are done and is closed when all are.
- ``mp4``: one file; the segments are kept in a work folder and joined by remuxing (no
  re-encoding) when all are done, with the input's audio copied bit for bit.

Adding a format means adding one entry here; the API, the command line and the job backend
read their choices from :data:`FORMATS`.
"""

from __future__ import annotations

import contextlib
import heapq
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from carn_stream.pipeline.errors import OutputError
from carn_stream.pipeline.hls import PLAYLIST_NAME, segment_name, write_playlist

if TYPE_CHECKING:  # the command line reads FORMAT_NAMES without loading the pipeline
    from carn_stream.pipeline.segments import SegmentPlan


@dataclass(frozen=True)
class OutputFormat:
    name: str
    summary: str
    is_folder: bool  #: the output is a folder (else one file)
    suffix: str  #: a file output's suffix ("" for folders)
    copyable_audio: frozenset[str]  #: audio codecs the final output keeps as they are

    def output_name(self) -> str:
        """The output's name inside a job folder."""
        return "hls" if self.is_folder else f"output{self.suffix}"

    def segment_dir(self, output: Path, work_dir: Path) -> Path:
        """Where segments are published: the output folder itself, or the work folder."""
        return output if self.is_folder else work_dir / "segments"

    def prepare(self, output: Path, work_dir: Path) -> Path:
        """Create the segment folder; returns it."""
        folder = self.segment_dir(output, work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def progress(self, output: Path, plan: SegmentPlan, done: set[int]) -> None:
        """Called after each published segment (HLS: the playlist grows)."""
        if self.is_folder:
            durations = []
            for segment in plan.segments:
                if segment.index not in done:
                    break
                durations.append(segment.duration)
            write_playlist(output, durations, plan.max_duration, complete=False)

    def finish(
        self, output: Path, work_dir: Path, plan: SegmentPlan, source: Path, rotation: int
    ) -> Path:
        """Make the final output from all the published segments."""
        folder = self.segment_dir(output, work_dir)
        if self.is_folder:
            durations = [s.duration for s in plan.segments]
            write_playlist(output, durations, plan.max_duration, complete=True)
            return output
        paths = [folder / segment_name(s.index) for s in plan.segments]
        join_segments(paths, plan.time_base, source, output, self.copyable_audio, rotation)
        shutil.rmtree(folder, ignore_errors=True)
        return output

    def discard(self, output: Path) -> None:
        """Remove a (partial) output: nothing half-made is ever served."""
        if self.is_folder:
            if output.is_dir():
                for path in output.iterdir():
                    if path.name.startswith(("segment_", ".segment_", PLAYLIST_NAME,
                                             f".{PLAYLIST_NAME}")):  # fmt: skip
                        path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    output.rmdir()
            return
        output.unlink(missing_ok=True)
        output.with_name(f".{output.name}.part").unlink(missing_ok=True)


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat(
            name="hls",
            summary="a folder with index.m3u8 and MPEG-TS segments, playable while it grows",
            is_folder=True,
            suffix="",
            copyable_audio=frozenset({"aac", "mp3", "ac3", "eac3"}),
        ),
        OutputFormat(
            name="mp4",
            summary="one MP4 file (faststart), audio copied as it is",
            is_folder=False,
            suffix=".mp4",
            copyable_audio=frozenset({"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"}),
        ),
    )
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def output_format(name: str) -> OutputFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise OutputError(
            f"unknown output format {name!r}; choose one of {', '.join(FORMAT_NAMES)}"
        ) from None


def format_for_path(path: Path, name: str | None = None) -> OutputFormat:
    """The format asked for, else the one a path implies (a suffix-less path is a folder)."""
    if name is not None:
        return output_format(name)
    for fmt in FORMATS.values():
        if not fmt.is_folder and path.suffix.lower() == fmt.suffix:
            return fmt
    if not path.suffix:
        return FORMATS["hls"]
    files = ", ".join(f.suffix for f in FORMATS.values() if not f.is_folder)
    raise OutputError(
        f"output {path}: unsupported suffix {path.suffix!r}; use {files}, or a folder for HLS"
    )


# --------------------------------------------------------------------------- joining


def join_segments(
    paths: list[Path],
    time_base: Fraction,
    source: Path,
    target: Path,
    copyable_audio: frozenset[str],
    rotation: int = 0,
) -> Path:
    """Remux segments (in order) into one MP4 at ``target``: no re-encoding, the input's
    timestamps and time base back, its audio copied where the container takes it (else the
    segments' AAC). Written under a temporary name, then renamed."""
    import av

    from carn_stream.pipeline.encode import SEGMENT_OFFSET_SECONDS

    part = target.with_name(f".{target.name}.part")
    offset = Fraction(SEGMENT_OFFSET_SECONDS)
    try:
        with (
            av.open(str(paths[0])) as first,
            av.open(str(source)) as src,
            av.open(str(part), "w", format="mp4", options={"movflags": "+faststart"}) as out,
        ):
            video_out = out.add_stream_from_template(first.streams.video[0])
            video_out.time_base = time_base
            if rotation:
                video_out.set_display_rotation(rotation)
            src_audio = list(src.streams.audio)
            from_source = all(a.codec_context.name in copyable_audio for a in src_audio)
            audio_map: dict[int, object] = {}
            if from_source:
                for stream in src_audio:
                    audio_map[stream.index] = out.add_stream_from_template(stream)
            else:
                for stream in first.streams.audio:
                    audio_map[stream.index] = out.add_stream_from_template(stream)

            def video_packets() -> Iterator[tuple[Fraction, int, object]]:
                for n, path in enumerate(paths):
                    with av.open(str(path)) as seg:
                        for packet in seg.demux(seg.streams.video[0]):
                            if packet.dts is None or packet.size == 0:
                                continue
                            tb = packet.time_base
                            packet.pts = round((packet.pts * tb - offset) / time_base)
                            packet.dts = round((packet.dts * tb - offset) / time_base)
                            packet.time_base = time_base
                            packet.stream = video_out
                            yield packet.dts * time_base, n, packet

            def audio_packets() -> Iterator[tuple[Fraction, int, object]]:
                if from_source:
                    if not src_audio:
                        return
                    for packet in src.demux(src_audio):
                        if packet.dts is None or packet.size == 0:
                            continue
                        packet.stream = audio_map[packet.stream.index]
                        yield packet.dts * packet.time_base, -1, packet
                    return
                for path in paths:
                    with av.open(str(path)) as seg:
                        streams = list(seg.streams.audio)
                        if not streams:
                            continue
                        for packet in seg.demux(streams):
                            if packet.dts is None or packet.size == 0:
                                continue
                            tb = packet.time_base
                            at = packet.dts * tb - offset
                            packet.pts = round((packet.pts * tb - offset) / tb)
                            packet.dts = round(at / tb)
                            packet.stream = audio_map[packet.stream.index]
                            yield at, -1, packet

            merged = heapq.merge(video_packets(), audio_packets(), key=lambda e: (e[0], e[1]))
            for _, _, packet in merged:
                out.mux(packet)
    except (av.FFmpegError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise OutputError(f"joining the segments into {target.name} failed: {exc}") from exc
    part.replace(target)
    return target
