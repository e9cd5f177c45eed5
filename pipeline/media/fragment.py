"""Fragmented-MP4 HLS segments, made from a run's MPEG-TS segments by remuxing.

Apple's HLS authoring specification asks for HEVC in fragmented MP4, not MPEG-TS. Such a folder
holds one initialisation segment, ``init.mp4`` (``ftyp`` and ``moov``: each track's decoder
configuration, time scale and edit list), and one media segment per segment,
``segment_NNNNN.m4s`` (``moof`` and ``mdat``), which the media playlist names after its
``#EXT-X-MAP``.

Segments are made independently, in any order and on any worker, so each is remuxed on its own.
Its timestamps are kept exactly: there is no edit list, each fragment's base decode time
(``tfdt``) is set to its first sample's decode time, and each sample's presentation time is its
decode time plus its composition offset, as in MPEG-TS (video in MPEG-TS's 90 kHz). So the
fragments of a folder follow one another without gaps, however far each segment's first
picture is shown after its first decode time (it differs between the segments copied from an
input with B-frames; an edit list in ``init.mp4`` could hold one such delay only).

The first segment published writes ``init.mp4``; every other segment's header must configure
the decoders the same way (the bit rates MP4 records aside), or it is refused rather than
played with the wrong configuration.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import struct
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.bitstream

from carn_stream.pipeline.errors import OutputError, ffmpeg_reason
from carn_stream.pipeline.media.encode import SEGMENT_FORMAT, probe_to_video
from carn_stream.pipeline.media.hls import INIT_NAME, segment_name

#: Each segment on its own: one fragment (written as the segment ends), the moov delayed until
#: the codecs' configuration is known (MPEG-TS carries it in the stream), offsets counted from
#: the fragment's own moof (CMAF), no edit list (the times are the segment's own).
_MUXER = {
    "movflags": "frag_custom+delay_moov+default_base_moof",
    "use_editlist": "0",
    "video_track_timescale": "90000",
}
#: Sample entries MP4 names the codecs by (hvc1: parameter sets in the sample entry, the form
#: Apple's players take); others get the muxer's choice.
_VIDEO_TAGS = {"hevc": "hvc1", "h264": "avc1"}
#: Boxes inside which the decoder configuration lies, down to the sample descriptions.
_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl"})
_VISUAL_ENTRIES = frozenset({b"hvc1", b"hev1", b"avc1", b"avc3"})


def fragment(segment: Path, sequence: int) -> tuple[bytes, bytes]:
    """``segment`` (MPEG-TS) as fragmented MP4: its initialisation segment and its media
    segment (the fragment's sequence number ``sequence``)."""
    data = io.BytesIO()
    try:
        with (
            av.open(str(segment), format=SEGMENT_FORMAT, options=probe_to_video(segment)) as src,
            av.open(data, "w", format="mp4", options=_MUXER) as out,
        ):
            firsts = _remux(src, out)
    except (av.FFmpegError, ValueError) as exc:
        raise OutputError(
            f"segment {segment.name} cannot be written as fragmented MP4 ({ffmpeg_reason(exc)})"
        ) from exc
    init, media = b"", b""
    whole = data.getvalue()
    for kind, start, end, _ in _boxes(whole, 0, len(whole)):
        if kind in (b"ftyp", b"moov"):
            init += whole[start:end]
        elif kind in (b"moof", b"mdat"):
            media += whole[start:end]  # (the trailing mfra indexes this file only)
    if not init or not media:
        raise OutputError(f"segment {segment.name}: no fragment was written")
    starts = {
        track: round(first * timescale)
        for (track, timescale), first in zip(_tracks(init), firsts, strict=True)
        if first is not None
    }
    return init, _stamped(media, sequence, starts)


def _remux(
    src: av.container.InputContainer, out: av.container.OutputContainer
) -> list[Fraction | None]:
    """Copy the segment's video and audio; returns each output stream's first decode time
    (seconds; None for a stream without packets). Each stream is written from decode time 0:
    without an edit list, MP4 would stretch the first sample of a stream that starts after
    another to the other's start."""
    streams = [s for s in src.streams if s.type in ("video", "audio")]
    targets = {s.index: out.add_stream_from_template(s) for s in streams}
    filters = {
        s.index: av.bitstream.BitStreamFilterContext("aac_adtstoasc", s, targets[s.index])
        for s in streams
        if s.type == "audio" and s.codec_context.name == "aac"  # ADTS -> MP4's raw frames
    }
    for s in streams:  # MPEG-TS's stream types are no MP4 sample entries
        targets[s.index].codec_tag = _VIDEO_TAGS.get(s.codec_context.name, "\0\0\0\0")
    firsts: list[Fraction | None] = [None] * len(streams)
    shifts: dict[int, int] = {}  #: input stream index -> its first decode time
    packets = [p for p in src.demux(streams) if p.dts is not None and p.size]
    start = min((p.pts * p.time_base for p in packets if p.stream.type == "video"), default=0)
    for packet in packets:
        # An audio encoder's priming frame, before the segment (the last one's audio ends there)
        ends = (packet.pts + packet.duration) * packet.time_base
        if packet.stream.type == "audio" and ends <= start:
            continue
        index = packet.stream.index
        if index not in shifts:
            shifts[index] = packet.dts
            firsts[targets[index].index] = packet.dts * packet.time_base
        packet.dts -= shifts[index]
        packet.pts -= shifts[index]
        for ready in filters[index].filter(packet) if index in filters else [packet]:
            ready.stream = targets[index]
            out.mux(ready)
    for index, bsf in filters.items():
        for ready in bsf.filter(None):
            ready.stream = targets[index]
            out.mux(ready)
    return firsts


def publish_fragment(segment: Path, folder: Path, index: int) -> Path:
    """Write ``segment`` (MPEG-TS) into ``folder`` as media segment ``index``, and
    ``init.mp4`` if it is not there yet; returns the media segment's path. Raises OutputError
    when the segment's header differs from ``init.mp4``'s."""
    init, media = fragment(segment, index + 1)
    init_path = folder / INIT_NAME
    if not init_path.is_file():
        _publish(init_path, init, replace=False)
    if _configuration(init_path.read_bytes()) != _configuration(init):
        raise OutputError(
            f"segment {index} configures its decoders differently from the folder's "
            f"{INIT_NAME} (its encoder's settings changed)"
        )
    return _publish(folder / segment_name(index, fragmented=True), media)


def _publish(path: Path, data: bytes, replace: bool = True) -> Path:
    """Write ``data`` at ``path`` by rename from ``.NAME.part`` (``replace=False``: from a name
    of its own, ``.NAME.*.part``, and a file already there, written by another segment at the
    same moment, is kept)."""
    token = "" if replace else f".{secrets.token_hex(6)}"
    part = path.with_name(f".{path.name}{token}.part")
    try:
        part.write_bytes(data)
        if replace:
            os.replace(part, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """The boxes in ``data[start:end]``: (type, start, end, header length)."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise OutputError(f"a malformed {kind!r} box in a fragmented MP4 segment")
        yield kind, at, at + size, header
        at += size


def _tracks(init: bytes) -> list[tuple[int, int]]:
    """Each track's ID and time scale, in the order of the streams (``trak`` boxes)."""
    tracks = []
    for kind, start, end, header in _boxes(init, 0, len(init)):
        if kind != b"moov":
            continue
        for trak, at, trak_end, trak_header in _boxes(init, start + header, end):
            if trak != b"trak":
                continue
            track = timescale = 0
            for inner, box, box_end, box_header in _boxes(init, at + trak_header, trak_end):
                body = box + box_header
                wide = init[body] == 1  # version 1: 64-bit times
                if inner == b"tkhd":  # version, flags, two times, then the track's ID
                    (track,) = struct.unpack_from(">I", init, body + (20 if wide else 12))
                elif inner == b"mdia":
                    for leaf, leaf_at, _, leaf_header in _boxes(init, body, box_end):
                        if leaf == b"mdhd":  # version, flags, two times, then the time scale
                            leaf_body = leaf_at + leaf_header
                            offset = 20 if init[leaf_body] == 1 else 12
                            (timescale,) = struct.unpack_from(">I", init, leaf_body + offset)
            tracks.append((track, timescale))
    return tracks


def _stamped(media: bytes, sequence: int, starts: dict[int, int]) -> bytes:
    """``media`` with each fragment's sequence number (``mfhd``) set to ``sequence`` and each
    track's base decode time (``tfdt``) to ``starts[track ID]`` (its time scale's ticks)."""
    data = bytearray(media)
    for kind, start, end, header in _boxes(media, 0, len(media)):
        if kind != b"moof":
            continue
        for inner, at, inner_end, inner_header in _boxes(media, start + header, end):
            body = at + inner_header  # (full boxes: version and flags first)
            if inner == b"mfhd":
                struct.pack_into(">I", data, body + 4, sequence)
            elif inner == b"traf":
                track = None
                for leaf, leaf_at, _, leaf_header in _boxes(media, body, inner_end):
                    leaf_body = leaf_at + leaf_header
                    if leaf == b"tfhd":
                        (track,) = struct.unpack_from(">I", media, leaf_body + 4)
                    elif leaf == b"tfdt" and track in starts:
                        if media[leaf_body] == 1:
                            struct.pack_into(">Q", data, leaf_body + 4, starts[track])
                        elif starts[track] < 2**32:
                            struct.pack_into(">I", data, leaf_body + 4, starts[track])
                        else:
                            raise OutputError("a decode time too large for a version 0 tfdt")
    return bytes(data)


def _configuration(init: bytes) -> bytes:
    """What of an initialisation segment configures a player: all of it but the bit rates an
    sample entry records (MP4 computes them from the segment's own packets)."""
    data = bytearray(init)
    for kind, start, end, header in _boxes(init, 0, len(init)):
        if kind == b"moov":
            _normalise(init, data, start + header, end)
    return bytes(data)


def _normalise(init: bytes, data: bytearray, start: int, end: int) -> None:
    for kind, at, box_end, header in _boxes(init, start, end):
        body = at + header
        if kind in _CONTAINERS:
            _normalise(init, data, body, box_end)
        elif kind == b"stsd":
            for entry_kind, entry, entry_end, entry_header in _boxes(init, body + 8, box_end):
                # a sample entry: its fields (a visual one's 78 bytes, an audio one's 28), then
                # its boxes; bit rates are recorded in btrt, and for AAC and MP3 in esds too
                fields = entry + entry_header + (78 if entry_kind in _VISUAL_ENTRIES else 28)
                for inner, inner_at, inner_end, inner_header in _boxes(init, fields, entry_end):
                    if inner == b"btrt":  # buffer size, maximum and average rates
                        rates = inner_at + inner_header
                        data[rates:inner_end] = bytes(inner_end - rates)
                    elif inner == b"esds":
                        _zero_bit_rates(data, inner_at + inner_header + 4, inner_end)


def _zero_bit_rates(data: bytearray, at: int, end: int) -> None:
    """Zero the buffer size and bit rates of an ES descriptor's decoder configuration."""

    def descriptor(at: int) -> tuple[int, int]:  # (tag, where its payload starts)
        tag, at = data[at], at + 1
        for _ in range(4):
            more, at = data[at] & 0x80, at + 1
            if not more:
                break
        return tag, at

    tag, at = descriptor(at)
    if tag != 0x03 or at + 3 > end:
        return
    flags = data[at + 2]
    at += 3 + (2 if flags & 0x80 else 0)  # ES_ID and flags; a stream it depends on
    if flags & 0x40:
        at += 1 + data[at]  # a URL
    if flags & 0x20:
        at += 2  # an OCR stream
    tag, at = descriptor(at)
    if tag == 0x04 and at + 13 <= end:
        data[at + 2:at + 13] = bytes(11)  # after object and stream type: buffer, max, average
