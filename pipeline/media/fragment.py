"""Fragmented-MP4 HLS segments, made from a run's MPEG-TS segments by remuxing.

Apple's HLS authoring specification requires fragmented MP4 for HEVC, not MPEG-TS. Such a
folder holds one initialisation segment, ``init.mp4`` (``ftyp`` and ``moov``: each track's
decoder configuration and time scale), and one media segment per segment,
``segment_NNNNN.m4s`` (``moof`` and ``mdat``), which the media playlist names after its
``#EXT-X-MAP``.

Segments are made independently, in any order and on any worker, so each is remuxed on its own.
Its timestamps are kept exactly: there is no edit list, each fragment's base decode time
(``tfdt``) is set to its first sample's decode time, and each sample's presentation time is its
decode time plus its composition offset, as in MPEG-TS (video in MPEG-TS's 90 kHz). So the
fragments of a folder follow one another without gaps, however far each segment's first
picture is shown after its first decode time (it differs between the segments copied from an
input with B-frames; an edit list in ``init.mp4`` could hold one such delay only).

A segment may lack packets of a stream (audio that starts late or stops early): it is written
with the tracks it has, each numbered by its stream's place, so that every segment's numbers
are ``init.mp4``'s. The first segment with every track writes ``init.mp4`` (see
:func:`publish_fragment` and :func:`publish_init`); every segment's tracks must configure the
decoders as ``init.mp4``'s do (what the muxer takes from the segment's own packets aside), or
it is refused rather than played with the wrong configuration.

HDR10 metadata is static, for the whole title (the plan's, ``SegmentPlan.hdr``): ``init.mp4``
carries it (:mod:`~carn_stream.pipeline.media.hdr_boxes`), whichever segment writes it.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.bitstream

from carn_stream.pipeline.colour import StaticHdr
from carn_stream.pipeline.errors import OutputError, ffmpeg_reason
from carn_stream.pipeline.media.decode import keep_language
from carn_stream.pipeline.media.encode import SEGMENT_FORMAT, probe_to_video
from carn_stream.pipeline.media.hdr_boxes import sei_payloads, with_hdr
from carn_stream.pipeline.media.hls import INIT_NAME, segment_name
from carn_stream.pipeline.media.isobmff import (
    SAMPLE_ENTRIES,
    VISUAL_ENTRIES,
    VISUAL_FIELDS,
    box,
    boxes,
    nested,
)
from carn_stream.pipeline.media.publish import publish_bytes

#: Each segment on its own: one fragment (written as the segment ends), the moov delayed until
#: the codecs' configuration is known (MPEG-TS carries it in the stream), offsets counted from
#: the fragment's own moof (CMAF), no edit list (the times are the segment's own).
_MUXER = {
    "movflags": "frag_custom+delay_moov+default_base_moof",
    "use_editlist": "0",
    "video_track_timescale": "90000",
}


@dataclass(frozen=True)
class Fragment:
    """One segment as fragmented MP4. Its tracks are numbered by their stream's place among the
    MPEG-TS segment's video and audio streams (from 1), whichever of them it has packets of."""

    init: bytes  #: its initialisation segment: the tracks it has
    media: bytes  #: its media segment
    complete: bool  #: it has every stream (its init.mp4 describes a whole folder's)


def fragment(
    segment: Path, sequence: int, lead_in: bool = False, hdr: StaticHdr | None = None
) -> Fragment:
    """``segment`` (MPEG-TS) as fragmented MP4, the fragment's sequence number ``sequence``,
    its header with the title's HDR10 metadata ``hdr``. Audio that ends before the segment's
    first picture is an encoder's priming frame (the segment before has that stretch) and left
    out, unless ``lead_in`` (the first segment: the audio before the first picture is the
    input's)."""
    data = io.BytesIO()
    try:
        with (
            av.open(str(segment), format=SEGMENT_FORMAT, options=probe_to_video(segment)) as src,
            av.open(data, "w", format="mp4", options=_MUXER) as out,
        ):
            places, firsts, total = _remux(src, out, lead_in)
    except (av.FFmpegError, ValueError) as exc:
        raise OutputError(
            f"segment {segment.name} cannot be written as fragmented MP4 ({ffmpeg_reason(exc)})"
        ) from exc
    init, media = b"", b""
    whole = data.getvalue()
    for kind, start, end, _ in boxes(whole, 0, len(whole)):
        if kind in (b"ftyp", b"moov"):
            init += whole[start:end]
        elif kind in (b"moof", b"mdat"):
            media += whole[start:end]  # (the trailing mfra indexes this file only)
    if not init or not media:
        raise OutputError(f"segment {segment.name}: no fragment was written")
    # The muxer numbers the tracks it has 1, 2, ...: each takes its stream's place instead.
    tracks = _tracks(init)
    if len(tracks) != len(places):
        raise OutputError(f"segment {segment.name}: {len(tracks)} tracks for {len(places)} streams")
    numbers = {track: place + 1 for (track, _), place in zip(tracks, places, strict=True)}
    starts = {
        numbers[track]: round(first * timescale)
        for (track, timescale), first in zip(tracks, firsts, strict=True)
    }
    init = with_hdr(_renumbered(init, numbers, total + 1), sei_payloads(hdr))
    return Fragment(init, _stamped(media, sequence, numbers, starts), len(places) == total)


def _remux(
    src: av.container.InputContainer, out: av.container.OutputContainer, lead_in: bool
) -> tuple[list[int], list[Fraction], int]:
    """Copy the segment's video and audio streams that have packets here (a segment may hold
    none of an audio stream that ends early or starts late). Returns their places among the
    video and audio streams, their first decode times (seconds), and how many streams there
    are. Each stream is written from decode time 0: without an edit list, MP4 would stretch
    the first sample of a stream that starts after another to the other's start."""
    streams = [s for s in src.streams if s.type in ("video", "audio")]
    packets = played([p for p in src.demux(streams) if p.dts is not None and p.size], lead_in)
    having = {p.stream.index for p in packets}
    kept = [s for s in streams if s.index in having]
    targets = {s.index: out.add_stream_from_template(s) for s in kept}
    filters = {
        s.index: av.bitstream.BitStreamFilterContext("aac_adtstoasc", s, targets[s.index])
        for s in kept
        if s.type == "audio" and s.codec_context.name == "aac"  # ADTS -> MP4's raw frames
    }
    for s in kept:  # MPEG-TS's stream types are no MP4 sample entries
        targets[s.index].codec_tag = SAMPLE_ENTRIES.get(s.codec_context.name, "\0\0\0\0")
        keep_language(targets[s.index], s)
    shifts: dict[int, int] = {}  #: input stream index -> its first decode time
    for packet in packets:
        index = packet.stream.index
        shifts.setdefault(index, packet.dts)
        packet.dts -= shifts[index]
        packet.pts -= shifts[index]
        for ready in filters[index].filter(packet) if index in filters else [packet]:
            ready.stream = targets[index]
            out.mux(ready)
    for index, bsf in filters.items():
        for ready in bsf.filter(None):
            ready.stream = targets[index]
            out.mux(ready)
    places = [streams.index(s) for s in kept]
    return places, [shifts[s.index] * s.time_base for s in kept], len(streams)


def played(packets: list[av.Packet], lead_in: bool) -> list[av.Packet]:
    """A segment's video and audio ``packets`` but the audio that ends before its first
    picture: an encoder's priming frame (the segment before has that stretch), unless
    ``lead_in`` (the first segment: the audio before the first picture is the input's)."""
    if lead_in:
        return packets
    start = min((p.pts * p.time_base for p in packets if p.stream.type == "video"), default=0)
    return [p for p in packets
            if p.stream.type != "audio" or (p.pts + p.duration) * p.time_base > start]  # fmt: skip


def publish_fragment(
    segment: Path, folder: Path, index: int, hdr: StaticHdr | None = None
) -> Path:
    """Write ``segment`` (MPEG-TS) into ``folder`` as media segment ``index``; returns its path.
    ``hdr``: the title's HDR10 metadata, for ``init.mp4``.

    A segment with every stream writes ``init.mp4`` if it is not there yet. One without (no
    packet of some stream here) waits for it: its own header is kept beside it
    (``.segment_NNNNN.m4s.init``) and checked once ``init.mp4`` is written (here, or by
    :func:`publish_init`). Raises OutputError when a segment's tracks are configured otherwise
    than in ``init.mp4``."""
    made = fragment(segment, index + 1, lead_in=index == 0, hdr=hdr)
    init_path = folder / INIT_NAME
    what = f"segment {index}"
    if init_path.is_file():
        check_tracks(init_path.read_bytes(), made.init, what)
    elif made.complete:
        publish_bytes(init_path, made.init, replace=False)
        check_tracks(init_path.read_bytes(), made.init, what)  # (one written meanwhile)
        _check_waiting(folder)
    else:
        publish_bytes(_waiting_name(folder, index), made.init)
        if init_path.is_file():  # written meanwhile, perhaps after its writer looked for us
            _check_waiting(folder)
    return publish_bytes(folder / segment_name(index, fragmented=True), made.media)


def publish_init(folder: Path) -> Path | None:
    """Make sure ``folder`` has ``init.mp4`` once its media segments are published; returns its
    path. Where none had every stream (an audio stream without a packet anywhere, or two that
    never overlap), it is made of the waiting segments' headers: every track any of them has.
    None when there is neither."""
    path = folder / INIT_NAME
    if not path.is_file():
        waiting = sorted(folder.glob(_WAITING_GLOB))
        if not waiting:
            return None
        publish_bytes(path, _merged([w.read_bytes() for w in waiting]), replace=False)
    _check_waiting(folder)
    return path


def check_tracks(folder_init: bytes, own_init: bytes, what: str) -> None:
    """Raise OutputError unless each of ``own_init``'s tracks is configured as the track of the
    same number in ``folder_init`` (the bit rates MP4 records aside)."""
    folder, own = _configuration(folder_init), _configuration(own_init)
    if any(folder.get(track) != config for track, config in own.items()):
        raise OutputError(
            f"{what} configures its decoders differently from the folder's {INIT_NAME} "
            "(its encoder's settings changed)"
        )


#: The header a segment without every stream keeps beside its media segment until init.mp4 is
#: there (:func:`publish_fragment`).
_WAITING_GLOB = ".segment_*.m4s.init"


def _waiting_name(folder: Path, index: int) -> Path:
    return folder / f".{segment_name(index, fragmented=True)}.init"


def _check_waiting(folder: Path) -> None:
    """Check the headers of the segments published before ``init.mp4`` against it; each goes
    once checked (a mismatch is raised, and its header stays for the next look)."""
    init = (folder / INIT_NAME).read_bytes()
    for waiting in sorted(folder.glob(_WAITING_GLOB)):
        try:
            own = waiting.read_bytes()
        except FileNotFoundError:  # checked by another segment meanwhile
            continue
        number = int(waiting.name.removeprefix(".segment_").split(".")[0])
        check_tracks(init, own, f"segment {number}")
        waiting.unlink(missing_ok=True)


def _merged(inits: list[bytes]) -> bytes:
    """One initialisation segment with every track of ``inits`` (each track's ``trak`` and
    ``trex`` from the first that has it), on the one of the most tracks."""
    widest = max(inits, key=lambda init: len(_tracks(init)))
    traks: dict[int, bytes] = {}
    trexes: dict[int, bytes] = {}
    for init in [widest, *inits]:
        for kind, at, end, header in _moov(init):
            if kind == b"trak":
                traks.setdefault(_u32(init, _number_at(init, at + header, end)), init[at:end])
            elif kind == b"mvex":
                for leaf, leaf_at, leaf_end, leaf_header in boxes(init, at + header, end):
                    if leaf == b"trex":
                        trexes.setdefault(_u32(init, leaf_at + leaf_header + 4),
                                          init[leaf_at:leaf_end])  # fmt: skip
    out = b""
    for kind, start, end, header in boxes(widest, 0, len(widest)):
        if kind != b"moov":
            out += widest[start:end]
            continue
        body = b""
        for inner, at, inner_end, inner_header in boxes(widest, start + header, end):
            if inner == b"trak":
                continue
            if inner == b"mvex":
                extends = b"".join(
                    widest[leaf_at:leaf_end]
                    for leaf, leaf_at, leaf_end, _ in boxes(widest, at + inner_header, inner_end)
                    if leaf != b"trex"
                ) + b"".join(trexes[t] for t in sorted(trexes))
                body += b"".join(traks[t] for t in sorted(traks)) + box(b"mvex", extends)
            else:
                body += widest[at:inner_end]
        out += box(b"moov", body)
    return out


def _moov(init: bytes) -> Iterator[tuple[bytes, int, int, int]]:
    """The boxes in an initialisation segment's ``moov``."""
    for kind, start, end, header in boxes(init, 0, len(init)):
        if kind == b"moov":
            yield from boxes(init, start + header, end)


def _number_at(init: bytes, start: int, end: int) -> int:
    """Where the track's number lies in a ``trak``'s ``tkhd`` (``start``, ``end``: the trak's
    contents): after the version, flags and two times (64-bit in version 1)."""
    for kind, at, _, header in boxes(init, start, end):
        if kind == b"tkhd":
            body = at + header
            return body + (20 if init[body] == 1 else 12)
    raise OutputError("a track without a header in a fragmented MP4 segment")


def _tracks(init: bytes) -> list[tuple[int, int]]:
    """Each track's number and time scale, in the order of the streams (``trak`` boxes)."""
    tracks = []
    for kind, at, end, header in _moov(init):
        if kind != b"trak":
            continue
        timescale = 0
        for inner, inner_at, inner_end, inner_header in boxes(init, at + header, end):
            if inner == b"mdia":
                for leaf, leaf_at, _, leaf_header in boxes(init, inner_at + inner_header,
                                                           inner_end):  # fmt: skip
                    if leaf == b"mdhd":  # version, flags, two times, then the time scale
                        body = leaf_at + leaf_header
                        timescale = _u32(init, body + (20 if init[body] == 1 else 12))
        tracks.append((_u32(init, _number_at(init, at + header, end)), timescale))
    return tracks


def _stamped(
    media: bytes, sequence: int, numbers: dict[int, int], starts: dict[int, int]
) -> bytes:
    """``media`` with each fragment's sequence number (``mfhd``) set to ``sequence``, each
    track fragment's track (``tfhd``) renumbered by ``numbers`` and its base decode time
    (``tfdt``) set to ``starts[its new number]`` (its time scale's ticks)."""
    data = bytearray(media)
    for kind, start, end, header in boxes(media, 0, len(media)):
        if kind != b"moof":
            continue
        for inner, at, inner_end, inner_header in boxes(media, start + header, end):
            body = at + inner_header  # (full boxes: version and flags first)
            if inner == b"mfhd":
                struct.pack_into(">I", data, body + 4, sequence)
            elif inner == b"traf":
                track = None
                for leaf, leaf_at, _, leaf_header in boxes(media, body, inner_end):
                    leaf_body = leaf_at + leaf_header
                    if leaf == b"tfhd":
                        (own,) = struct.unpack_from(">I", media, leaf_body + 4)
                        track = numbers[own]
                        struct.pack_into(">I", data, leaf_body + 4, track)
                    elif leaf == b"tfdt" and track in starts:
                        if media[leaf_body] == 1:
                            struct.pack_into(">Q", data, leaf_body + 4, starts[track])
                        elif starts[track] < 2**32:
                            struct.pack_into(">I", data, leaf_body + 4, starts[track])
                        else:
                            raise OutputError("a decode time too large for a version 0 tfdt")
    return bytes(data)


def _renumbered(init: bytes, numbers: dict[int, int], next_track: int) -> bytes:
    """``init`` with its tracks renumbered by ``numbers`` (``tkhd``, ``trex``) and the next
    free number ``next_track`` (``mvhd``)."""
    data = bytearray(init)
    for kind, at, end, header in _moov(init):
        if kind == b"mvhd":  # its last field
            struct.pack_into(">I", data, end - 4, next_track)
        elif kind == b"trak":
            offset = _number_at(init, at + header, end)
            struct.pack_into(">I", data, offset, numbers[_u32(init, offset)])
        elif kind == b"mvex":
            for leaf, leaf_at, _, leaf_header in boxes(init, at + header, end):
                if leaf == b"trex":  # version, flags, then the track's number
                    offset = leaf_at + leaf_header + 4
                    struct.pack_into(">I", data, offset, numbers[_u32(init, offset)])
    return bytes(data)


def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from(">I", data, at)[0]


def _configuration(init: bytes) -> dict[int, bytes]:
    """What of an initialisation segment configures a player, track by track (by number): each
    track's box, but for what the muxer sets from the segment's own packets and tracks (the
    bit rates a sample entry records, the ES descriptor's ID, which track is enabled), and
    without its HDR10 metadata, which configures no decoder."""
    init = with_hdr(init, {})
    data = bytearray(init)
    for kind, start, end, header in boxes(init, 0, len(init)):
        if kind == b"moov":
            _normalise(init, data, start + header, end)
    return {
        _u32(init, _number_at(init, at + header, end)): bytes(data[at:end])
        for kind, at, end, header in _moov(init)
        if kind == b"trak"
    }


def _normalise(init: bytes, data: bytearray, start: int, end: int) -> None:
    for kind, at, box_end, header in nested(init, start, end):
        body = at + header
        if kind == b"tkhd":  # its flags: the muxer enables the first track of each kind
            data[body + 1:body + 4] = bytes(3)
        elif kind == b"stsd":
            for entry_kind, entry, entry_end, entry_header in boxes(init, body + 8, box_end):
                # a sample entry: its fields (a visual one's 78 bytes, an audio one's 28), then
                # its boxes; bit rates are recorded in btrt, and for AAC and MP3 in esds too
                visual = entry_kind in VISUAL_ENTRIES
                fields = entry + entry_header + (VISUAL_FIELDS if visual else 28)
                for inner, inner_at, inner_end, inner_header in boxes(init, fields, entry_end):
                    if inner == b"btrt":  # buffer size, maximum and average rates
                        rates = inner_at + inner_header
                        data[rates:inner_end] = bytes(inner_end - rates)
                    elif inner == b"esds":
                        _zero_bit_rates(data, inner_at + inner_header + 4, inner_end)


def _zero_bit_rates(data: bytearray, at: int, end: int) -> None:
    """Zero an ES descriptor's ID (the muxer's own number of the track) and the buffer size and
    bit rates of its decoder configuration."""

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
    data[at:at + 2] = bytes(2)
    at += 3 + (2 if flags & 0x80 else 0)  # ES_ID and flags; a stream it depends on
    if flags & 0x40:
        at += 1 + data[at]  # a URL
    if flags & 0x20:
        at += 2  # an OCR stream
    tag, at = descriptor(at)
    if tag == 0x04 and at + 13 <= end:
        data[at + 2:at + 13] = bytes(11)  # after object and stream type: buffer, max, average
