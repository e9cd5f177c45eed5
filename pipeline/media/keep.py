"""Keep the whole file: what an input holds besides video and audio, carried into an output.

When segments are joined into one file (:func:`carn_stream.pipeline.media.join.join_segments`)
the input is at hand; from it the output gets, as far as its container can hold them:

- subtitle streams: copied where the container takes the codec; other text subtitles converted
  to the container's text codec (mov_text in MP4/MOV, SubRip in Matroska) as plain text;
  bitmap subtitles the container cannot hold are dropped with a warning;
- chapters, the container's metadata (title, ...), each stream's metadata (language, title)
  and dispositions (default, forced, ...);
- attached files (fonts of ASS subtitles) where the container keeps them (Matroska);
- cover art (an attached picture: a thumbnail a downloader embedded, an album cover) as MP4
  keeps it (an attached picture) and Matroska (a ``cover.*`` attachment); MOV drops it;
- the video's sample aspect ratio (anamorphic stays anamorphic).

Tags that describe the old file rather than its content (encoder, statistics, brands) are not
copied: the muxer writes its own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from carn_stream.pipeline.media.decode import (
    codec_name,
    is_cover_art,
    open_input,
    stream_sample_aspect_ratio,
)
from carn_stream.pipeline.media.formats import OutputFormat

log = logging.getLogger(__name__)

#: Tags about the old file, not its content (lower case; Matroska's statistics tags too).
_STALE_TAGS = frozenset(
    {"encoder", "duration", "bps", "number_of_frames", "number_of_bytes", "major_brand",
     "minor_version", "compatible_brands", "vendor_id"}
)  # fmt: skip
TEXT_SUBTITLES = frozenset({"subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text"})


def _content_tags(metadata: dict[str, str]) -> dict[str, str]:
    return {
        key: value
        for key, value in metadata.items()
        if key.lower() not in _STALE_TAGS and not key.upper().startswith("_STATISTICS")
    }


def copy_stream_facts(source, target) -> None:
    """A stream's metadata (language, title, ...) and dispositions onto its output stream."""
    target.metadata.update(_content_tags(dict(source.metadata)))
    if int(source.disposition):
        target.disposition = source.disposition


def copy_sample_aspect_ratio(source, target) -> None:
    sar = stream_sample_aspect_ratio(source)
    if sar is not None:
        target.codec_context.sample_aspect_ratio = sar


def copy_container_facts(source, target, fmt: OutputFormat, shift: Fraction = Fraction(0)) -> None:
    """Container metadata, chapters (moved by ``shift`` seconds, as the file's packets are:
    none before 0) and (where the format keeps them) attachments."""
    target.metadata.update(_content_tags(dict(source.metadata)))
    chapters = source.chapters()
    for chapter in chapters:
        moved = round(shift / chapter["time_base"])
        chapter["start"], chapter["end"] = (max(0, chapter[t] + moved) for t in ("start", "end"))
    if chapters:
        target.set_chapters(chapters)
    attached = list(source.streams.attachments)
    if attached and not fmt.attachments:
        log.warning("%s output cannot hold attachments; %d dropped", fmt.name, len(attached))
        return
    for stream in attached:
        name = stream.name or stream.metadata.get("filename") or f"attachment{stream.index}"
        mimetype = stream.mimetype or stream.metadata.get("mimetype", "application/octet-stream")
        target.add_attachment(name, mimetype, bytes(stream.data))


#: Cover art MP4 holds, by codec, with the name and type a Matroska attachment of it gets.
_COVER_FILES = {"mjpeg": ("cover.jpg", "image/jpeg"), "png": ("cover.png", "image/png"),
                "bmp": ("cover.bmp", "image/bmp")}  # fmt: skip
#: Attached pictures come first in a read (FFmpeg queues them as it opens the file).
_COVER_PACKETS_READ = 64


def copy_cover_art(source: Path, target, fmt: OutputFormat) -> int:
    """The input's attached pictures into ``target``, before anything is written to it:
    attached pictures in MP4 (JPEG, PNG, BMP), attachments in Matroska (any picture, under the
    name and type it came with, else ``cover.jpg``, ...); dropped with a warning elsewhere.
    Read from an opening of the input of their own (each is one packet, read first). Returns
    how many were kept."""
    kept = 0
    with open_input(source) as container:
        covers = [s for s in container.streams.video if is_cover_art(s)]
        pictures: dict[int, av.Packet] = {}
        if covers:
            for read, packet in enumerate(container.demux(covers)):
                if packet.size and packet.stream.index not in pictures:
                    pictures[packet.stream.index] = packet
                if len(pictures) == len(covers) or read >= _COVER_PACKETS_READ:
                    break
        for stream in covers:
            packet, codec = pictures.get(stream.index), codec_name(stream)
            if packet is None:
                continue
            if fmt.muxer == "mp4" and codec in _COVER_FILES:
                out = target.add_stream_from_template(stream)
                out.disposition = stream.disposition
                copy_stream_facts(stream, out)
                packet.stream = out
                target.mux(packet)
            elif fmt.attachments:  # any picture, under the name and type it came with
                name, mimetype = _COVER_FILES.get(codec, (f"cover.{codec}",
                                                          "application/octet-stream"))
                target.add_attachment(stream.metadata.get("filename") or name,
                                      stream.metadata.get("mimetype") or mimetype,
                                      bytes(packet))  # fmt: skip
            else:
                log.warning("cover art (%s) cannot be kept in %s output; dropped", codec,
                            fmt.name)  # fmt: skip
                continue
            kept += 1
    return kept


# --------------------------------------------------------------------------- subtitles


def subtitle_text(codec: str, data: bytes) -> str:
    """The plain text of one subtitle packet."""
    if codec == "mov_text":
        size = int.from_bytes(data[:2], "big")
        text = data[2 : 2 + size].decode("utf-8", "replace")
    elif codec in ("ass", "ssa"):
        # ReadOrder, Layer, Style, Name, MarginL, MarginR, MarginV, Effect, Text
        text = data.decode("utf-8", "replace").split(",", 8)[-1]
        text = re.sub(r"\{[^}]*\}", "", text)
        text = text.replace("\\N", "\n").replace("\\n", "\n").replace("\\h", " ")
    else:
        text = re.sub(r"<[^>]*>", "", data.decode("utf-8", "replace"))
    return text.strip()


def subtitle_payload(codec: str, text: str) -> bytes:
    """One packet of ``codec`` holding ``text``."""
    raw = text.encode("utf-8")
    if codec == "mov_text":
        raw = raw[:0xFFFF]
        return len(raw).to_bytes(2, "big") + raw
    return raw


@dataclass
class Subtitles:
    """The input's subtitle streams an output keeps, and how each packet gets there."""

    streams: list = field(default_factory=list)  #: input streams to demux
    _routes: dict[int, tuple[object, Callable[[av.Packet], av.Packet | None]]] = field(
        default_factory=dict
    )

    def convert(self, packet: av.Packet) -> av.Packet | None:
        """The packet for the output (None: nothing to write, e.g. an empty gap sample)."""
        target, route = self._routes[packet.stream.index]
        out = route(packet)
        if out is not None:
            out.stream = target
        return out


def subtitle_streams(source, target, fmt: OutputFormat) -> Subtitles:
    """Add an output stream for each of the input's subtitle streams ``fmt`` can hold."""
    kept = Subtitles()
    for stream in source.streams.subtitles:
        codec = codec_name(stream)
        if codec in fmt.copyable_subtitles:
            out = target.add_stream_from_template(stream)
            route = _copy
        elif codec in TEXT_SUBTITLES and fmt.text_subtitle is not None:
            out = target.add_mux_stream(fmt.text_subtitle)
            out.time_base = stream.time_base
            route = _converter(codec, fmt.text_subtitle)
        else:
            log.warning(
                "subtitle stream %d (%s) cannot be kept in %s output; dropped",
                stream.index, codec, fmt.name,
            )  # fmt: skip
            continue
        copy_stream_facts(stream, out)
        kept.streams.append(stream)
        kept._routes[stream.index] = (out, route)
    return kept


def _copy(packet: av.Packet) -> av.Packet | None:
    if packet.pts is None:
        packet.pts = packet.dts
    return packet


def _converter(source: str, target: str) -> Callable[[av.Packet], av.Packet | None]:
    def convert(packet: av.Packet) -> av.Packet | None:
        text = subtitle_text(source, bytes(packet))
        if not text:
            return None
        out = av.Packet(subtitle_payload(target, text))
        out.pts = packet.pts if packet.pts is not None else packet.dts
        out.dts = out.pts
        out.duration = packet.duration
        out.time_base = packet.time_base
        return out

    return convert
