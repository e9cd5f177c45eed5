"""An input delivered as a listing of parts (an HLS playlist, a DASH manifest): what to fetch
(:class:`Listing`), and the joining of a video with its separately delivered audio into one
file. Parts of one stream join by concatenation (MPEG-TS segments; an initialization section
and its fragments; one whole file)."""

from __future__ import annotations

import contextlib
import heapq
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.errors import InputError, ffmpeg_reason
from carn_stream.pipeline.media.decode import main_video, open_input
from carn_stream.pipeline.media.input_formats import is_allowed, open_options

#: The largest playlist or manifest read (a few hours of 2 s segments is a few hundred KB).
MAX_LISTING_BYTES = 4 * 1024 * 1024
#: The most segments one stream may be listed in.
MAX_SEGMENTS = 20_000
#: The most audio streams a listing may deliver apart from its video (each is fetched, and
#: all are open at once while they are joined).
MAX_AUDIO_APART = 16


class ListingError(InputError):
    """A playlist or manifest that cannot be read or joined into one input; says why."""


@dataclass(frozen=True)
class ListedAudio:
    """An audio stream delivered apart from the video: its parts, and what it is called."""

    parts: tuple[str, ...]
    name: str = ""
    language: str | None = None


@dataclass(frozen=True)
class Listing:
    """What to fetch: the video's parts (URLs, in order), and each audio stream delivered apart
    (the default first); none: the video's parts carry the audio, if any. ``inside``: what
    the listing calls the audio the video's own parts carry (name, language), if it names it."""

    video: tuple[str, ...]
    audio: tuple[ListedAudio, ...] = ()
    inside: tuple[str, str | None] | None = None

    def __post_init__(self) -> None:
        if len(self.audio) > MAX_AUDIO_APART:
            raise ListingError(f"it delivers {len(self.audio)} audio streams apart from the "
                               f"video, over the limit of {MAX_AUDIO_APART}")  # fmt: skip


def absolute(uri: str, url: str) -> str:
    """``uri`` as listed in the document fetched from ``url``, made absolute."""
    return urllib.parse.urljoin(url, uri)


def check_contiguous(spans: list[tuple[int, int]], what: str) -> None:
    """Refuse byte ranges ((offset, length) in order; a length of -1: the whole file) that are
    not the file from its first byte on, one after the other: reading the whole file would
    read more than they list."""
    at = 0
    for offset, length in spans:
        if length < 0 or offset != at:
            raise ListingError(f"{what} lists byte ranges that skip part of their file; only "
                               "ranges that follow one another from its start are read")
        at = offset + length


def whole_number(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        raise ListingError(f"a malformed number: {text!r}") from None


@dataclass(frozen=True)
class AudioFile:
    """An audio stream's joined parts, and what its listing calls it."""

    path: Path
    name: str = ""
    language: str | None = None


#: Where the audio delivered apart from ``source``'s video waits to be joined with it, and
#: what it is called: beside it, until :func:`join_apart` (in the worker that plans the input).
def _apart_record(source: Path) -> Path:
    return source.with_name(f".{source.name}.apart.json")


def save_apart(source: Path, audio: list[AudioFile], inside: tuple[str, str | None] | None):
    """Keep ``audio`` beside ``source`` (moved there) to be joined with it by
    :func:`join_apart`; ``inside``: what the listing calls the audio in the video's own parts."""
    kept = []
    for number, stream in enumerate(audio):
        path = source.with_name(f".{source.name}.audio{number}")
        stream.path.replace(path)
        kept.append({"file": path.name, "name": stream.name, "language": stream.language})
    record = {"inside": list(inside) if inside else None, "audio": kept}
    _apart_record(source).write_text(json.dumps(record))


def remove_apart(source: Path) -> None:
    """Remove the audio kept beside ``source`` to be joined with it, if any."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        for stream in json.loads(_apart_record(source).read_text())["audio"]:
            source.with_name(stream["file"]).unlink(missing_ok=True)
    _apart_record(source).unlink(missing_ok=True)


def joined_bytes(source: Path) -> int:
    """About what joining ``source`` with the audio kept beside it writes: all their bytes."""
    total = source.stat().st_size
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        for stream in json.loads(_apart_record(source).read_text())["audio"]:
            total += source.with_name(stream["file"]).stat().st_size
    return total


def has_audio_apart(source: Path) -> bool:
    """Whether audio delivered apart waits beside ``source`` to be joined with it."""
    return _apart_record(source).is_file()


def join_apart(source: Path, target: Path, stop: threading.Event | None = None) -> None:
    """``source``'s video joined with the audio kept beside it (:func:`save_apart`) into
    ``target`` (which may be ``source``; replaced once whole); the audio's files go."""
    record_path = _apart_record(source)
    try:
        record = json.loads(record_path.read_text())
        audio = [AudioFile(source.with_name(a["file"]), a["name"], a["language"])
                 for a in record["audio"]]  # fmt: skip
        inside = tuple(record["inside"]) if record["inside"] else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ListingError(f"the audio delivered apart cannot be found ({exc})") from exc
    partial = target.with_name(f".{target.name}.joining")
    try:
        join_renditions(source, audio, partial, inside, stop)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    remove_apart(source)


#: Packets copied between checks of the stop event while joining.
STOP_CHECK_PACKETS = 256


def join_renditions(
    video: Path,
    audio: list[AudioFile],
    target: Path,
    inside: tuple[str, str | None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """One Matroska file of ``video``'s first video stream and its own audio streams (the first
    named and tagged as ``inside`` says), then each audio file's first audio stream (named and
    tagged with its language as the listing says), every packet copied, interleaved by time.
    The streams of one listing count time on one clock, so they stay in sync as they are.
    ``stop`` (set by a caller that has given up) ends the join early."""
    try:
        inputs = [open_input(video)]
    except InputError as exc:
        raise ListingError(str(exc).replace(f"{video}: ", "the video it lists: ")) from exc
    try:
        inputs.extend(_open_audio(a) for a in audio)
        with av.open(str(target), "w", format="matroska") as out:
            picture = main_video(inputs[0])
            sources = [picture, *inputs[0].streams.audio]
            own = len(inputs[0].streams.audio)
            tags = [None, *([inside] + [None] * (own - 1) if own else [])]
            outputs = [out.add_stream_from_template(s) for s in sources]
            for container, rendition in zip(inputs[1:], audio, strict=True):
                if not container.streams.audio:
                    raise ListingError(f"the audio stream {rendition.name!r} holds no audio")
                sources.append(container.streams.audio[0])
                outputs.append(out.add_stream_from_template(container.streams.audio[0]))
                tags.append((rendition.name, rendition.language))
            for stream, tag in zip(outputs, tags, strict=False):
                name, language = tag or ("", None)
                if language:
                    stream.metadata["language"] = language
                if name:
                    stream.metadata["title"] = name
            # One reading of each file (its streams in its own order), merged by time.
            owners = [0] * (1 + own) + list(range(1, len(inputs)))
            places = {(owner, source.index): n
                      for n, (owner, source) in enumerate(zip(owners, sources, strict=True))}
            merged = heapq.merge(*(
                _timed(container, [s for o, s in zip(owners, sources, strict=True) if o == n], n)
                for n, container in enumerate(inputs)
            ))  # fmt: skip
            for count, (_, number, _, packet) in enumerate(merged):
                if stop is not None and count % STOP_CHECK_PACKETS == 0 and stop.is_set():
                    raise ListingError("the join was stopped: its request was cancelled")
                packet.stream = outputs[places[number, packet.stream.index]]
                out.mux(packet)
    finally:
        for container in inputs:
            container.close()


def _open_audio(rendition: AudioFile) -> av.container.InputContainer:
    """An audio stream's joined parts, opened as inputs are (the same allowed formats)."""
    try:
        container = av.open(str(rendition.path), options=open_options(rendition.path))
    except av.FFmpegError as exc:
        raise ListingError(f"the audio stream {rendition.name!r} cannot be read "
                           f"({ffmpeg_reason(exc)})") from exc  # fmt: skip
    if not is_allowed(container.format.name):
        container.close()
        raise ListingError(f"the audio stream {rendition.name!r} is in a format not read "
                           f"({container.format.name})")  # fmt: skip
    return container


def _timed(
    container: av.container.InputContainer, streams: list[av.stream.Stream], number: int
) -> Iterator[tuple[Fraction, int, int, av.Packet]]:
    """The packets of ``streams`` (all of one container, read once) in the container's order,
    keyed by the time to interleave them by (the latest decode time so far), then by the
    container's ``number``, so that a merge of several containers' packets keeps each one's
    order."""
    last = Fraction(-(10**12))
    for count, packet in enumerate(container.demux(streams)):
        if packet.size == 0:
            continue
        if packet.dts is not None and packet.time_base is not None:
            last = max(last, packet.dts * packet.time_base)
        yield last, number, count, packet
