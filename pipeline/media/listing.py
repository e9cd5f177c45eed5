"""An input delivered as a listing of parts (an HLS playlist, a DASH manifest): what to fetch
(:class:`Listing`), and the joining of a video with its separately delivered audio into one
file. Parts of one stream join by concatenation (MPEG-TS segments; an initialization section
and its fragments; one whole file)."""

from __future__ import annotations

import errno
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
from carn_stream.pipeline.media.elementary import partial_name
from carn_stream.pipeline.media.input_formats import is_allowed, open_options

#: The largest playlist or manifest read (a few hours of 2 s segments is a few hundred KB).
MAX_LISTING_BYTES = 4 * 1024 * 1024
#: The most segments one stream may be listed in.
MAX_SEGMENTS = 20_000
#: The most audio streams a listing may deliver apart from its video (each is fetched, and
#: all are open at once while they are joined).
MAX_AUDIO_APART = 16
#: The most subtitle streams a listing may deliver (each is fetched and joined).
MAX_SUBTITLES = 32
#: How listings' codec strings (RFC 6381) begin for audio: the codecs a listed stream is
#: audio by.
AUDIO_CODEC_TAGS = ("mp4a", "ac-3", "ec-3", "ac-4", "opus", "flac", "mp3", "vorbis", "dts")


class ListingError(InputError):
    """A playlist or manifest that cannot be read or joined into one input; says why."""


@dataclass(frozen=True)
class PartKey:
    """How a part is encrypted: whole, with AES-128 in CBC mode (PKCS#7 padding), the key at
    ``uri`` and the initialization vector ``iv`` (16 bytes)."""

    uri: str
    iv: bytes


@dataclass(frozen=True)
class Listed:
    """One stream's parts (URLs, in order), and where its bytes end when the parts are byte
    ranges of one file read whole (None: its parts end where they end); ``keys``, where any
    part is encrypted: each part's key (None: that part is not)."""

    parts: tuple[str, ...]
    end: int | None = None
    keys: tuple[PartKey | None, ...] = ()

    def __post_init__(self) -> None:
        if self.keys and len(self.keys) != len(self.parts):
            raise ValueError("a key (or None) for each part, or none at all")


@dataclass(frozen=True)
class ListedAudio:
    """An audio stream of a listing: delivered apart (``stream``), or carried in the video's
    own parts (``stream`` None); and what the listing calls it."""

    stream: Listed | None
    name: str = ""
    language: str | None = None


@dataclass(frozen=True)
class ListedText:
    """A subtitle stream of a listing (WebVTT segments), and what the listing calls it."""

    stream: Listed
    name: str = ""
    language: str | None = None


@dataclass(frozen=True)
class Listing:
    """What to fetch: the video, its audio streams as the listing orders them (the default
    first) and its subtitles. Where no audio is delivered apart, the video's own parts carry
    the audio, if any, as they are; else the audio is what ``audio`` lists (the video's own
    audio only where an entry says so)."""

    video: Listed
    audio: tuple[ListedAudio, ...] = ()
    subtitles: tuple[ListedText, ...] = ()

    def __post_init__(self) -> None:
        if len(self.apart) > MAX_AUDIO_APART:
            raise ListingError(f"it delivers {len(self.apart)} audio streams apart from the "
                               f"video, over the limit of {MAX_AUDIO_APART}")  # fmt: skip

    @property
    def apart(self) -> list[ListedAudio]:
        """The audio streams delivered apart from the video."""
        return [a for a in self.audio if a.stream is not None]


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
    """An audio stream to join: its file (None: the video file's own first audio stream, or
    with ``every_own`` all of them, as they are), and what its listing calls it."""

    path: Path | None
    name: str = ""
    language: str | None = None
    every_own: bool = False


@dataclass(frozen=True)
class TextStream:
    """A subtitle stream to join: its cues (start and end in milliseconds on the media's
    clock, SubRip text), and what its listing calls it."""

    cues: tuple[tuple[int, int, str], ...]
    name: str = ""
    language: str | None = None


def _apart_record(source: Path) -> Path:
    """Where what is kept beside ``source`` to be joined with it is described."""
    return source.with_name(f".{source.name}.apart.json")


def _apart_file(source: Path, number: int) -> Path:
    return source.with_name(f".{source.name}.audio{number}")


def save_apart(
    source: Path, audio: list[AudioFile], video_bytes: int, subtitles: list[TextStream] = ()
) -> None:
    """Keep ``audio`` (its files moved there) and ``subtitles`` beside ``source``, the video of
    ``video_bytes`` bytes, to be joined with it by :func:`join_apart`, in this order. Call
    before ``source`` itself is in place."""
    remove_apart(source)
    entries = [{"file": None if a.path is None else _apart_file(source, n).name,
                "name": a.name, "language": a.language, "every_own": a.every_own}
               for n, a in enumerate(audio)]  # fmt: skip
    texts = [{"cues": t.cues, "name": t.name, "language": t.language} for t in subtitles]
    record = _apart_record(source)
    partial = record.with_name(record.name + ".part")
    partial.write_text(json.dumps({"audio": entries, "subtitles": texts,
                                   "video_bytes": video_bytes}))  # fmt: skip
    partial.replace(record)
    for number, stream in enumerate(audio):
        if stream.path is not None:
            stream.path.replace(_apart_file(source, number))


def remove_apart(source: Path) -> None:
    """Remove what is kept beside ``source`` to be joined with it, if anything."""
    for path in source.parent.glob(f".{source.name}.audio*"):
        path.unlink(missing_ok=True)
    _apart_record(source).unlink(missing_ok=True)


def joined_bytes(source: Path) -> int:
    """About what joining ``source`` with the audio kept beside it writes: all their bytes."""
    files = [source, *source.parent.glob(f".{source.name}.audio*")]
    return sum(f.stat().st_size for f in files if f.is_file())


def has_audio_apart(source: Path) -> bool:
    """Whether audio delivered apart waits beside ``source`` to be joined with it."""
    return _apart_record(source).is_file()


def join_apart(source: Path, target: Path, stop: threading.Event | None = None) -> None:
    """``source``'s video joined with the audio kept beside it (:func:`save_apart`) into
    ``target`` (which may be ``source``; replaced once whole); what was kept beside it goes.
    ``stop`` (set by a caller that has given up) ends it early, ``target`` untouched. A full
    disk is an ``OSError`` (ENOSPC); anything FFmpeg cannot read or write, a
    :class:`ListingError`."""
    try:
        record = json.loads(_apart_record(source).read_text())
        audio = [AudioFile(None if e["file"] is None else source.with_name(e["file"]),
                           e["name"], e["language"], bool(e.get("every_own")))
                 for e in record["audio"]]  # fmt: skip
        subtitles = [TextStream(tuple((int(a), int(b), str(t)) for a, b, t in e["cues"]),
                                e["name"], e["language"])
                     for e in record.get("subtitles", [])]  # fmt: skip
        video_bytes = int(record["video_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ListingError(f"the audio delivered apart cannot be found ({exc})") from exc
    if source.stat().st_size != video_bytes:  # joined already (stopped before it tidied up)
        remove_apart(source)
        return
    if any(a.path is not None and not a.path.is_file() for a in audio):
        raise ListingError("the audio delivered apart from the video is missing")
    partial = partial_name(target)  # (as a raw stream's timed copy is written)
    try:
        join_renditions(source, audio, partial, stop, subtitles)
        _check_stop(stop)
        partial.replace(target)
    except av.FFmpegError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, "no space left on the disk to join the input") from exc
        raise ListingError(f"its parts could not be joined ({ffmpeg_reason(exc)})") from exc
    finally:
        partial.unlink(missing_ok=True)
    remove_apart(source)


#: Packets copied between checks of the stop event while joining.
STOP_CHECK_PACKETS = 256


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise ListingError("the join was stopped: its request was cancelled")


def join_renditions(
    video: Path, audio: list[AudioFile], target: Path, stop: threading.Event | None = None,
    subtitles: list[TextStream] = (),
) -> None:  # fmt: skip
    """One Matroska file of ``video``'s first video stream, ``audio`` in its order (each
    file's first audio stream, or, path None, the video file's own first audio stream, left
    out where it has none) and ``subtitles`` (as SubRip), named and tagged with its language
    as the listing says; every packet copied, interleaved by time. The streams of one listing
    count time on one clock, so they stay in sync as they are. ``stop`` (set by a caller that
    has given up) ends the join early."""
    try:
        inputs = [open_input(video)]
    except InputError as exc:
        raise ListingError(str(exc).replace(f"{video}: ", "the video it lists: ")) from exc
    try:
        own = list(inputs[0].streams.audio)
        sources = [(0, main_video(inputs[0]), None)]  # (input, stream, listed as)
        for rendition in audio:
            if rendition.path is None:
                kept = own if rendition.every_own else own[:1]
                sources += [(0, s, None if rendition.every_own else rendition) for s in kept]
                continue
            inputs.append(_open_audio(rendition))
            if not inputs[-1].streams.audio:
                raise ListingError(f"the audio stream {rendition.name!r} holds no audio")
            sources.append((len(inputs) - 1, inputs[-1].streams.audio[0], rendition))
        with av.open(str(target), "w", format="matroska") as out:
            outputs = []
            for _, stream, rendition in sources:
                made = out.add_stream_from_template(stream)
                made.metadata.update({k: v for k, v in stream.metadata.items()
                                      if k in ("language", "title")})  # (its own, as it was)
                if rendition is not None and rendition.language:
                    made.metadata["language"] = rendition.language
                if rendition is not None and rendition.name:
                    made.metadata["title"] = rendition.name
                outputs.append(made)
            places = {(n, stream.index): i for i, (n, stream, _) in enumerate(sources)}
            # One reading of each file (its streams in its own order), merged by time.
            merged = heapq.merge(*(
                _timed(container, [s for m, s, _ in sources if m == n], n)
                for n, container in enumerate(inputs)
            ), *(
                _cue_packets(text, _text_stream(out, text), len(inputs) + k)
                for k, text in enumerate(subtitles)
            ))  # fmt: skip
            for count, (_, number, _, packet) in enumerate(merged):
                if count % STOP_CHECK_PACKETS == 0:
                    _check_stop(stop)
                if number < len(inputs):  # (a cue's packet is made with its stream)
                    packet.stream = outputs[places[number, packet.stream.index]]
                out.mux(packet)
    finally:
        for container in inputs:
            container.close()


def _text_stream(out: av.container.OutputContainer, text: TextStream) -> av.stream.Stream:
    made = out.add_mux_stream("subrip")
    if text.language:
        made.metadata["language"] = text.language
    if text.name:
        made.metadata["title"] = text.name
    return made


def _cue_packets(
    text: TextStream, stream: av.stream.Stream, number: int
) -> Iterator[tuple[Fraction, int, int, av.Packet]]:
    """A subtitle stream's cues as packets of ``stream``, keyed as :func:`_timed` keys."""
    for count, (start, end, cue) in enumerate(text.cues):
        packet = av.Packet(cue.encode("utf-8"))
        packet.pts = packet.dts = start
        packet.duration = max(end - start, 1)
        packet.time_base = Fraction(1, 1000)
        packet.stream = stream
        yield Fraction(start, 1000), number, count, packet


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
