"""Output formats, one registry: what each writes, where, with which audio.

A segmented run publishes MPEG-TS segments one by one (see
:mod:`carn_stream.pipeline.media.encode`); the format decides where they go and what the user
finally gets:

- ``hls``: a folder; the segments *are* the output, beside a playlist generated from the plan
  that grows while segments are done and is closed when all are. For a codec whose HLS
  segments are fragmented MP4 (HEVC: ``VideoCodec.fragmented_hls``) each MPEG-TS segment is
  kept in a work folder and published as ``segment_NNNNN.m4s`` beside ``init.mp4`` (see
  :mod:`carn_stream.pipeline.media.fragment`), as for any codec where fragmented MP4 is asked
  for; :meth:`OutputFormat.for_codec` gives that form.
- ``mp4``, ``mkv``, ``mov``: one file of that container; the segments are kept in a work folder
  and joined by remuxing (no re-encoding) when all are done, with the input's audio copied bit
  for bit where the container takes it, and the rest of the input kept where it can be:
  subtitles, chapters, metadata, attachments (see :mod:`carn_stream.pipeline.media.keep`).

One rule for every format: an existing output is refused unless overwriting is asked for, and
missing parent folders are created. Adding a format means adding one entry here; the API, the
command line and the job backend read their choices from :data:`FORMATS`. The final output is
made by :func:`carn_stream.pipeline.media.join.finish_output`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from carn_stream.pipeline.colour import StaticHdr
from carn_stream.pipeline.errors import OutputError
from carn_stream.pipeline.media.codecs import CODECS
from carn_stream.pipeline.media.decode import codec_name
from carn_stream.pipeline.media.hls import (
    AUDIO_NAME_RE,
    INIT_NAME,
    MASTER_NAME,
    PLAYLIST_NAME,
    SEGMENT_AUDIO,
    SEGMENT_NAME_RE,
    SUBTITLE_NAME_RE,
    mp3_below_mp4_rates,
    segment_name,
    write_playlist,
)
from carn_stream.pipeline.media.segments import SegmentPlan

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"})
_MKV_SUBTITLES = frozenset(
    {"subrip", "srt", "ass", "ssa", "webvtt", "hdmv_pgs_subtitle", "dvd_subtitle", "dvb_subtitle"}
)
_PCM = frozenset({"pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_f32le", "pcm_s32le"})


@dataclass(frozen=True)
class OutputFormat:
    name: str
    summary: str
    is_folder: bool  #: the output is a folder (else one file)
    suffix: str  #: a file output's suffix ("" for folders)
    copyable_audio: frozenset[str]  #: audio codecs the final output keeps as they are
    muxer: str = ""  #: FFmpeg's muxer for a file output
    media_type: str = ""  #: what HTTP calls a file output
    #: subtitle codecs the container keeps as they are
    copyable_subtitles: frozenset[str] = frozenset()
    text_subtitle: str | None = None  #: what other text subtitles become (None: dropped)
    attachments: bool = False  #: keeps attached files (fonts)
    #: an HLS folder of fragmented-MP4 segments (made from MPEG-TS ones kept in the work folder)
    fragmented: bool = False

    def for_codec(self, codec: str, fmp4: bool = False) -> OutputFormat:
        """This format as it holds ``codec``'s video: an HLS folder of fragmented-MP4 segments
        where they are asked for (``fmp4``, or already) or the codec needs them (HEVC), of
        MPEG-TS ones otherwise."""
        known = CODECS.get(codec)
        needs = known is not None and known.fragmented_hls
        fragmented = self.is_folder and (fmp4 or self.fragmented or needs)
        return self if fragmented == self.fragmented else replace(self, fragmented=fragmented)

    def keeps_audio(self, stream: av.stream.Stream) -> bool:
        """Whether the output holds an input audio stream as it is: where its container takes
        the codec, save MP3 below 16 kHz in MP4 files and in folders (whose segments may be
        fragmented MP4): for a folder, :func:`~carn_stream.pipeline.media.hls.carried_as_is`."""
        if (self.is_folder or self.muxer == "mp4") and mp3_below_mp4_rates(stream):
            return False
        return codec_name(stream) in self.copyable_audio

    def output_name(self) -> str:
        """The output's name inside a job folder."""
        return "hls" if self.is_folder else f"output{self.suffix}"

    @property
    def segments_served(self) -> bool:
        """Its segments are the output, served as they are: frames are turned upright in them
        (MPEG-TS carries no display rotation; a file output is tagged with it when joined)."""
        return self.is_folder

    def segment_dir(self, output: Path, work_dir: Path) -> Path:
        """Where MPEG-TS segments are published: the output folder itself (HLS of MPEG-TS),
        or the work folder."""
        return output if self.is_folder and not self.fragmented else work_dir / SEGMENTS_DIR

    def existing(self, output: Path) -> str | None:
        """Why ``output`` counts as an existing output (None when it is free to write).

        An empty folder is free for HLS; a folder holding only this format's own segments and
        playlist is an earlier run's output (the caller decides whether it is being resumed).
        """
        if self.is_folder:
            if output.exists() and not output.is_dir():
                return f"{output} exists and is not a folder"
            if output.is_dir() and any(output.iterdir()):
                return f"HLS output {output} exists and is not an empty folder"
            return None
        if output.is_dir():
            return f"{output} is a folder; a {self.name} output is one file"
        if output.exists():
            return f"{output} exists"
        return None

    def claim(self, output: Path, overwrite: bool, resuming: bool = False) -> None:
        """Apply the one output rule before any work: refuse an existing output unless
        ``overwrite`` (then an HLS folder loses its old segments and playlist; a file is
        replaced when the new one is complete), and create missing parent folders.
        ``resuming``: the output is this run's own, partly made (an HLS folder of its segments).
        """
        folder = output.parent
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"cannot write {output}: {folder} is a file, not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()  # the run's work files go beside it
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OutputError(f"cannot write into the output folder {folder}: {reason}") from None
        reason = None if resuming else self.existing(output)
        if reason is not None:
            clash = output.is_dir() != self.is_folder
            if clash or not overwrite:
                hint = "" if clash else "; use --overwrite to replace it"
                raise OutputError(reason + hint)
            if self.is_folder:
                self._remove_hls_files(output)
                if any(output.iterdir()):
                    raise OutputError(
                        f"HLS output {output} holds other files than an earlier HLS output; "
                        "choose an empty or new folder"
                    )

    def prepare(self, output: Path, work_dir: Path) -> Path:
        """Create the segment folder (and an HLS output's own); returns the segment folder."""
        folder = self.segment_dir(output, work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if self.is_folder:
            output.mkdir(parents=True, exist_ok=True)
        return folder

    def publish(
        self, output: Path, work_dir: Path, index: int, hdr: StaticHdr | None = None
    ) -> None:
        """Called as segment ``index`` is done: a fragmented HLS folder gets its media segment
        (and ``init.mp4``, with the first that has every stream, and the title's HDR10
        metadata ``hdr``)."""
        if self.fragmented:
            from carn_stream.pipeline.media.fragment import publish_fragment

            segment = self.segment_dir(output, work_dir) / segment_name(index)
            publish_fragment(segment, output, index, hdr)

    def published(self, output: Path, index: int) -> bool:
        """Whether segment ``index`` is in the output (always, where segments are published
        in the work folder: the final output is made of them at the end)."""
        if not self.fragmented:
            return True
        return (output / segment_name(index, True)).is_file() and (output / INIT_NAME).is_file()

    def progress(self, output: Path, plan: SegmentPlan, done: set[int]) -> None:
        """Called after each published segment (HLS: the playlist grows)."""
        if self.is_folder:
            durations = []
            playable = not self.fragmented or (output / INIT_NAME).is_file()
            for segment in plan.segments:
                if not playable or segment.index not in done:
                    break  # (fragmented MP4: nothing plays before init.mp4 is there)
                durations.append(segment.duration)
            write_playlist(output, durations, plan.max_duration, complete=False,
                           fragmented=self.fragmented)  # fmt: skip

    def discard(self, output: Path) -> None:
        """Remove a (partial) output: nothing half-made is ever served."""
        if self.is_folder:
            if output.is_dir():
                self._remove_hls_files(output)
                with contextlib.suppress(OSError):
                    output.rmdir()
            return
        output.unlink(missing_ok=True)
        for part in (f".{output.name}.part", f".{output.name}.hdr.part"):  # (join's)
            output.with_name(part).unlink(missing_ok=True)

    @staticmethod
    def _remove_hls_files(folder: Path) -> None:
        for path in folder.iterdir():
            name = _WRITING.sub("", path.name.lstrip("."))
            if SEGMENT_NAME_RE.match(name) or OURS.match(name):
                path.unlink(missing_ok=True)


#: How a file being written is named after its own (``.NAME.part``, ``.NAME.TOKEN.part``).
_WRITING = re.compile(r"(\.[0-9a-f]+)?\.part\Z")


#: Where a file output's segments (and a fragmented HLS folder's MPEG-TS ones) wait in the
#: work folder.
SEGMENTS_DIR = "segments"

#: The other files of an HLS folder (their names while they are written, too): a user's own
#: files beside them stay.
OURS = re.compile(
    rf"({re.escape(PLAYLIST_NAME)}|{re.escape(MASTER_NAME)}|{re.escape(INIT_NAME)}"
    r"|segment_[0-9]{5,9}\.m4s\.init"  # (a segment's header waiting for init.mp4, fragment.py)
    rf"|{SUBTITLE_NAME_RE.pattern}|{AUDIO_NAME_RE.pattern})\Z"
)

FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat(
            name="hls",
            summary="a folder with index.m3u8 and its segments (MPEG-TS; for HEVC, or with "
            "fmp4, fragmented MP4), playable while it grows",
            is_folder=True,
            suffix="",
            copyable_audio=SEGMENT_AUDIO,
        ),
        OutputFormat(
            name="mp4",
            summary="one MP4 file (faststart), audio copied as it is, text subtitles as mov_text",
            is_folder=False,
            suffix=".mp4",
            copyable_audio=MP4_AUDIO,
            muxer="mp4",
            media_type="video/mp4",
            copyable_subtitles=frozenset({"mov_text", "dvd_subtitle"}),
            text_subtitle="mov_text",
        ),
        OutputFormat(
            name="mkv",
            summary="one Matroska file: audio, subtitles (text and bitmap) and attachments kept",
            is_folder=False,
            suffix=".mkv",
            copyable_audio=MP4_AUDIO | _PCM | {"vorbis", "dts", "truehd", "mp2"},
            muxer="matroska",
            media_type="video/x-matroska",
            copyable_subtitles=_MKV_SUBTITLES,
            text_subtitle="subrip",
            attachments=True,
        ),
        OutputFormat(
            name="mov",
            summary="one QuickTime file (faststart), text subtitles as mov_text",
            is_folder=False,
            suffix=".mov",
            copyable_audio=frozenset({"aac", "mp3", "ac3", "eac3", "alac"}) | _PCM,
            muxer="mov",
            media_type="video/quicktime",
            copyable_subtitles=frozenset({"mov_text"}),
            text_subtitle="mov_text",
        ),
    )
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
#: File formats by their suffix.
SUFFIXES: dict[str, OutputFormat] = {f.suffix: f for f in FORMATS.values() if not f.is_folder}


def output_format(name: str) -> OutputFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise OutputError(
            f"unknown output format {name!r}; choose one of {', '.join(FORMAT_NAMES)}"
        ) from None


def format_for_path(path: Path, name: str | None = None) -> OutputFormat:
    """The format a path's suffix names (a suffix-less path is an HLS folder); a format asked
    for by ``name`` must agree with the suffix (HLS takes any folder name)."""
    suffix = path.suffix.lower()
    allowed = f"{', '.join(SUFFIXES)}, or a folder (no suffix) for HLS"
    if name is not None:
        fmt = output_format(name)
        if fmt.is_folder or suffix == fmt.suffix:
            return fmt
        raise OutputError(f"output {path}: a {fmt.name} output needs a name ending in {fmt.suffix}")
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if not suffix:
        return FORMATS["hls"]
    raise OutputError(f"output {path}: unsupported suffix {path.suffix!r}; use {allowed}")
