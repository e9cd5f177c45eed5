"""An input delivered as a listing of parts (an HLS playlist, a DASH manifest): what to fetch
(:class:`Listing`), and the joining of a video with its separately delivered audio into one
file. Parts of one stream join by concatenation (MPEG-TS segments; an initialization section
and its fragments; one whole file)."""

from __future__ import annotations

import heapq
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.errors import InputError
from carn_stream.pipeline.media.decode import open_input
from carn_stream.pipeline.media.input_formats import is_allowed, open_options

#: The largest playlist or manifest read (a few hours of 2 s segments is a few hundred KB).
MAX_LISTING_BYTES = 4 * 1024 * 1024
#: The most segments one stream may be listed in.
MAX_SEGMENTS = 20_000


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
    (the default first); none: the video's parts carry the audio, if any."""

    video: tuple[str, ...]
    audio: tuple[ListedAudio, ...] = ()


def absolute(uri: str, url: str) -> str:
    """``uri`` as listed in the document fetched from ``url``, made absolute."""
    return urllib.parse.urljoin(url, uri)


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


def join_renditions(video: Path, audio: list[AudioFile], target: Path) -> None:
    """One Matroska file of ``video``'s first video stream and each audio file's first audio
    stream (named and tagged with its language as the listing says), every packet copied,
    interleaved by time. The video and its audio streams of one listing count time on one
    clock, so they stay in sync as they are."""
    inputs = [open_input(video)]
    try:
        inputs.extend(_open_audio(a) for a in audio)
        with av.open(str(target), "w", format="matroska") as out:
            pictures = list(inputs[0].streams.video)
            if not pictures:
                raise ListingError("the chosen video's segments hold no video")
            sources = [pictures[0]]
            outputs = [out.add_stream_from_template(pictures[0])]
            for container, rendition in zip(inputs[1:], audio, strict=True):
                if not container.streams.audio:
                    raise ListingError(f"the audio stream {rendition.name!r} holds no audio")
                source = container.streams.audio[0]
                stream = out.add_stream_from_template(source)
                if rendition.language:
                    stream.metadata["language"] = rendition.language
                if rendition.name:
                    stream.metadata["title"] = rendition.name
                sources.append(source)
                outputs.append(stream)
            for _, index, _, packet in heapq.merge(*(
                _timed(container, source, n) for n, (container, source)
                in enumerate(zip(inputs, sources, strict=True))
            )):  # fmt: skip
                packet.stream = outputs[index]
                out.mux(packet)
    finally:
        for container in inputs:
            container.close()


def _open_audio(rendition: AudioFile) -> av.container.InputContainer:
    """An audio rendition's joined segments, opened as inputs are (the same allowed formats)."""
    try:
        container = av.open(str(rendition.path), options=open_options(rendition.path))
    except av.FFmpegError as exc:
        raise ListingError(f"the audio stream {rendition.name!r} cannot be read: {exc}") \
            from exc  # fmt: skip
    if not is_allowed(container.format.name):
        container.close()
        raise ListingError(f"the audio stream {rendition.name!r} is in a format not read "
                            f"({container.format.name})")  # fmt: skip
    return container


def _timed(
    container: av.container.InputContainer, stream: av.stream.Stream, index: int
) -> Iterator[tuple[Fraction, int, int, av.Packet]]:
    """The stream's packets with the time to interleave them by (their decode time), in order."""
    last = Fraction(-(10**12))
    for number, packet in enumerate(container.demux(stream)):
        if packet.size == 0:
            continue
        if packet.dts is not None and packet.time_base is not None:
            last = max(last, packet.dts * packet.time_base)
        yield last, index, number, packet
